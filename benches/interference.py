"""Sections 1 and 2: does GPU sampling compete with inference, and what does one sample cost?

A worker process holds the stand-in for inference: a pure-Python CPU-bound workload on a
uvloop event loop, run in slices (as an async model server runs batches), then the same loop
idle with a 1 ms timer whose lateness is its lag. Beside it runs nothing, runwarden's core
(`Warden`: Rust sampler of 8 fake GPUs and scheduler checking a local app, both at 10 Hz,
events drained on this loop), or an nvidia-ml-py sampler thread at 10 Hz reading the same
fields from the same fake driver: the three in turn, round after round, in one process, so
that each figure is compared with its own round's no-monitor figure.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benches.common import (
    GPUS,
    PYTHON,
    Profile,
    fake_nvml_library,
    free_port,
    log,
    median,
    percentile,
    running,
    write_gpus,
)
from benches.nvml_python import HZ, PynvmlSampler

MONITORS = ("none", "runwarden", "nvidia-ml-py")


def work() -> int:
    """About 0.1 ms of pure Python holding the GIL: the stand-in for inference code."""
    total = 0
    for i in range(1500):
        total += i * i % 7
    return total


# --- the worker --------------------------------------------------------------------------


async def throughput(seconds: float) -> float:
    """Workload calls per second, yielding to the loop every ~5 ms as an async server would."""
    calls = 0
    began = time.perf_counter()
    end = began + seconds
    while True:
        for _ in range(50):
            work()
        calls += 50
        await asyncio.sleep(0)
        if time.perf_counter() >= end:
            return calls / (time.perf_counter() - began)


async def loop_lag(seconds: float) -> list[float]:
    """How late a 1 ms timer fires, in seconds, on an otherwise idle loop."""
    lags = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        began = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - began - 0.001)
    return lags


def other_threads_cpu() -> float:
    """CPU seconds used so far by this process's threads other than this (the main) one."""
    return time.process_time() - time.thread_time()


async def segment(monitor: str, seconds: float, app_url: str, library: str) -> dict[str, Any]:
    """One measurement with one monitor running: throughput, then loop lag."""
    from runwarden import GpuSamples, GpuSettings, HealthSettings, Warden

    warden = sampler = None
    costs: list[float] = []
    checks: list[float] = []
    on_loop: list[float] = []
    if monitor == "runwarden":
        health = HealthSettings(period_seconds=1 / HZ, start_period_seconds=0, timeout_seconds=1.0)
        gpu = GpuSettings(gpu_sample_seconds=1 / HZ, nvml_library=library)
        warden = Warden(health, app_url, gpu)
        warden.on_gpu(lambda e: costs.append(e.cost_seconds) if isinstance(e, GpuSamples) else None)
        warden.on_outcome(lambda o: checks.append(o.latency_seconds) if o.passed else None)
        handle = warden._on_events

        def timed_handle() -> None:  # runwarden's whole share of this thread
            began = time.perf_counter()
            handle()
            on_loop.append(time.perf_counter() - began)

        warden._on_events = timed_handle  # type: ignore[method-assign]
        await warden.start()
    elif monitor == "nvidia-ml-py":
        sampler = PynvmlSampler()
        sampler.start()
    await asyncio.sleep(0.2)  # the first sample and check are taken
    on_loop.clear()
    began, cpu = time.monotonic(), other_threads_cpu()
    try:
        tput = await throughput(seconds)
        lags = await loop_lag(seconds)
    finally:
        elapsed = time.monotonic() - began
        cpu = other_threads_cpu() - cpu
        if warden is not None:
            await warden.stop()
        if sampler is not None:
            sampler.stop()
            costs = sampler.costs
    return {
        "monitor": monitor,
        "throughput": tput,
        "lag_p50_ms": 1000 * percentile(lags, 50),
        "lag_p99_ms": 1000 * percentile(lags, 99),
        "samples_per_s": len(costs) / (elapsed + 0.2),
        "checks_passed": len(checks),
        "sample_cost_ms": 1000 * median(costs),
        "threads_cpu_pct": 100 * cpu / elapsed,
        # Time the monitor takes from the workload's thread: runwarden's event handling on
        # the loop; for the Python sampler, its thread's CPU, spent holding the GIL but for
        # the driver calls (an upper bound).
        "loop_share_pct": 100 * (sum(on_loop) if warden else cpu if sampler else 0.0) / elapsed,
    }


async def worker(cycles: int, seconds: float, app_url: str, library: str) -> list[dict[str, Any]]:
    """`cycles` rounds of every monitor in one process, the order reversed every other round,
    so that the machine's drift and this process's layout weigh on all of them alike."""
    runs = []
    for cycle in range(cycles):
        order = MONITORS if cycle % 2 == 0 else MONITORS[::-1]
        for monitor in order:
            result = await segment(monitor, seconds, app_url, library)
            result["cycle"] = cycle
            runs.append(result)
    return runs


# --- section 2: cost per sample -----------------------------------------------------------


