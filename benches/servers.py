"""Section 7: the server on the proxy port, chosen by measurement (issue 9).

The candidates run the same forwarding in front of `benches.app`: a minimal ASGI proxy over
runwarden's own upstream client (`runwarden.upstream.HttpUpstream`), served by uvicorn
(httptools, uvloop, configured with every limit its public options offer) or by granian
(embedded on the same uvloop loop, with its HTTP/1 header-read timeout and buffer limit),
against runwarden itself (its own server, `runwarden.server`) and nginx. Each is judged on
the front-door list (`benches.front_door`) and on the proxy benchmark, in one run. The
candidates carry none of runwarden's checks, drain or accounting, so their speed is an
upper bound for what runwarden would reach on them.

A fifth row, `pipe`, is the floor of any proxy written in Python on uvloop: bytes copied
between a client connection and an app connection of its own, no HTTP at all. It is not a
candidate (it fails every item); it shows how much of the proxy's cost is Python's own.

    python -m benches.servers uvicorn|granian|pipe APP_PORT PORT HEADER_TIMEOUT_SECONDS
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from benches.common import PYTHON, Profile, free_port, log, median, running, wait_http
from benches.front_door import probe_all
from benches.tools import nginx, wrk

CANDIDATES = ("uvicorn", "granian", "pipe")
CONCURRENCY = (1, 16, 64)
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
     b"proxy-connection", b"proxy-authorization", b"proxy-authenticate"}
)  # fmt: skip


def asgi_proxy(app_url: str) -> Any:
    """The forwarding every candidate serves: ASGI in, runwarden's upstream client out."""
    from runwarden.upstream import HttpUpstream

    upstream = HttpUpstream(app_url)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = [(n, v) for n, v in scope["headers"] if n not in HOP_BY_HOP]
        chunked = any(n == b"transfer-encoding" for n, _ in scope["headers"])
        has_body = chunked or any(n == b"content-length" and v != b"0" for n, v in headers)

        async def body() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ConnectionResetError("the client left")
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body"):
                    return

        target = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        try:
            response = await upstream.request(
                scope["method"], target, headers, body() if has_body else None, chunked
            )
        except OSError:
            await send({"type": "http.response.start", "status": 502, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        try:
            out = [(n.lower(), v) for n, v in response.raw_headers if n.lower() not in HOP_BY_HOP]
            await send({"type": "http.response.start", "status": response.status, "headers": out})
            while True:
                chunk = await response.read()
                last = not chunk or response.finished
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                if last:
                    break
        finally:
            response.close()

    return app


class _Pipe(asyncio.Protocol):
    """One side of the floor's byte pipe: what it reads, the other side writes."""

    def __init__(self, peer: _Pipe | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []
        self.connecting: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def _pipe(app_port: int, port: int) -> None:
    loop = asyncio.get_running_loop()

    def client() -> _Pipe:
        side = _Pipe()

        async def connect() -> None:
            _, app = await loop.create_connection(lambda: _Pipe(side), "127.0.0.1", app_port)
            side.peer = app
            assert app.transport is not None
            for data in side.early:
                app.transport.write(data)

        side.connecting = loop.create_task(connect())
        return side

    server = await loop.create_server(client, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


async def _serve(candidate: str, app_port: int, port: int, header_timeout: float) -> None:
    if candidate == "pipe":
        await _pipe(app_port, port)
        return
    app = asgi_proxy(f"http://127.0.0.1:{app_port}")
    if candidate == "uvicorn":
        import uvicorn

        config = uvicorn.Config(
            app, host="127.0.0.1", port=port, http="httptools", loop="none", ws="none",
            lifespan="off", log_level="warning", access_log=False,
            timeout_keep_alive=int(header_timeout) or 1,  # its only idle timeout
            limit_concurrency=1000,
        )  # fmt: skip
        await uvicorn.Server(config).serve()
    else:
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.server.embed import Server

        server = Server(
            app, address="127.0.0.1", port=port, interface=Interfaces.ASGI,
            http=HTTPModes.http1, websockets=False, log_enabled=False, backlog=1024,
            http1_settings=HTTP1Settings(
                header_read_timeout=int(header_timeout * 1000), max_buffer_size=64 * 1024
            ),
        )  # fmt: skip
        await server.serve()


def main() -> None:
    import uvloop

    candidate, app_port, port, header_timeout = sys.argv[1:5]
    assert candidate in CANDIDATES, candidate
    uvloop.run(_serve(candidate, int(app_port), int(port), float(header_timeout)))


@contextlib.contextmanager
def _targets(profile: Profile, tmp: Path, header_timeout: float) -> Iterator[dict[str, int]]:
    app_port = free_port()
    with contextlib.ExitStack() as stack:
        stack.enter_context(running([PYTHON, "-m", "benches.app", str(app_port)], port=app_port))
        where = {"direct": app_port}
        where["nginx"] = stack.enter_context(
            nginx(app_port, tmp / "nginx-servers", header_timeout=header_timeout)
        )
        port, admin = free_port(), free_port()
        args = [
            PYTHON, "-m", "runwarden", "serve", "--app-url", f"http://127.0.0.1:{app_port}",
            "--host", "127.0.0.1", "--port", str(port), "--admin-host", "127.0.0.1",
            "--admin-port", str(admin),
            "--log-level", "warning", "--no-gpu-monitoring",
            "--header-timeout-seconds", str(header_timeout),
        ]  # fmt: skip
        proc = stack.enter_context(running(args, port=port, log_to=tmp / "servers-rw.log"))
        wait_http(f"http://127.0.0.1:{port}/json", proc)
        where["runwarden"] = port
        for candidate in CANDIDATES:
            port = free_port()
            args = [PYTHON, "-m", "benches.servers", candidate, str(app_port), str(port),
                    str(header_timeout)]  # fmt: skip
            log_to = tmp / f"servers-{candidate}.log"
            proc = stack.enter_context(running(args, port=port, log_to=log_to))
            wait_http(f"http://127.0.0.1:{port}/json", proc)
            where[candidate] = port
        where["_app"] = app_port
        yield where


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    header_timeout = 1.0 if profile.smoke else 3.0
    with _targets(profile, tmp, header_timeout) as where:
        app_port = where.pop("_app")
        speed: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_ in range(profile.wrk_rounds):
            for c in CONCURRENCY:
                for name, port in where.items():
                    result = wrk(f"http://127.0.0.1:{port}/json", c, profile.wrk_seconds)
                    speed.setdefault((name, c), []).append(result)
                    log(f"servers round {round_ + 1} c={c} {name}: {result['rps']:.0f} req/s, "
                        f"p50 {result['p50_ms']:.3f} ms")  # fmt: skip
        list_results = {}
        for name, port in where.items():
            if name not in ("direct", "pipe"):
                log(f"servers: the front-door list against {name}")
                list_results[name] = probe_all(port, app_port, header_timeout)
    table: dict[str, Any] = {}
    for (name, c), results in speed.items():
        table.setdefault(name, {})[c] = {k: median([r[k] for r in results]) for k in results[0]}
    return {"speed": table, "front_door": list_results, "header_timeout": header_timeout}


if __name__ == "__main__":
    main()
