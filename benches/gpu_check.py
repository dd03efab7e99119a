"""The real-driver checks in one go, for whoever has a GPU: a few minutes, one report,
written to benches/gpu_check-<gpu>.json (h100, a100, ...) on a real GPU.

    python -m benches.gpu_check [--nvml-library PATH] [--cuda-library PATH] [--samples 200]
                                [--canary-rounds 5] [--json out.json]

1. runwarden's sampler and nvidia-ml-py read the same fields from the same driver; the
   fields that do not move (identity, totals, error counts) must be equal, the live ones
   (temperature, clocks, power, utilisation, memory used) close.
2. What one sample of every GPU costs: runwarden (its own measure, on its sampler thread)
   against nvidia-ml-py reading the same fields from Python.
3. `runwarden serve` in front of a small app on this GPU host: ready, GPU monitoring on with
   no fatal finding, the dcgm-exporter series in /metrics, a clean stop (exit 0).
4. With PyTorch and CUDA: a bf16 matmul's TFLOP/s with runwarden sampling at 10 Hz in the
   same process, against without, in alternating rounds.
5-7. The compute canary (benches/gpu_canary.py): off is nothing; it passes on every GPU,
   cold and warm; a context's memory and creation time; the matmul with it every 60 s and
   every 1 s.

With `--nvml-library` naming the fake driver (CI does; its `libcuda.so.1` beside it is then
the CUDA driver) every step but 4 and 7 runs against the fakes, so the script never rots where
no GPU is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from benches import gpu_canary
from benches.common import PYTHON, ROOT, free_port, log, running, wait_http

STABLE = ("index", "uuid", "name", "pci_bus_id", "memory_total_bytes", "ecc", "retired_pages",
          "remapped_rows", "pcie_replays")  # fmt: skip
LIVE = {  # field: how far the two reads may be apart (they are a few ms apart)
    "temperature_c": 3, "memory_temperature_c": 3, "sm_clock_mhz": 300,
    "memory_clock_mhz": 300, "power_mw": 60_000, "gpu_utilization": 100,
    "memory_utilization": 100, "memory_used_bytes": 1 << 30, "throttle_reasons": None,
    "energy_mj": 10_000_000,
}  # fmt: skip


def runwarden_samples(library: str | None, count: int) -> tuple[list[dict[str, Any]], list[float]]:
    """`count` samples from runwarden's own sampler: the last one, and what each cost."""
    from runwarden import GpuSamples, GpuSettings, HealthSettings, Warden

    async def run() -> tuple[list[dict[str, Any]], list[float]]:
        gpu = GpuSettings(gpu_sample_seconds=0.05, nvml_library=library)
        warden = Warden(HealthSettings(period_seconds=3600), "http://127.0.0.1:9", gpu)
        costs: list[float] = []
        last: list[dict[str, Any]] = []
        done = asyncio.get_running_loop().create_future()

        def listen(event: Any) -> None:
            if isinstance(event, GpuSamples):
                costs.append(event.cost_seconds)
                last[:] = [dict(s) for s in event.samples]
                if len(costs) >= count and not done.done():
                    done.set_result(None)

        warden.on_gpu(listen)
        await warden.start()
        await asyncio.wait_for(done, 60)
        await warden.stop()
        return last, costs

    return asyncio.run(run())


def pynvml_samples(count: int) -> tuple[str, list[dict[str, Any]], list[float]]:
    """The driver's version, then the same as `runwarden_samples`, read by nvidia-ml-py."""
    import pynvml as n
    from runwarden.testing.nvml_reference import read_sample

    n.nvmlInit()
    try:
        handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
        ids = [(n.nvmlDeviceGetUUID(h), n.nvmlDeviceGetName(h),
                n.nvmlDeviceGetPciInfo_v3(h).busId) for h in handles]  # fmt: skip
        driver = n.nvmlSystemGetDriverVersion()
        costs, last = [], []
        for _ in range(count):
            began = time.perf_counter()
            last = [read_sample(h, i, *ids[i]) for i, h in enumerate(handles)]
            costs.append(time.perf_counter() - began)
            time.sleep(0.02)
        return driver, last, costs
    finally:
        n.nvmlShutdown()


