"""The compute canary (SPEC G7) on a real GPU, for `benches.gpu_check`: what only a GPU can say.

1. `runwarden serve --gpu-canary-seconds off`: no run and no GPU memory held by runwarden
   (the canary off is nothing); then `POST /canary` rounds: it passes on every GPU, the first
   round cold (an empty CUDA JIT cache: the driver compiles the PTX), the rest warm; and
   between runs runwarden holds no GPU memory again.
2. What a CUDA context costs on the first GPU: its creation time and the memory NVML sees it
   take, created and destroyed as the canary does each run (driver API through ctypes).
3. With PyTorch and CUDA: a bf16 matmul's TFLOP/s with the canary every 60 s and every 1 s,
   each against none, in alternating windows.

Against the fake drivers (CI) steps 1 and 2 run, and the fake's figures mean nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from benches.common import PYTHON, free_port, log, running, wait_http


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def _post(url: str) -> int:
    request = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return int(answer.status)


def _gpu_memory_of(pid: int) -> int | None:
    """Bytes of GPU memory process `pid` holds on every GPU; None where NVML cannot list the
    processes (the fake)."""
    import pynvml as n

    n.nvmlInit()
    try:
        total = 0
        for i in range(n.nvmlDeviceGetCount()):
            handle = n.nvmlDeviceGetHandleByIndex(i)
            procs = n.nvmlDeviceGetComputeRunningProcesses_v3(handle)
            total += sum(p.usedGpuMemory or 0 for p in procs if p.pid == pid)
        return total
    except n.NVMLError:
        return None
    finally:
        n.nvmlShutdown()


@contextlib.contextmanager
def serving(
    nvml_library: str | None, cuda_library: str | None, canary: str, env: dict[str, str]
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`runwarden serve` with the canary every `canary` seconds (or "off"), ready: its admin
    URL and process. Health checks hourly, so that only the canary is measured."""
    app, port, admin = free_port(), free_port(), free_port()
    args = [PYTHON, "-m", "runwarden", "serve", "--host", "127.0.0.1", "--port", str(port),
            "--admin-host", "127.0.0.1", "--admin-port", str(admin),
            "--app-url", f"http://127.0.0.1:{app}", "--health-path", "/",
            "--period-seconds", "3600", "--start-period-seconds", "0",
            "--gpu-sample-seconds", "3600",
            "--gpu-canary-seconds", canary, "--gpu-canary-timeout-seconds", "60"]  # fmt: skip
    if nvml_library:
        args += ["--nvml-library", nvml_library]
    if cuda_library:
        args += ["--cuda-library", cuda_library]
    args += ["--", PYTHON, "-m", "http.server", str(app), "--bind", "127.0.0.1"]
    base = f"http://127.0.0.1:{admin}"
    with running(args, port=port, env=env) as proc:
        wait_http(f"{base}/readyz", proc)
        yield base, proc


def serve_rounds(nvml_library: str | None, cuda_library: str | None, rounds: int) -> dict[str, Any]:
    """Step 1: the canary off, then asked `rounds` times, through `runwarden serve`."""
    with tempfile.TemporaryDirectory(prefix="runwarden-jit-") as cache:
        # An empty JIT cache: the first round compiles the PTX, as on a fresh node.
        env = {**os.environ, "CUDA_CACHE_PATH": cache}
        with serving(nvml_library, cuda_library, "off", env) as (base, proc):
            time.sleep(1.0)
            off = _get(f"{base}/status")["gpu"]["canary"]
            off_memory = _gpu_memory_of(proc.pid)
            watched = len(_get(f"{base}/status")["gpu"]["watched"])
            seconds: list[list[float]] = []
            outcomes: list[list[str]] = []
            for _ in range(rounds):
                before = _get(f"{base}/status")["gpu"]["canary"]["runs"]
                status = _post(f"{base}/canary")
                if status != 202:
                    raise RuntimeError(f"POST /canary answered {status}")
                deadline = time.monotonic() + 120
                # A round is one run on each watched GPU, each counted once it ends.
                while (state := _get(f"{base}/status")["gpu"]["canary"])["runs"] < before + watched:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no canary round within 120 s: {state}")
                    time.sleep(0.05)
                seconds.append([r["seconds"] for r in state["last"]])
                outcomes.append([r["outcome"] for r in state["last"]])
            time.sleep(0.5)
            after_memory = _gpu_memory_of(proc.pid)
            last = state["last"] if rounds else []
            proc.terminate()
            proc.wait(30)
    warm = [s for round_ in seconds[1:] for s in round_]
    passed = all(o == "pass" for round_ in outcomes for o in round_) and bool(outcomes)
    return {
        "gpus": [
            {"gpu": r["gpu"], "uuid": r["uuid"], "outcome": r["outcome"], "detail": r["detail"]}
            for r in last
        ],
        "passed_every_round_on_every_gpu": passed,
        "cold_run_seconds": seconds[0] if seconds else None,
        "warm_run_seconds_median": statistics.median(warm) if warm else None,
        "warm_run_seconds_max": max(warm) if warm else None,
        "off": {"enabled": off["enabled"], "runs": off["runs"], "gpu_memory_bytes": off_memory},
        "gpu_memory_bytes_between_runs": after_memory,
        "ok": passed and off["runs"] == 0 and not off_memory and not after_memory,
    }


