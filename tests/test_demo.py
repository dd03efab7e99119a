"""`runwarden demo`, the README's first command (SPEC C)."""

from __future__ import annotations

import signal

import httpx
from conftest import free_port


def test_C_demo_serves_through_the_sidecar_and_stops_cleanly(runwarden):
    """C/D4: `runwarden demo` starts its model server behind runwarden, prints the URLs,
    answers /predict and /stream through the proxy, and exits 0 on SIGTERM."""
    rw = runwarden(None, "--app-port", str(free_port()), command="demo", wait_ready=True)
    predict = httpx.get(f"{rw.url}/predict", params={"prompt": "hi", "latency": "0"})
    assert predict.status_code == 200
    assert predict.json()["prompt"] == "hi"
    with httpx.stream("GET", f"{rw.url}/stream", params={"tokens": "3"}) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data:")]
    assert len(events) == 4 and events[-1] == "data: [DONE]"
    assert httpx.get(f"{rw.url}/health", headers={"x-fal-runner-health-check": "1"}).json()[
        "passed"
    ]
    rw.proc.send_signal(signal.SIGTERM)
    assert rw.wait_exit() == 0
    log = rw.log()
    assert f"curl '{rw.url}/predict" in log
    assert "exiting with code 0 (shutdown)" in log
