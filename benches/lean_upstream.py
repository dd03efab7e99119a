"""A prototype upstream client for the proxy: asyncio protocols and httptools' response
parser over a keep-alive pool, shaped like `runwarden.upstream.AiohttpUpstream`.

It exists to price aiohttp's per-request overhead, which the profile of section 3 shows to be
most of the proxy's cost: the runner measures the proxy with it beside the real one. It is
not the proxy's client; what it lacks for that is listed in RESULTS.md.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 1 << 20
"""Bytes of response body buffered before the socket stops being read (S1: memory flat)."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reusable = False
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[int] | None = None
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.done = False
        self.error: BaseException | None = None
        self.wake: asyncio.Future[None] | None = None
        self.writable: asyncio.Future[None] | None = None
        self.paused = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"bad response from the app: {exc}"))
            return
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        self._fail(ConnectionResetError("the app closed the connection"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("the app closed the connection"))

    def pause_writing(self) -> None:
        self.writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.writable is not None and not self.writable.done():
            self.writable.set_result(None)
        self.writable = None

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_result(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        self.done = True
        self.reusable = self.parser.should_keep_alive()
        self._wake()

    # --
    def _wake(self) -> None:
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        self.reusable = False
        if self.done:
            return
        self.error = exc
        if self.head is not None and not self.head.done():
            self.head.set_exception(exc)
        self._wake()

    def start(self) -> asyncio.Future[int]:
        self.headers = []
        self.body.clear()
        self.buffered = 0
        self.done = self.reusable = False
        self.error = None
        self.head = asyncio.get_running_loop().create_future()
        return self.head

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self.body:
                chunk = self.body.popleft()
                self.buffered -= len(chunk)
                if self.paused and self.buffered <= HIGH_WATER // 2 and self.transport:
                    self.paused = False
                    self.transport.resume_reading()
                yield chunk
                continue
            if self.done:
                return
            if self.error is not None:
                raise self.error
            self.wake = asyncio.get_running_loop().create_future()
            await self.wake

    async def drain(self) -> None:
        if self.writable is not None:
            await self.writable
        if self.error is not None:
            raise self.error


class _Response:
    __slots__ = ("_conn", "_pool", "raw_headers", "status")

    def __init__(self, conn: _Connection, pool: deque[_Connection], status: int) -> None:
        self._conn = conn
        self._pool = pool
        self.status = status
        self.raw_headers = conn.headers

    def chunks(self) -> AsyncIterator[bytes]:
        return self._conn.chunks()

    async def aclose(self) -> None:
        conn = self._conn
        if conn.done and conn.reusable and not conn.closed and not conn.body:
            self._pool.append(conn)
        elif conn.transport is not None:
            conn.closed = True
            conn.transport.close()


class LeanUpstream:
    """Requests to one app over a keep-alive pool of asyncio connections."""

    def __init__(self, app_url: str, connect_timeout_seconds: float = 5.0) -> None:
        parts = urlsplit(app_url)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout = connect_timeout_seconds
        self._idle: deque[_Connection] = deque()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, self._host, self._port), self._connect_timeout
        )
        return conn

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: AsyncIterable[bytes] | None,
    ) -> _Response:
        lines = [f"{method} {self._prefix}{target} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in headers]
        framed = any(name.lower() == "content-length" for name, _ in headers)
        chunked = body is not None and not framed
        if chunked:
            lines.append("transfer-encoding: chunked")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        # A pooled connection the app closed meanwhile fails before any answer: retry once
        # on a fresh one when nothing of a body was sent yet.
        for attempt in range(2):
            conn = self._idle.pop() if self._idle and attempt == 0 else await self._connect()
            if conn.closed:
                conn = await self._connect()
            status_future = conn.start()
            try:
                assert conn.transport is not None
                conn.transport.write(head)
                if body is not None:
                    await self._send_body(conn, body, chunked)
                status = await status_future
                if method == "HEAD":  # no body follows, whatever content-length says
                    conn.done, conn.reusable = True, False
                return _Response(conn, self._idle, status)
            except ConnectionResetError:
                if conn.transport is not None:
                    conn.transport.close()
                if attempt == 1 or body is not None:
                    raise
            except BaseException:
                if conn.transport is not None:
                    conn.transport.close()
                raise
        raise AssertionError("unreachable")

    async def _send_body(
        self, conn: _Connection, body: AsyncIterable[bytes], chunked: bool
    ) -> None:
        assert conn.transport is not None
        async for chunk in body:
            if not chunk:
                continue
            if chunked:
                conn.transport.writelines([b"%x\r\n" % len(chunk), chunk, b"\r\n"])
            else:
                conn.transport.write(chunk)
            await conn.drain()
        if chunked:
            conn.transport.write(b"0\r\n\r\n")

    async def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None:
                conn.transport.close()


def main() -> None:
    """`python -m benches.lean_upstream serve ...`: `runwarden serve` with this client."""
    import sys

    from runwarden import runner
    from runwarden.cli import run_cli

    runner.AiohttpUpstream = LeanUpstream  # type: ignore[assignment, misc]
    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
