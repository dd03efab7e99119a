"""Responses that replace the runner, and health-check headers (SPEC R1-R4, H5, H6, D4)."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from conftest import AppServer, poll
from runwarden import exit_codes


def _checks(rw) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    return list(rw.status()["checks"])


def test_R1_503_is_forwarded_then_replaces(app_server: AppServer, runwarden):
    """R1/D4: the client gets the app's 503 unchanged; then runwarden exits with app_503's code
    and says why in one log line."""
    rw = runwarden(app_server.url)
    response = httpx.get(f"{rw.url}/predict", params={"status": "503"})
    assert response.status_code == 503
    assert response.json() == {"ok": False, "latency": 0.0}
    assert rw.wait_exit() == exit_codes.BY_REASON["app_503"] == 12
    assert "exiting with code 12 (app_503)" in rw.log()


def test_R2_500_and_others_are_forwarded_and_replace_nothing(app_server: AppServer, runwarden):
    """R2: 500, 404, 429 pass through; health checks keep passing; the runner stays."""
    rw = runwarden(app_server.url, wait_ready=True)
    for status in (500, 404, 429, 400):
        assert httpx.get(f"{rw.url}/predict", params={"status": str(status)}).status_code == status
    n = len(_checks(rw))
    poll(lambda: len(_checks(rw)) >= n + 2)  # two more scheduled checks, still alive
    assert rw.proc.poll() is None
    assert httpx.get(f"{rw.admin_url}/readyz").status_code == 200


def test_R4_500_asks_for_one_extra_check(app_server: AppServer, runwarden):
    """R4: with no schedule, a 500 from the app is followed by an `extra` check."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    assert _checks(rw) == []
    assert httpx.get(f"{rw.url}/predict", params={"status": "500"}).status_code == 500
    checks = poll(lambda: _checks(rw))
    assert "extra" in checks[0]["triggers"]  # type: ignore[index]
    assert checks[0]["passed"] is True  # type: ignore[index]
    assert rw.proc.poll() is None


def test_R3_R4_dead_app_is_noticed_at_once(app_server: AppServer, runwarden):
    """R3/R4: the app dies; the next request gets 502, whose extra check fails and (threshold
    1) replaces the runner with health_check's code, with no scheduled check needed."""
    rw = runwarden(app_server.url, "--no-call-regularly", "--failure-threshold", "1")
    rw.wait_ready()  # before its first pass, an app is starting, not dead
    app_server.kill()

    def replaced() -> bool:
        # Extra checks are rate-limited (trigger_interval_seconds), so a 502 right after the
        # last check may share its outcome; the next one past the interval runs a check.
        if rw.proc.poll() is not None:
            return True
        try:
            assert httpx.get(f"{rw.url}/predict").status_code in (502, 503)
        except httpx.TransportError:
            pass  # runwarden exited between the poll and the request
        return False

    poll(replaced, timeout=5)
    assert rw.wait_exit() == exit_codes.BY_REASON["health_check"]


def test_H5_check_header_is_answered_by_runwarden_not_forwarded(app_server: AppServer, runwarden):
    """H5: a request carrying the check header gets the check's result from runwarden (200
    JSON, or 503 and the reason) and never reaches the app's route."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    header = {"x-fal-runner-health-check": "1"}
    response = httpx.post(f"{rw.url}/predict", headers=header, content=b"ignored")
    assert response.status_code == 200
    assert response.json()["passed"] is True
    assert "gateway" in response.json()["check"]["triggers"]
    app_server.set_health("fail500")
    poll(lambda: httpx.get(f"{rw.url}/predict", headers=header).status_code == 503)
    failed = httpx.get(f"{rw.url}/predict", headers=header).json()
    assert failed["passed"] is False and failed["reason"]
    assert app_server.state()["received"] == 0


def test_H6_manual_check_header_removed_and_failure_replaces_at_once(
    app_server: AppServer, runwarden
):
    """H6: a response carrying the check header is forwarded without it; the manual check
    that follows fails and replaces at once, despite the start period and threshold."""
    rw = runwarden(
        app_server.url, "--no-call-regularly", "--start-period-seconds", "300",
        "--failure-threshold", "5",
    )  # fmt: skip
    app_server.set_health("fail500")
    response = httpx.get(f"{rw.url}/predict", params={"check_header": "1"})
    assert response.status_code == 200
    assert "x-fal-runner-health-check" not in response.headers
    assert rw.wait_exit() == exit_codes.BY_REASON["manual_check"]


def test_H6_custom_check_header_name(app_server: AppServer, runwarden):
    """H5/C: the header's name is settable (--check-header)."""
    rw = runwarden(app_server.url, "--no-call-regularly", "--check-header", "X-Probe-Me")
    response = httpx.get(f"{rw.url}/predict", headers={"x-probe-me": "1"})
    assert response.status_code == 200 and response.json()["passed"] is True
    assert app_server.state()["received"] == 0


def test_H9_a_client_that_sends_nothing_does_not_stall_the_runner(app_server: AppServer, runwarden):
    """H9/S3: time a request spends waiting on its client (a declared body never sent) is
    not the app's: it does not count toward stall_seconds, so one client cannot replace us."""
    rw = runwarden(app_server.url, "--stall-seconds", "0.5", wait_ready=True)
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        poll(lambda: rw.status()["in_flight"] == 1)
        # Four stall periods of a client sending nothing: the runner stays.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            assert rw.status()["state"] == "ready"
            time.sleep(0.1)
    assert rw.proc.poll() is None


def test_H9_an_app_that_stops_moving_bytes_still_stalls(app_server: AppServer, runwarden):
    """H9: the same runner, with a request the app holds without a byte, is replaced."""
    rw = runwarden(app_server.url, "--stall-seconds", "0.5", wait_ready=True)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{rw.url}/hold", params={"seconds": "10"}, timeout=3)
    assert rw.wait_exit() == exit_codes.BY_REASON["stalled"]
    assert "moved no byte for 0.5s" in rw.log()


def test_H6_manual_check_runs_when_the_client_drops_the_response(app_server: AppServer, runwarden):
    """H6: a response carrying the check header asks for a check even when the client
    leaves before its end: a broken exchange is when the check matters most."""
    rw = runwarden(
        app_server.url, "--no-call-regularly", "--start-period-seconds", "300",
        "--failure-threshold", "5",
    )  # fmt: skip
    app_server.set_health("fail500")
    params = {"check_header": "1", "events": "50", "interval": "0.1"}
    with httpx.stream("GET", f"{rw.url}/sse", params=params, timeout=10) as response:
        assert "x-fal-runner-health-check" not in response.headers
        next(response.iter_raw())  # one event, then the client leaves
    assert rw.wait_exit() == exit_codes.BY_REASON["manual_check"]
