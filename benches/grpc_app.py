"""The gRPC app of the protocols section: grpcio's asyncio server over HTTP/2 in cleartext
(h2c), a unary echo registered as a generic handler with identity serializers (raw bytes in
and out, no generated code), and the standard health service for runwarden's gRPC checks.

    python -m benches.grpc_app PORT

Method `/bench.Echo/Echo`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

METHOD = "/bench.Echo/Echo"


async def echo(request: bytes, context: Any) -> bytes:
    return request


async def main() -> None:
    server = grpc.aio.server()
    # No serializers: the handler gets and returns the message's bytes as they are.
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    checks = health.aio.HealthServicer()
    await checks.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