def compare(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[str]:
    """Every disagreement, as a line; none when the two readers agree."""
    problems = []
    if len(ours) != len(theirs):
        return [f"runwarden sees {len(ours)} GPU(s), nvidia-ml-py {len(theirs)}"]
    for a, b in zip(ours, theirs, strict=True):
        for field in STABLE:
            if field in b and a.get(field) != b[field]:
                problems.append(f"GPU {b['index']} {field}: {a.get(field)!r} != {b[field]!r}")
        for field, slack in LIVE.items():
            x, y = a.get(field), b.get(field)
            if (x is None) != (y is None):
                problems.append(f"GPU {b['index']} {field}: {x!r} vs {y!r}")
            elif slack is not None and x is not None and abs(x - y) > slack:
                problems.append(f"GPU {b['index']} {field}: {x} vs {y} (more than {slack} apart)")
    return problems


def serve_check(library: str | None) -> dict[str, Any]:
    app, port, admin = free_port(), free_port(), free_port()
    args = [PYTHON, "-m", "runwarden", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--admin-host", "127.0.0.1", "--admin-port", str(admin), "--app-url", f"http://127.0.0.1:{app}",
            "--health-path", "/", "--period-seconds", "1",
            "--start-period-seconds", "0"]  # fmt: skip
    if library:
        args += ["--nvml-library", library]
    args += ["--", PYTHON, "-m", "http.server", str(app), "--bind", "127.0.0.1"]
    with running(args, port=port) as proc:
        wait_http(f"http://127.0.0.1:{admin}/readyz", proc)
        time.sleep(1.5)  # a few samples at the default period
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{admin}/status").read())
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
        proc.terminate()
        code = proc.wait(30)
    gpu = status["gpu"]
    fatal = [f for f in gpu["findings"] if f["severity"] == "fatal"]
    series = {line.split("{")[0] for line in metrics.splitlines() if line.startswith("DCGM_FI_")}
    return {
        "exit_code": code,
        "enabled": gpu["enabled"],
        "detail": gpu["detail"],
        "fatal_findings": fatal,
        "dcgm_series": sorted(series),
        "watched": gpu.get("watched"),
        "ok": code == 0 and gpu["enabled"] and not fatal,
    }


def matmul_meter() -> Callable[[float], float] | None:
    """With PyTorch and CUDA: a function timing bf16 8192² matmuls for that many seconds and
    returning their TFLOP/s (used by step 4 and the canary's step 7); else None."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)

    def tflops(seconds: float) -> float:
        torch.cuda.synchronize()
        began, done = time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            for _ in range(20):
                a @ b
            torch.cuda.synchronize()
            done += 20
        return 2 * n**3 * done / (time.perf_counter() - began) / 1e12

    return tflops


def interference(library: str | None, rounds: int = 6) -> dict[str, Any] | None:
    """bf16 matmul TFLOP/s with and without runwarden sampling at 10 Hz, alternating."""
    tflops = matmul_meter()
    if tflops is None:
        return None
    from runwarden import GpuSettings, HealthSettings, Warden

    async def sampled() -> float:
        gpu = GpuSettings(gpu_sample_seconds=0.1, nvml_library=library)
        warden = Warden(HealthSettings(period_seconds=3600), "http://127.0.0.1:9", gpu)
        await warden.start()
        result = await asyncio.to_thread(tflops, 3.0)
        await warden.stop()
        return result

    tflops(1.0)  # warm up
    without: list[float] = []
    with_: list[float] = []
    for round_ in range(rounds):
        for name in ("without", "with") if round_ % 2 == 0 else ("with", "without"):
            (with_ if name == "with" else without).append(
                asyncio.run(sampled()) if name == "with" else tflops(3.0)
            )
    med_without, med_with = statistics.median(without), statistics.median(with_)
    return {"tflops_without": med_without, "tflops_with": med_with,
            "cost_pct": 100 * (med_without - med_with) / med_without}  # fmt: skip


def gpu_slug(name: str) -> str:
    """ "NVIDIA H100 80GB HBM3" -> "h100": the model, for the report's file name."""
    model = re.search(r"\b([A-Z]+[0-9]+[A-Z]*)\b", name.removeprefix("NVIDIA "))
    return (model.group(1) if model else re.sub(r"[^a-z0-9]+", "-", name.lower())).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.gpu_check", description=__doc__)
    parser.add_argument("--nvml-library", help="NVML to load (default: the driver's)")
    parser.add_argument("--cuda-library", help="CUDA driver for the canary (default: the "
                        "driver's, or the fake's beside a fake --nvml-library)")  # fmt: skip
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--canary-rounds", type=int, default=5, help="POST /canary rounds")
    parser.add_argument("--json", help="also write the report here (on a real GPU it is "
                        "always written to benches/gpu_check-<gpu>.json)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.cuda_library is None and args.nvml_library:
        beside = os.path.join(os.path.dirname(os.path.abspath(args.nvml_library)), "libcuda.so.1")
        args.cuda_library = beside if os.path.exists(beside) else None
    if args.nvml_library and os.environ.get("BENCHES_GPU_CHECK_CHILD") != "1":
        # nvidia-ml-py loads `libnvidia-ml.so.1` by name, so the same file must come first on
        # the loader's path before the process starts: run again with it there.
        folder = os.path.dirname(os.path.abspath(args.nvml_library))
        path = ":".join(filter(None, [folder, os.environ.get("LD_LIBRARY_PATH")]))
        env = {**os.environ, "BENCHES_GPU_CHECK_CHILD": "1", "LD_LIBRARY_PATH": path}
        again = [sys.executable, "-m", "benches.gpu_check", *(argv or sys.argv[1:])]
        return subprocess.call(again, env=env)
    report: dict[str, Any] = {}
    log("1-2. runwarden's sampler and nvidia-ml-py, side by side")
    ours, our_costs = runwarden_samples(args.nvml_library, args.samples)
    report["driver"], theirs, their_costs = pynvml_samples(args.samples)
    report["gpus"] = [s.get("name") for s in theirs]
    report["disagreements"] = compare(ours, theirs)
    report["sample"] = {"runwarden": ours[:1], "nvidia-ml-py": theirs[:1]}
    report["sample_ms"] = {
        "runwarden": 1000 * statistics.median(our_costs),
        "nvidia-ml-py": 1000 * statistics.median(their_costs),
    }
    log("3. runwarden serve against this driver")
    report["serve"] = serve_check(args.nvml_library)
    log("4. interference with a bf16 matmul (PyTorch and CUDA, when present)")
    report["interference"] = interference(args.nvml_library)
    report["canary"] = gpu_canary.check(
        args.nvml_library, args.cuda_library, max(1, args.canary_rounds)
    )
    text = json.dumps(report, indent=1, default=str)
    print(text)
    paths = [args.json] if args.json else []
    if not args.nvml_library and report["gpus"]:  # a real GPU: its report is kept
        paths.append(str(ROOT / "benches" / f"gpu_check-{gpu_slug(str(report['gpus'][0]))}.json"))
    for path in paths:
        with open(path, "w") as out:
            out.write(text)
        log(f"wrote {path}")
    ok = not report["disagreements"] and report["serve"]["ok"] and report["canary"]["ok"]
    log("gpu_check: " + ("ok" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
