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


def test_C_the_demos_own_settings_are_named_demo_in_setting_sources(runwarden):
    """/status's setting_sources names the demo's own defaults `demo`, not `default`; what
    the demo leaves alone stays `default`, and an option given stays `option`."""
    rw = runwarden(
        None, "--app-port", str(free_port()), "--failure-threshold", "4", command="demo",
        wait_ready=True,
    )  # fmt: skip
    sources = rw.status()["setting_sources"]
    for name in ("period_seconds", "timeout_seconds", "start_period_seconds",
                 "drain_timeout_seconds"):  # fmt: skip
        assert sources[name] == "demo", (name, sources)  # type: ignore[index]
    assert sources["health_path"] == "default"  # type: ignore[index]
    assert sources["failure_threshold"] == "option"  # type: ignore[index]
    rw.proc.send_signal(signal.SIGTERM)
    assert rw.wait_exit() == 0


def test_C_the_demo_says_a_503_ends_it_with_12_and_who_restarts_a_runner(runwarden):
    """The demo's 503 example: the text says the orchestrator starts a fresh runner and that
    here the process just exits with 12, and so it does."""
    rw = runwarden(None, "--app-port", str(free_port()), command="demo", wait_ready=True)
    assert httpx.get(f"{rw.url}/predict", params={"status": "503"}).status_code == 503
    assert rw.wait_exit() == 12
    log = rw.log()
    assert "the orchestrator" in log and "exit code 12" in log, log
    assert "runwarden replaces" not in log
