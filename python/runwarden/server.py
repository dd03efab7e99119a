"""runwarden's HTTP/1.1 server, for the proxy port and the admin port (SPEC S6, D6).

Chosen over uvicorn and granian by measurement (benches/RESULTS.md, "The server on the
proxy port"): it passes every item of the front-door list where they do not, and it is the
fastest of the three in front of the app. `http1.Connection` handles one client's bytes;
this module handles the connections as a whole:

- a cap on open connections, below the fd limit with room for the app pool and the
  checks (S6). At the cap, the connection that has waited longest without a request
  (idle, or still sending its head) is closed to make room; one that is being answered
  never is, so no number of silent or slow clients keeps a real request out;
- draining (D6): once draining, every response carries `Connection: close`; at the end the
  listener stops, connections the kernel had already accepted are taken and answered,
  idle ones linger briefly for a request already on its way, and `close` returns when
  every client connection is closed or its deadline passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from runwarden.http1 import Connection, Handler, Request, status_line

MAX_HEAD_BYTES = 64 * 1024
"""Request line plus headers larger than this get 431 (nginx allows 32 KiB, Node 16 KiB)."""
LINGER_SECONDS = 0.25
"""While closing, how long an idle connection waits for a request already on its way."""
MIN_TICK_SECONDS = 0.02
MAX_TICK_SECONDS = 1.0
"""The sweep that times connections out runs every quarter of the shortest timeout, within
these bounds: a timeout fires at most that much late."""
RESERVED_FDS = 256
"""File descriptors kept out of the connection cap: the app pool's idle connections (128),
the admin port's connections, the core's checks, NVML, logs and the supervisor."""


@dataclass(frozen=True)
class Limits:
    """What one client connection may take (S6)."""

    max_head_bytes: int = MAX_HEAD_BYTES
    header_timeout_seconds: float = 10.0
    """From accept, or from the first byte after a response, to a complete head."""
    keep_alive_seconds: float = 75.0
    """Idle time allowed between requests."""
    max_connections: int = 1024


def fd_limit() -> int:
    """Raise the soft fd limit to the hard one (as Go does) and return it. The supervised
    app is started with the original soft limit (`original_fd_limit`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    global _ORIGINAL_SOFT
    if _ORIGINAL_SOFT is None:
        _ORIGINAL_SOFT = soft
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


_ORIGINAL_SOFT: int | None = None


def original_fd_limit() -> int | None:
    """The soft fd limit runwarden was started with, before `fd_limit` raised it."""
    return _ORIGINAL_SOFT


def max_proxy_connections(fds: int) -> int:
    """Client connections the proxy port can hold: each being answered holds one app
    connection too, so half of what is left once the reserve is set aside (S6)."""
    return max(1, (fds - RESERVED_FDS) // 2)


class Server:
    """Accepts connections on one address and runs `handler` for each request."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        *,
        on_refused: Callable[[int], None] | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        self.draining = False
        """Responses from now on end their connection (D6)."""
        self.closing = False
        self._waiting: dict[Connection, None] = {}  # no request in hand, longest first
        self._listener: asyncio.Server | None = None
        self._on_refused = on_refused
        self._empty = asyncio.Event()
        self._accepting: list[asyncio.Task[object]] = []
        self._tick = min(max(min(limits.header_timeout_seconds, limits.keep_alive_seconds) / 4,
                             MIN_TICK_SECONDS), MAX_TICK_SECONDS)  # fmt: skip
        self._sweep: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int) -> None:
        """Bind and listen; OSError if the address cannot be had."""
        self._listener = await self.loop.create_server(
            lambda: Connection(self), host, port, backlog=1024, reuse_address=True
        )

    # -- what connections report

    def opened(self, connection: Connection) -> None:
        self.connections.add(connection)
        if len(self.connections) > self.limits.max_connections:
            # S6: make room by closing the connection that has waited longest without a
            # request; if every one is being answered, this one is told to come back.
            victim = next(iter(self._waiting), None)
            if victim is None:
                _refuse_full(connection)
                self.refused(503)
                return
            victim.close()
        self._waiting[connection] = None

    def busy(self, connection: Connection) -> None:
        self._waiting.pop(connection, None)

    def waiting(self, connection: Connection) -> None:
        self._waiting.pop(connection, None)
        self._waiting[connection] = None

    def closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self._waiting.pop(connection, None)
        if self.closing and not self.connections:
            self._empty.set()

    def refused(self, status: int) -> None:
        if self._on_refused is not None:
            self._on_refused(status)

    def sweep_within(self, seconds: float) -> None:
        """A connection armed a deadline `seconds` away: sweep often enough to meet it
        within a quarter of that (S6)."""
        tick = max(seconds / 4, MIN_TICK_SECONDS)
        if tick < self._tick:
            self._tick = tick
            if self._sweep is not None:
                self._sweep.cancel()
                self._sweep = None
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._tick, self._swept)

    def _swept(self) -> None:
        self._sweep = None
        now = time.monotonic()
        armed = False
        for connection in list(self.connections):
            deadline = connection.deadline
            if deadline:
                if deadline <= now:
                    connection.timed_out()
                armed = armed or bool(connection.deadline)
        if armed:
            self._sweep = self.loop.call_later(self._tick, self._swept)

    def idle_seconds(self) -> float:
        return LINGER_SECONDS if self.closing else self.limits.keep_alive_seconds

    # -- draining and closing

    def drain(self) -> None:
        """D6: every response from now on carries `Connection: close`."""
        self.draining = True

    def resume(self) -> None:
        """K2: the runner starts over; responses keep their connections again."""
        self.draining = False

    async def close(self, deadline: float) -> int:
        """Stop listening, answer what had already arrived, and wait until every client
        connection is closed or the loop's clock passes `deadline`; then close the rest.
        Returns how many had to be closed at the deadline."""
        self.draining = self.closing = True
        self._stop_listening()
        if self._accepting:
            await asyncio.gather(*self._accepting, return_exceptions=True)
        for connection in list(self.connections):
            connection.linger(LINGER_SECONDS)
        while self.connections and self.loop.time() < deadline:
            self._empty.clear()
            try:
                await asyncio.wait_for(self._empty.wait(), deadline - self.loop.time())
            except asyncio.TimeoutError:
                break
        left = list(self.connections)
        for connection in left:
            connection.close()
        return len(left)

    def _stop_listening(self) -> None:
        """Close the listener without resetting connections the kernel accepted already:
        a duplicate of the listening socket keeps them, they are taken and answered, and
        only then is the socket closed (a client's request in the backlog is not lost)."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        held: list[socket.socket] = []
        for sock in listener.sockets:
            with contextlib.suppress(OSError):
                held.append(socket.socket(fileno=os.dup(sock.fileno())))
        listener.close()
        for sock in held:
            with sock:
                sock.setblocking(False)
                while True:
                    try:
                        accepted, _ = sock.accept()
                    except OSError:  # BlockingIOError: none left
                        break
                    self._accepting.append(
                        self.loop.create_task(
                            self.loop.connect_accepted_socket(lambda: Connection(self), accepted)
                        )
                    )

    def active_requests(self) -> list[Request]:
        """The requests being handled now."""
        return [c.active for c in self.connections if c.active is not None]

    def abort(self) -> None:
        """Close every connection now."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._stop_listening()
        for connection in list(self.connections):
            connection.close()


def _refuse_full(connection: Connection) -> None:
    body = b"runwarden is at its connection limit; retry\n"
    connection.write(
        status_line(503) + b"content-type: text/plain; charset=utf-8\r\nretry-after: 1\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )
    connection.close()
