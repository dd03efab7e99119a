"""A gRPC model server for tests, over HTTP/2 in cleartext (h2c), in its own process.

    python tests/grpc_app.py PORT

`test.App` takes and returns raw bytes (no generated code): `Echo` answers what it got;
`Fail` aborts with INVALID_ARGUMENT, a message and binary trailing metadata; `Unavailable`
aborts with UNAVAILABLE (gRPC's 503); `Slow` waits up to 5 s and counts the calls its client
cancelled (a deadline or a client that left); `State` answers the counters as JSON;
`SetHealth` sets the standard health service's status (`SERVING` / `NOT_SERVING`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

STATE: dict[str, int] = {"calls": 0, "cancelled": 0}
LOCK = threading.Lock()
HEALTH = health.HealthServicer()


def count(key: str) -> None:
    with LOCK:
        STATE[key] += 1


def echo(request: bytes, context: Any) -> bytes:
    count("calls")
    return request


def fail(request: bytes, context: Any) -> bytes:
    count("calls")
    context.set_trailing_metadata((("detail-bin", b"\x00\x01\xff"), ("x-why", "on purpose")))
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad input: " + request.decode())
    raise AssertionError("abort raises")


def unavailable(request: bytes, context: Any) -> bytes:
    count("calls")
    context.abort(grpc.StatusCode.UNAVAILABLE, "the engine is gone")
    raise AssertionError("abort raises")


def slow(request: bytes, context: Any) -> bytes:
    count("calls")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not context.is_active():
            count("cancelled")
            return b""
        time.sleep(0.01)
    return b"slept"


def state(request: bytes, context: Any) -> bytes:
    with LOCK:
        return json.dumps(STATE).encode()


def set_health(request: bytes, context: Any) -> bytes:
    status = health_pb2.HealthCheckResponse.ServingStatus.Value(request.decode())
    HEALTH.set("", status)
    return b"ok"


def main() -> None:
    port = int(sys.argv[1])
    unary = grpc.unary_unary_rpc_method_handler
    handler = grpc.method_handlers_generic_handler(
        "test.App",
        {
            "Echo": unary(echo),
            "Fail": unary(fail),
            "Unavailable": unary(unavailable),
            "Slow": unary(slow),
            "State": unary(state),
            "SetHealth": unary(set_health),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((handler,))
    HEALTH.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(HEALTH, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