def sample_costs(count: int, library: str) -> dict[str, float]:
    """Both samplers at 50 Hz, taking turns over the same seconds so the machine's noise
    weighs on both alike: runwarden's in its own thread (its `GpuSamples.cost_seconds`),
    nvidia-ml-py's in this one just after each of runwarden's.
    Also times the Python end of the event path: `drain_events()` taking one sample event,
    and its `samples` turned into dicts (what /metrics reads)."""
    import select

    from runwarden import Core, GpuSamples, GpuSettings, HealthSettings

    core = Core(HealthSettings(period_seconds=3600), "http://127.0.0.1:9",
                GpuSettings(gpu_sample_seconds=0.02, nvml_library=library))  # fmt: skip
    sampler = PynvmlSampler()
    ours: list[float] = []
    drains: list[float] = []
    dicts: list[float] = []
    core.start()
    try:
        deadline = time.monotonic() + 10 + count * 0.1
        while len(ours) <= count and time.monotonic() < deadline:
            select.select([core.event_fd()], [], [], 0.1)
            drain_began = time.perf_counter()
            events = core.drain_events()
            drained = time.perf_counter() - drain_began
            samples = [e for e in events if isinstance(e, GpuSamples)]
            if not samples:
                continue
            ours += [e.cost_seconds for e in samples]
            if len(events) == 1:
                drains.append(drained)
                dict_began = time.perf_counter()
                _ = samples[0].samples
                dicts.append(time.perf_counter() - dict_began)
            # Right after runwarden's sample, so the two never read the driver at once.
            sampler.sample()
    finally:
        core.stop()
        sampler.stop()
    return {
        "runwarden_ms": 1000 * median(ours[1:]),  # the first sample warms the driver's caches
        "pynvml_ms": 1000 * median(sampler.costs[1:]),
        "drain_us": 1e6 * median(drains),
        "to_dicts_us": 1e6 * median(dicts),
    }


def per_call_floor(calls: int = 20000) -> float:
    """The fake driver's own cost per call, estimated through ctypes: an NVML call minus a
    trivial libc call with as many arguments."""
    import pynvml as n

    handle = n.nvmlDeviceGetHandleByIndex(0)
    temperature = n._nvmlGetFunctionPointer("nvmlDeviceGetTemperature")
    out = ctypes.c_uint()
    ref = ctypes.byref(out)
    libc = ctypes.CDLL(None)
    memcmp = libc.memcmp
    a = ctypes.create_string_buffer(8)

    def timed(call: Callable[[], object]) -> float:
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            for _ in range(calls // 5):
                call()
            best = min(best, (time.perf_counter() - began) / (calls // 5))
        return best

    nvml = timed(lambda: temperature(handle, 0, ref))
    trivial = timed(lambda: memcmp(a, a, 0))
    return max(0.0, nvml - trivial)


def cost_worker(count: int, library: str) -> dict[str, Any]:
    costs = sample_costs(count, library)
    import pynvml

    pynvml.nvmlInit()
    floor = per_call_floor()
    pynvml.nvmlShutdown()
    # Calls per 8-GPU sample: 1 count + 15 per GPU for both samplers (handles kept; runwarden
    # looks a handle up again only after a failed call).
    return {
        **costs,
        "floor_per_call_us": 1e6 * floor,
        "runwarden_calls": 1 + 15 * GPUS,
        "pynvml_calls": 1 + 15 * GPUS,
    }


# --- the parent ---------------------------------------------------------------------------


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    library = str(fake_nvml_library())
    env = {
        **write_gpus(tmp / "gpus.json"),
        "LD_LIBRARY_PATH": str(Path(library).parent),
    }
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    runs: list[dict[str, Any]] = []
    workers = 1 if profile.smoke else 2
    with running([PYTHON, "-m", "benches.app", str(port)], port=port):
        for w in range(workers):
            found = _call(
                ["worker", "--cycles", str(profile.reps), "--seconds", str(profile.phase_seconds),
                 "--app-url", app_url, "--library", library],
                env,
            )  # fmt: skip
            for result in found:
                result["rep"] = (w, result["cycle"])
                log(
                    f"interference worker {w + 1}/{workers} cycle {result['cycle'] + 1} "
                    f"{result['monitor']}: {result['throughput']:.0f} calls/s, "
                    f"lag p99 {result['lag_p99_ms']:.3f} ms, "
                    f"other threads {result['threads_cpu_pct']:.2f}% CPU"
                )
            runs += found
        cost = _call(["cost", "--count", str(profile.samples), "--library", library], env)
    return {"interference": summarize(runs), "cost": cost, "runs": runs}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Medians per monitor, and paired ratios against the repetition's no-monitor run."""
    base = {r["rep"]: r for r in runs if r["monitor"] == "none"}
    out: dict[str, dict[str, float]] = {}
    for monitor in MONITORS:
        mine = [r for r in runs if r["monitor"] == monitor]
        costs = [100 * (1 - r["throughput"] / base[r["rep"]]["throughput"]) for r in mine]
        out[monitor] = {
            "throughput": median([r["throughput"] for r in mine]),
            "throughput_cost_pct": median(costs),
            "throughput_cost_p25": percentile(costs, 25),
            "throughput_cost_p75": percentile(costs, 75),
            "loop_share_pct": median([r["loop_share_pct"] for r in mine]),
            "lag_p50_ms": median([r["lag_p50_ms"] for r in mine]),
            "lag_p99_ms": median([r["lag_p99_ms"] for r in mine]),
            "added_lag_p99_ms": median(
                [r["lag_p99_ms"] - base[r["rep"]]["lag_p99_ms"] for r in mine]
            ),
            "samples_per_s": median([r["samples_per_s"] for r in mine]),
            "sample_cost_ms": median([r["sample_cost_ms"] for r in mine]),
            "threads_cpu_pct": median([r["threads_cpu_pct"] for r in mine]),
        }
    return out


def _call(args: list[str], env: dict[str, str]) -> Any:
    import subprocess

    out = subprocess.run(
        [PYTHON, "-m", "benches.interference", *args],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker")
    w.add_argument("--cycles", type=int, required=True)
    w.add_argument("--seconds", type=float, required=True)
    w.add_argument("--app-url", required=True)
    w.add_argument("--library", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--library", required=True)
    args = parser.parse_args()
    if args.command == "worker":
        import uvloop

        result: Any = uvloop.run(worker(args.cycles, args.seconds, args.app_url, args.library))
    else:
        result = cost_worker(args.count, args.library)
    print(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
