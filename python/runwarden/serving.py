"""uvicorn servers for the proxy and admin ports, run on runwarden's own event loop.

Two adjustments to uvicorn: the runner, not uvicorn, owns SIGTERM/SIGINT (a signal
starts a drain, it does not stop the listeners), and the httptools protocol bounds the
request line plus headers (S3), which llhttp alone does not: an oversized head gets 431
and closes the connection before anything reaches the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Generator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024
"""Request line plus headers larger than this get 431 (nginx allows 32 KiB, Node 16 KiB)."""


class _HeadTooLarge(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on the request head."""

    _head_bytes = 0
    _head_too_large = False

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            self._head_too_large = True
            # httptools turns a callback's exception into HttpParserCallbackError, which
            # uvicorn answers (send_400_response below) and closes the connection.
            raise _HeadTooLarge

    def send_400_response(self, msg: str) -> None:
        if not self._head_too_large:
            super().send_400_response(msg)
            return
        body = b"Request header fields too large"
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


class Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the runner, and stops at once.

    uvicorn looks at `should_exit` on a 0.1 s tick and pauses 0.1 s more while shutting
    down. runwarden stops its ports only after its own drain, when no request is left to
    wait for, so both waits would only delay the exit that tells the orchestrator to start
    a fresh runner: here a stop wakes the main loop at once, and shutdown waits only for
    what is still open (bounded by `timeout_graceful_shutdown`).
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._exiting = False
        self._nap: asyncio.Future[None] | None = None
        super().__init__(config)

    @property
    def should_exit(self) -> bool:
        return self._exiting

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exiting = value
        if value and self._nap is not None and not self._nap.done():
            self._nap.set_result(None)  # wake the main loop now, not at its next tick

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def main_loop(self) -> None:
        # uvicorn's tick does once-a-second work (the Date header) and looks at
        # should_exit, which wakes this loop itself: one tick a second is enough, and
        # keeps an idle runner's CPU down. on_tick does its per-second work when
        # counter % 10 == 0.
        loop = asyncio.get_running_loop()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000
            self._nap = loop.create_future()
            timer = loop.call_later(1.0, _wake, self._nap)
            try:
                await self._nap
            finally:
                timer.cancel()
                self._nap = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle keep-alive connections close now
        deadline = time.monotonic() + (self.config.timeout_graceful_shutdown or 0)
        state = self.server_state
        # uvicorn signals no event when its last connection closes: look every 5 ms.
        while (state.connections or state.tasks) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        for task in state.tasks:
            task.cancel(msg="runwarden is exiting")
        for server in self.servers:
            await server.wait_closed()


def make_server(app: Any, host: str, port: int, *, proxy: bool, log_level: str) -> Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=BoundedHttpToolsProtocol if proxy else "httptools",
        loop="none",  # runwarden's loop (uvloop) is already running
        ws="none",
        lifespan="off",
        interface="asgi3",
        log_config=None,
        # uvicorn's start-up lines repeat ours; keep its warnings and errors.
        log_level="debug" if log_level.upper() == "DEBUG" else "warning",
        access_log=False,
        # S4: the proxy answers with the app's Server and Date (or its own when missing).
        server_header=not proxy,
        date_header=not proxy,
        proxy_headers=False,
        timeout_graceful_shutdown=1,
        timeout_keep_alive=75,  # longer than common gateways' idle timeouts (60 s)
    )
    return Server(config)


def _wake(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)