def _check(code: int, call: str) -> None:
    if code != 0:
        raise RuntimeError(f"{call} returned CUDA error {code}")


def context_cost(cuda_library: str, contexts: int = 5) -> dict[str, Any]:
    """Step 2: `contexts` contexts on CUDA device 0, one at a time, as the canary makes them."""
    import pynvml as n

    cu = ctypes.CDLL(cuda_library)
    _check(cu.cuInit(0), "cuInit")
    device = ctypes.c_int()
    _check(cu.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
    raw = (ctypes.c_ubyte * 16)()
    _check(cu.cuDeviceGetUuid_v2(raw, device), "cuDeviceGetUuid_v2")
    h = bytes(raw).hex()
    uuid = f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    n.nvmlInit()
    try:
        handle = n.nvmlDeviceGetHandleByUUID(uuid)
        created, taken = [], []
        for _ in range(contexts):
            before = n.nvmlDeviceGetMemoryInfo(handle).used
            ctx = ctypes.c_void_p()
            began = time.perf_counter()
            _check(cu.cuCtxCreate_v2(ctypes.byref(ctx), 0, device), "cuCtxCreate_v2")
            created.append(time.perf_counter() - began)
            time.sleep(0.2)  # NVML's view of memory lags the driver's a little
            taken.append(n.nvmlDeviceGetMemoryInfo(handle).used - before)
            began = time.perf_counter()
            _check(cu.cuCtxDestroy_v2(ctx), "cuCtxDestroy_v2")
            destroyed = time.perf_counter() - began
            time.sleep(0.2)
    finally:
        n.nvmlShutdown()
    return {
        "uuid": uuid,
        "create_seconds_first": created[0],
        "create_seconds_median": statistics.median(created[1:] or created),
        "destroy_seconds_last": destroyed,
        "context_memory_mib_median": statistics.median(taken) / (1 << 20),
    }


def matmul_cost(
    nvml_library: str | None, cuda_library: str | None, window_1s: float = 6.0, rounds: int = 3
) -> dict[str, Any] | None:
    """Step 3: bf16 matmul TFLOP/s with the canary every 60 s and every 1 s, against none."""
    from benches.gpu_check import matmul_meter

    tflops = matmul_meter()
    if tflops is None:
        return None

    def with_canary(period: float, seconds: float) -> tuple[float, int]:
        with serving(nvml_library, cuda_library, f"{period:g}", dict(os.environ)) as (base, _):
            figure = tflops(seconds)
            return figure, int(_get(f"{base}/status")["gpu"]["canary"]["runs"])

    tflops(2.0)  # warm up
    out: dict[str, Any] = {}
    # Every 60 s: one window past the first run (at 60 s) each way; every 1 s: `rounds`
    # alternating windows each way.
    for period, window, count in ((60.0, 65.0, 1), (1.0, window_1s, rounds)):
        log(f"   bf16 matmul with the canary every {period:g} s, against none")
        without: list[float] = []
        with_: list[float] = []
        runs = 0
        for round_ in range(count):
            order = ("without", "with") if round_ % 2 == 0 else ("with", "without")
            for name in order:
                if name == "with":
                    figure, ran = with_canary(period, window)
                    with_.append(figure)
                    runs += ran
                else:
                    without.append(tflops(window))
        med_without, med_with = statistics.median(without), statistics.median(with_)
        out[f"every_{period:g}s"] = {
            "tflops_without": med_without,
            "tflops_with": med_with,
            "cost_pct": 100 * (med_without - med_with) / med_without,
            "canary_runs": runs,
            "window_seconds": window,
        }
    return out


def check(nvml_library: str | None, cuda_library: str | None, rounds: int) -> dict[str, Any]:
    """Steps 1 to 3, as one part of the GPU check's report."""
    log("5. the compute canary: off, then asked, cold and warm (runwarden serve)")
    report: dict[str, Any] = {"serve": serve_rounds(nvml_library, cuda_library, rounds)}
    log("6. what a CUDA context costs (created and destroyed as the canary does)")
    report["context"] = context_cost(cuda_library or "libcuda.so.1")
    log("7. bf16 matmul with the canary every 60 s and every 1 s (PyTorch and CUDA, if present)")
    report["matmul"] = matmul_cost(nvml_library, cuda_library)
    report["ok"] = report["serve"]["ok"]
    return report
