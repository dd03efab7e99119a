"""Section 5: from a fault injected to runwarden's exit, per kind of fault.

Each scenario starts a fresh `runwarden serve` in front of the bench app (and 8 fake GPUs),
waits until it is ready, injects one fault and times until the process has exited, with the
exit code that names the reason (SPEC D4). A scenario's deadline is what its settings allow:
the XID and GPU-lost events 1 s; the rest their configured deadline, + 100 ms.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benches.common import (
    PYTHON,
    Profile,
    fake_nvml_library,
    free_port,
    http,
    log,
    median,
    running,
    runwarden_serve,
    start,
    stop,
    wait_http,
    write_gpus,
)

SAMPLE = 0.2
WATCHDOG = 1.0
PERIOD = 0.2
THRESHOLD = 3


@dataclass
class Scenario:
    name: str
    reason: str
    code: int
    deadline: float
    """Seconds from the injection within which the exit must come (before the + 100 ms)."""
    options: tuple[str, ...]
    inject: Callable[[Any, str, str], object]
    """(fake NVML, proxy URL, app URL) -> anything; called at the measured instant."""
    gpu: bool = False
    slack: float = 0.1
    """Allowed past the deadline: 100 ms, none for the XID and GPU-lost events (1 s flat)."""


def _inject_xid(fake: Any, proxy: str, app: str) -> None:
    fake.inject_xid(gpu=3, xid=79)


def _lose_gpu(fake: Any, proxy: str, app: str) -> None:
    fake.lose_gpu(5)


def _hang(fake: Any, proxy: str, app: str) -> None:
    fake.hang("nvmlDeviceGetTemperature", 60.0)


def _app_503(fake: Any, proxy: str, app: str) -> None:
    http(f"{proxy}/status?code=503")


def _manual(fake: Any, proxy: str, app: str) -> None:
    http(f"{app}/control/health?mode=fail")
    http(f"{proxy}/manual")


def _fail_health(fake: Any, proxy: str, app: str) -> None:
    http(f"{app}/control/health?mode=fail")


SCENARIOS = [
    Scenario("critical XID (79)", "gpu_fault", 13, 1.0, (), _inject_xid, gpu=True, slack=0),
    Scenario("GPU lost", "gpu_fault", 13, 1.0, (), _lose_gpu, gpu=True, slack=0),
    Scenario(
        f"hung NVML call (watchdog {WATCHDOG:g} s, sample {SAMPLE:g} s)", "gpu_fault", 13,
        WATCHDOG + SAMPLE,
        ("--nvml-watchdog-seconds", str(WATCHDOG), "--gpu-sample-seconds", str(SAMPLE)),
        _hang, gpu=True,
    ),
    Scenario("app 503", "app_503", 12, 0.0, (), _app_503),
    Scenario("manual check fails", "manual_check", 11, 0.0, (), _manual),
    Scenario(
        f"{THRESHOLD} failed checks (period {PERIOD:g} s)", "health_check", 10,
        THRESHOLD * PERIOD,
        ("--period-seconds", str(PERIOD), "--failure-threshold", str(THRESHOLD),
         "--timeout-seconds", "0.5"),
        _fail_health,
    ),
]  # fmt: skip


def gpu_enabled(admin: str, limit: float = 5.0) -> str | None:
    """None once /status says GPU monitoring runs; else why not."""
    deadline = time.monotonic() + limit
    detail = "no answer from /status"
    while time.monotonic() < deadline:
        code, body = http(f"{admin}/status")
        if code == 200:
            gpu = json.loads(body).get("gpu") or {}
            if gpu.get("enabled") is True:
                return None
            detail = str(gpu.get("detail") or gpu)
        time.sleep(0.05)
    return detail


def one(scenario: Scenario, app: str, tmp: Path, limit: float) -> dict[str, Any]:
    from runwarden.testing import FakeNvml

    fake = FakeNvml(tmp / "detect-gpus.json")
    env = write_gpus(fake.path)
    port, admin_port = free_port(), free_port()
    proxy, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    http(f"{app}/control/health?mode=pass")
    args = runwarden_serve(
        "--app-url", app, "--host", "127.0.0.1", "--port", str(port),
        "--admin-host", "127.0.0.1", "--admin-port", str(admin_port), "--start-period-seconds", "0",
        "--period-seconds", str(PERIOD), "--log-level", "warning",
        "--nvml-library", str(fake_nvml_library()), *scenario.options,
    )  # fmt: skip
    proc = start(args, env=env, log_to=tmp / "runwarden-detect.log")
    try:
        wait_http(f"{admin}/readyz", proc)
        if scenario.gpu:
            why = gpu_enabled(admin)
            if why is not None:
                return {"skipped": f"GPU monitoring is not on: {why}"}
            time.sleep(0.3)  # the event thread has registered its event set
        began = time.monotonic()
        scenario.inject(fake, proxy, app)
        try:
            code = proc.wait(limit)
        except Exception:
            return {"seconds": None, "code": None, "detail": f"still running after {limit} s"}
        return {"seconds": time.monotonic() - began, "code": code}
    finally:
        stop(proc, grace=5)
        fake.reset(gpus=8)  # releases a call blocked in a hang


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    app_port = free_port()
    app = f"http://127.0.0.1:{app_port}"
    reps = 1 if profile.smoke else 3
    results: dict[str, Any] = {}
    with running([PYTHON, "-m", "benches.app", str(app_port)], port=app_port):
        for scenario in SCENARIOS:
            runs = [one(scenario, app, tmp, limit=scenario.deadline + 5) for _ in range(reps)]
            if any("skipped" in r for r in runs):
                results[scenario.name] = {
                    "skipped": next(r["skipped"] for r in runs if "skipped" in r),
                    "deadline": scenario.deadline,
                    "bound": scenario.deadline + scenario.slack,
                }
                log(f"detection {scenario.name}: skipped ({results[scenario.name]['skipped']})")
                continue
            times = [r["seconds"] for r in runs if r["seconds"] is not None]
            codes = sorted({r["code"] for r in runs})
            results[scenario.name] = {
                "seconds": median(times) if len(times) == len(runs) else None,
                "max_seconds": max(times) if len(times) == len(runs) else None,
                "codes": codes,
                "expected_code": scenario.code,
                "reason": scenario.reason,
                "deadline": scenario.deadline,
                "bound": scenario.deadline + scenario.slack,
                "detail": "; ".join(r["detail"] for r in runs if "detail" in r),
            }
            log(f"detection {scenario.name}: {results[scenario.name]}")
    return results
