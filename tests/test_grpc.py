"""gRPC through the proxy (SPEC P1, R1, H): end to end over HTTP/2 to an h2c app
(`--app-protocol h2c`), statuses, details and trailers unchanged, the deadline and the
cancellation passed on, gRPC's UNAVAILABLE judged as a 503, and checks over the standard
gRPC health protocol (`--check-protocol grpc`). The app is tests/grpc_app.py (grpcio)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from conftest import AppServer, Runwarden, poll, serving
from runwarden import exit_codes

GRPC = ("--app-protocol", "h2c", "--check-protocol", "grpc")


@pytest.fixture
def grpc_app() -> Iterator[AppServer]:
    yield from serving("grpc_app.py")


def _call(target: str, method: str, request: bytes = b"", timeout: float = 5) -> bytes:
    with grpc.insecure_channel(target) as channel:
        rpc = channel.unary_unary(f"/test.App/{method}")
        return rpc(request, timeout=timeout)  # type: ignore[no-any-return]


def _state(app: AppServer) -> dict[str, int]:
    return dict(json.loads(_call(f"127.0.0.1:{app.port}", "State")))


def _serve(runwarden: Callable[..., Runwarden], app: AppServer, *options: str) -> Runwarden:
    return runwarden(app.url, *GRPC, *options, wait_ready=True)  # type: ignore[no-any-return]


def test_P1_a_grpc_unary_call_reaches_an_h2c_app_end_to_end(grpc_app: AppServer, runwarden):
    rw = _serve(runwarden, grpc_app)
    target = f"127.0.0.1:{rw.port}"
    for i in range(20):
        payload = b"tensor " + bytes([i]) * (i * 1000)
        assert _call(target, "Echo", payload) == payload
    assert _state(grpc_app)["calls"] == 20
    checks = rw.status()["checks"]
    assert checks and checks[-1]["passed"], checks  # type: ignore[index]


def test_P1_a_grpc_error_status_details_and_trailers_arrive_unchanged(
    grpc_app: AppServer, runwarden
):
    """P1: trailers are forwarded on HTTP/2: the status, its message and binary trailing
    metadata reach the client as the app sent them; INVALID_ARGUMENT replaces nothing."""
    rw = _serve(runwarden, grpc_app)
    with pytest.raises(grpc.RpcError) as caught:
        _call(f"127.0.0.1:{rw.port}", "Fail", b"shape (3, 4)")
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert error.details() == "bad input: shape (3, 4)"  # type: ignore[attr-defined]
    trailers = dict(error.trailing_metadata())  # type: ignore[attr-defined]
    assert trailers["detail-bin"] == b"\x00\x01\xff" and trailers["x-why"] == "on purpose"
    assert rw.status()["state"] == "ready"


def test_P1_the_deadline_and_the_cancellation_pass_through(grpc_app: AppServer, runwarden):
    """P1: a client's deadline (grpc-timeout) reaches the app, and when it passes the call
    ends at the client at once and is cancelled at the app."""
    rw = _serve(runwarden, grpc_app)
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        _call(f"127.0.0.1:{rw.port}", "Slow", timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert time.monotonic() - began < 2
    poll(lambda: _state(grpc_app)["cancelled"] == 1)


def test_R1_grpc_unavailable_is_the_apps_503_and_replaces_the_runner(
    grpc_app: AppServer, runwarden
):
    """R1 on gRPC: UNAVAILABLE (14) is gRPC's 503: forwarded unchanged, then the runner is
    replaced with app_503's code; the reason says which status."""
    rw = _serve(runwarden, grpc_app)
    with pytest.raises(grpc.RpcError) as caught:
        _call(f"127.0.0.1:{rw.port}", "Unavailable")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert caught.value.details() == "the engine is gone"  # type: ignore[attr-defined]
    assert rw.wait_exit() == exit_codes.BY_REASON["app_503"]
    assert "the app answered gRPC status UNAVAILABLE (14)" in rw.log()


def test_H4_grpc_health_checks_replace_an_app_reporting_not_serving(grpc_app: AppServer, runwarden):
    """H4 over the gRPC health protocol: checks pass on SERVING; once the app reports
    NOT_SERVING, failure_threshold failures replace the runner (health_check)."""
    rw = _serve(runwarden, grpc_app)
    _call(f"127.0.0.1:{grpc_app.port}", "SetHealth", b"NOT_SERVING")
    assert rw.wait_exit() == exit_codes.BY_REASON["health_check"]
    assert "the gRPC health service says NOT_SERVING" in rw.log()
