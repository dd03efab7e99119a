"""SPEC Q, the runner's door, black box: the real sidecar in front of a real app that records
what reached it and when (tests/door_app.py)."""

from __future__ import annotations

import http.server
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from conftest import AppServer, Runwarden, free_port, poll, serving

CHECK_HEADER = "x-fal-runner-health-check"


@pytest.fixture
def door_app() -> Iterator[AppServer]:
    yield from serving("door_app.py")


def control(app: AppServer, **query: object) -> None:
    httpx.post(f"{app.url}/_control", params=query, timeout=5).raise_for_status()


def events(app: AppServer) -> list[dict[str, Any]]:
    return list(app.state()["events"])  # type: ignore[call-overload]


def in_background(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def run() -> None:
        try:
            result.append(call())
        except Exception as exc:  # the test reads it
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def get(warden: Runwarden, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(f"{warden.url}{path}", timeout=kwargs.pop("timeout", 20), **kwargs)


def test_Q1_an_exclusive_check_never_overlaps_a_request_and_the_held_request_is_answered_after_it(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    # No trigger rate limit: the gateway's ask always starts a check (H5 would otherwise
    # answer one within --trigger-interval-seconds of the last with that outcome).
    warden = runwarden(door_app.url, "--no-call-regularly", "--timeout-seconds", "3",
                       "--trigger-interval-seconds", "0", wait_ready=True)  # fmt: skip
    control(door_app, check_ms=1000, reset=1)
    long, long_result = in_background(lambda: get(warden, "/work?ms=500&tag=before"))
    poll(lambda: any(e["tag"] == "before" for e in events(door_app)))
    check, check_result = in_background(lambda: get(warden, "/", headers={CHECK_HEADER: "1"}))
    # The check holds the door (waiting for the request at the app): what comes next waits.
    poll(lambda: warden.status()["door"]["check_running_alone"])  # type: ignore[index]
    held = get(warden, "/work?ms=10&tag=held")
    for thread in (long, check):
        thread.join(20)
    assert held.status_code == 200
    assert isinstance(long_result[0], httpx.Response) and long_result[0].status_code == 200
    assert isinstance(check_result[0], httpx.Response) and check_result[0].status_code == 200
    seen = {e["tag"] or e["kind"]: e for e in events(door_app)}
    before, gate, after = seen["before"], seen["check"], seen["held"]
    assert gate["start"] >= before["end"], "the check waited for the request at the app"
    assert after["start"] >= gate["end"], "the held request went on after the check"
    outcome = warden.status()["checks"][-1]  # type: ignore[index]
    assert outcome["counted"] == "pass"


def test_Q1_with_call_regularly_checks_still_run_alongside_a_long_request(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    warden = runwarden(door_app.url, wait_ready=True)
    control(door_app, reset=1)
    assert get(warden, "/work?ms=1200&tag=long").status_code == 200
    seen = events(door_app)
    long = next(e for e in seen if e["tag"] == "long")
    during = [e for e in seen if e["kind"] == "check" and long["start"] < e["start"] < long["end"]]
    assert during, "regular checks (period 0.2 s) ran while the request was at the app"


def test_Q2_under_a_limit_of_2_ten_concurrent_requests_all_succeed_and_the_app_sees_at_most_2(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    warden = runwarden(door_app.url, "--max-concurrency", "2", wait_ready=True)
    control(door_app, reset=1)
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda i: get(warden, f"/work?ms=150&tag={i}"), range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert door_app.state()["max_active"] == 2
    metrics = warden.metrics()
    assert metrics["runwarden_max_concurrency"] == 2
    assert metrics["runwarden_queue_wait_seconds_count"] >= 1


def test_Q2_queue_overflow_is_refused_with_retry_after_and_the_runner_is_not_replaced(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    warden = runwarden(door_app.url, "--max-concurrency", "1", "--max-queue", "1", wait_ready=True)
    first, _ = in_background(lambda: get(warden, "/work?ms=1000&tag=first"))
    poll(lambda: warden.status()["door"]["at_app"] == 1)  # type: ignore[index]
    second, second_result = in_background(lambda: get(warden, "/work?ms=10&tag=second"))
    poll(lambda: warden.status()["door"]["queued"] == 1)  # type: ignore[index]
    refused = get(warden, "/work?ms=10&tag=third")
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-runwarden-overloaded"] == "queue_full"
    assert refused.json()["reason"] == "queue_full"
    first.join(10)
    second.join(10)
    assert isinstance(second_result[0], httpx.Response) and second_result[0].status_code == 200
    assert "third" not in {e["tag"] for e in events(door_app)}
    status = warden.status()
    assert status["state"] == "ready" and warden.proc.poll() is None
    assert status["door"]["refused"]["queue_full"] == 1  # type: ignore[index]
    assert warden.metrics()['runwarden_requests_refused_total{reason="queue_full"}'] == 1
    # Never judged as the app's 503 (R1), never a failure.
    assert "app_503" not in warden.log()


def test_Q2_a_queue_timeout_is_answered_within_its_bound(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    warden = runwarden(
        door_app.url, "--max-concurrency", "1", "--queue-timeout-seconds", "0.3", wait_ready=True
    )
    first, _ = in_background(lambda: get(warden, "/work?ms=2000&tag=first"))
    poll(lambda: warden.status()["door"]["at_app"] == 1)  # type: ignore[index]
    started = time.monotonic()
    waited = get(warden, "/work?ms=10&tag=late")
    took = time.monotonic() - started
    assert waited.status_code == 503
    assert waited.headers["x-runwarden-overloaded"] == "queue_timeout"
    assert 0.3 <= took < 1.5, took
    first.join(10)
    assert "late" not in {e["tag"] for e in events(door_app)}


def test_Q2_a_client_that_leaves_the_queue_frees_its_place_and_never_reaches_the_app(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    warden = runwarden(door_app.url, "--max-concurrency", "1", wait_ready=True)
    first, _ = in_background(lambda: get(warden, "/work?ms=1500&tag=first"))
    poll(lambda: warden.status()["door"]["at_app"] == 1)  # type: ignore[index]
    leaver = socket.create_connection(("127.0.0.1", warden.port))
    leaver.sendall(b"GET /work?ms=10&tag=leaver HTTP/1.1\r\nHost: x\r\n\r\n")
    poll(lambda: warden.status()["door"]["queued"] == 1)  # type: ignore[index]
    leaver.close()
    # Its place is freed while the first request is still at the app.
    poll(lambda: warden.status()["door"]["queued"] == 0, timeout=1.0)
    assert warden.status()["door"]["at_app"] == 1  # type: ignore[index]
    first.join(10)
    assert get(warden, "/work?ms=10&tag=after").status_code == 200
    assert "leaver" not in {e["tag"] for e in events(door_app)}


def test_Q3_a_request_timeout_gets_504_and_ends_the_apps_request(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    # No rate limit on triggers (R4's would answer a trigger within it with the latest
    # outcome, and record no check of its own) and no regular check in the way.
    warden = runwarden(door_app.url, "--request-timeout-seconds", "0.5",
                       "--trigger-interval-seconds", "0", "--period-seconds", "60",
                       wait_ready=True)  # fmt: skip
    started = time.monotonic()
    answer = get(warden, "/work?ms=5000&tag=slow")
    took = time.monotonic() - started
    assert answer.status_code == 504
    assert 0.5 <= took < 2.0, took
    slow = poll(
        lambda: next((e for e in events(door_app) if e["tag"] == "slow" and e["end"]), None)
    )
    assert slow["aborted"], "the app's request was aborted"  # type: ignore[index]
    assert slow["end"] - slow["start"] < 2.0  # type: ignore[index]
    # R4: one extra check.
    poll(lambda: any("extra" in c["triggers"] for c in warden.status()["checks"]))  # type: ignore[union-attr]


def test_Q3_a_request_timeout_after_the_response_started_cuts_it(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    warden = runwarden(door_app.url, "--request-timeout-seconds", "0.5", wait_ready=True)
    received = b""
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("GET", f"{warden.url}/stream?ms=5000&tag=cut", timeout=10) as answer:
            assert answer.status_code == 200
            for chunk in answer.iter_raw():
                received += chunk
    assert received == b"first\n", "the client saw the response cut short"
    cut = poll(lambda: next((e for e in events(door_app) if e["tag"] == "cut" and e["end"]), None))
    assert cut["aborted"]  # type: ignore[index]


class _SlowSync(http.server.BaseHTTPRequestHandler):
    """One request at a time, 100 ms each, the connection closed after each answer: a
    naive single-worker synchronous server (a gunicorn sync worker)."""

    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        if self.path != "/health":
            time.sleep(0.1)
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_Q4_a_single_worker_app_under_32_clients_with_max_concurrency_1_is_not_replaced(
    runwarden: Callable[..., Runwarden],
) -> None:
    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), _SlowSync)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        warden = runwarden(
            f"http://127.0.0.1:{port}",
            "--max-concurrency", "1", "--max-queue", "64",
            "--period-seconds", "0.3", "--timeout-seconds", "1", "--failure-threshold", "2",
            wait_ready=True,
        )  # fmt: skip
        stop = time.monotonic() + 10
        statuses: list[int] = []

        def client() -> None:
            with httpx.Client(timeout=30) as c:
                while time.monotonic() < stop:
                    statuses.append(c.get(f"{warden.url}/predict").status_code)

        with ThreadPoolExecutor(32) as pool:
            for future in [pool.submit(client) for _ in range(32)]:
                future.result()
        assert warden.proc.poll() is None, warden.log()
        status = warden.status()
        assert status["state"] == "ready"
        assert set(statuses) == {200} and len(statuses) >= 50
        counted = [c for c in status["checks"] if c["counted"] == "counted"]  # type: ignore[union-attr]
        assert not counted, counted
    finally:
        server.shutdown()
        server.server_close()


def test_Q6_draining_with_requests_in_the_queue_leaves_none_unanswered(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    warden = runwarden(door_app.url, "--max-concurrency", "1", wait_ready=True)
    first, first_result = in_background(lambda: get(warden, "/work?ms=1500&tag=first"))
    poll(lambda: warden.status()["door"]["at_app"] == 1)  # type: ignore[index]
    queued = [in_background(lambda i=i: get(warden, f"/work?ms=10&tag=q{i}")) for i in range(3)]
    poll(lambda: warden.status()["door"]["queued"] == 3)  # type: ignore[index]
    started = time.monotonic()
    warden.proc.send_signal(signal.SIGTERM)
    for thread, _ in queued:
        thread.join(5)
    assert time.monotonic() - started < 1.0, "the queued were answered at the drain's start"
    for _, result in queued:
        answer = result[0]
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    first.join(10)
    assert isinstance(first_result[0], httpx.Response) and first_result[0].status_code == 200
    assert warden.wait_exit() == 0
    assert not {"q0", "q1", "q2"} & {e["tag"] for e in events(door_app)}


@pytest.mark.parametrize(
    ("options", "path", "source"),
    [
        (["--app-profile", "triton"], "/v2/health/ready", "profile triton"),
        (["--app-profile", "sglang"], "/health_generate", "profile sglang"),
        (["--app-profile", "triton", "--health-path", "/health"], "/health", "option"),
    ],
)
def test_a_profiles_health_path_is_used_and_an_explicit_option_overrides_it(
    runwarden: Callable[..., Runwarden], door_app: AppServer, options: list[str], path: str,
    source: str,
) -> None:  # fmt: skip
    warden = runwarden(door_app.url, *options, wait_ready=True)
    assert {e["path"] for e in events(door_app) if e["kind"] == "check"} == {path}
    status = warden.status()
    assert status["settings"]["health_path"] == path  # type: ignore[index]
    assert status["setting_sources"]["health_path"] == source  # type: ignore[index]
    assert status["setting_sources"]["app_profile"] == "option"  # type: ignore[index]
    if "sglang" in options:
        assert status["settings"]["exclusive_checks"] is True  # type: ignore[index]


def test_Q5_the_doors_metrics_and_status_exist(
    runwarden: Callable[..., Runwarden], door_app: AppServer
) -> None:
    warden = runwarden(door_app.url, "--max-concurrency", "3", wait_ready=True)
    assert get(warden, "/work").status_code == 200
    metrics = warden.metrics()
    for name in (
        "runwarden_requests_in_flight",
        "runwarden_requests_at_app",
        "runwarden_queue_depth",
        "runwarden_max_concurrency",
        "runwarden_queue_wait_seconds_count",
        'runwarden_requests_refused_total{reason="queue_full"}',
        'runwarden_requests_refused_total{reason="queue_timeout"}',
        'runwarden_requests_refused_total{reason="draining"}',
    ):
        assert name in metrics, name
    door = warden.status()["door"]
    assert door == {
        "at_app": 0,
        "max_concurrency": 3,
        "queued": 0,
        "max_queue": 12,
        "queue_timeout_seconds": 30.0,
        "check_running_alone": False,
        "closed": False,
        "admitted": 1,
        "refused": {"queue_full": 0, "queue_timeout": 0, "draining": 0},
    }
