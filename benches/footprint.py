"""Section 6: what an idle runwarden costs: RSS and CPU over a quiet minute with 1 Hz sampling
of 8 GPUs and the default health checks (every 15 s) of the bench app."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benches.common import (
    PYTHON,
    Profile,
    cpu_seconds,
    fake_nvml_library,
    free_port,
    log,
    rss_mib,
    running,
    runwarden_serve,
    wait_http,
    write_gpus,
)


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    app_port, port, admin_port = free_port(), free_port(), free_port()
    env = write_gpus(tmp / "idle-gpus.json")
    args = runwarden_serve(
        "--app-url", f"http://127.0.0.1:{app_port}", "--host", "127.0.0.1",
        "--port", str(port), "--admin-host", "127.0.0.1",
        "--admin-port", str(admin_port), "--log-level", "warning",
        "--gpu-sample-seconds", "1", "--nvml-library", str(fake_nvml_library()),
    )  # fmt: skip
    with (
        running([PYTHON, "-m", "benches.app", str(app_port)], port=app_port),
        running(args, port=port, env=env, log_to=tmp / "runwarden-idle.log") as proc,
    ):
        wait_http(f"http://127.0.0.1:{admin_port}/livez", proc)
        time.sleep(1.0 if profile.smoke else 3.0)  # start-up allocations are done
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        peak = rss_mib(proc.pid)
        deadline = wall0 + profile.footprint_seconds
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            peak = max(peak, rss_mib(proc.pid))
        cpu1, wall1 = cpu_seconds(proc.pid), time.monotonic()
        result = {
            "seconds": wall1 - wall0,
            "rss_mib": rss_mib(proc.pid),
            "peak_rss_mib": peak,
            "cpu_pct": 100 * (cpu1 - cpu0) / (wall1 - wall0),
        }
    log(f"footprint: {result}")
    return result
