"""The client the proxy forwards through: HTTP/1.1 over a keep-alive pool of asyncio
connections to the one app, parsed by httptools (llhttp), the parser uvicorn serves with.

Chosen by measurement over aiohttp and httpx (benches/RESULTS.md, section 3): a general
client spends most of the proxy's time per request on what a proxy to one fixed app does
not need. This one writes the request head as given (S4: no header of its own but Host
when the client sent none, values byte for byte), the address fixed at construction (S2),
and streams both bodies with back-pressure (S1):

- the request body is written by its own task while the answer is awaited, so an app that
  answers early (a 413 while the upload runs) is heard, and the rest is not sent;
- the response body is read up to `HIGH_WATER` bytes ahead of the proxy, then the socket
  is no longer read until the proxy catches up.

A connection goes back to the pool only after an exchange that ended cleanly on both
sides with keep-alive; idle ones are dropped after `IDLE_SECONDS`, before uvicorn's own
5 s keep-alive closes them from the app's side. A request without a body that finds its
pooled connection already closed by the app (before a byte of answer) is retried once on
a new connection when its method is idempotent (RFC 9110 9.2.2); every other failure is
the caller's to answer (R3).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 1 << 20
"""Response body bytes buffered ahead of the proxy before the socket stops being read."""
MAX_HEAD_BYTES = 64 * 1024
"""A response head (status line and headers) larger than this breaks the exchange."""
IDLE_SECONDS = 4.0
"""An idle pooled connection older than this is closed instead of reused."""
MAX_IDLE = 128
"""Idle connections kept; more are closed as their exchanges end."""
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class UpstreamBroken(ConnectionError):
    """The exchange broke: the app closed early or answered something that is not HTTP, or
    a body did not match the length its head announced (the connection is never reused)."""


def _framing(declared: int, sent: int) -> str:
    return f"the request body was {sent} bytes, not the {declared} its Content-Length said"


# What "the app could not be reached or broke the exchange" raises (R3). In Python 3.10
# asyncio.TimeoutError is not yet an OSError.
UpstreamError: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)


class UpstreamResponse(Protocol):
    on_whole: Callable[[Any], None] | None
    """Called once, as the bytes arrive, when the whole answer is in (None: not wanted)."""

    @property
    def status(self) -> int: ...

    @property
    def raw_headers(self) -> Sequence[tuple[bytes, bytes]]: ...

    @property
    def finished(self) -> bool:
        """The whole body has been returned by `read()`."""

    async def read(self) -> bytes:
        """The next piece of the body as it arrived; b"" at its end."""

    def close(self) -> None:
        """Done with the response: its connection goes back to the pool or is closed."""


class Upstream(Protocol):
    """What the proxy forwards through: `HttpUpstream`, or another client in benches."""

    def start(
        self,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
        chunked: bool,
    ) -> Any: ...

    async def response(
        self,
        exchange: Any,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
        chunked: bool,
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


class _Stale(ConnectionError):
    """A pooled connection the app had closed: no byte of an answer came back."""


class _Exchange:
    """One request and its response on a connection; the httptools parser's callbacks
    land here, and the proxy reads the response through it."""

    __slots__ = (
        "_body",
        "_buffered",
        "_connection",
        "_error",
        "_head_bytes",
        "_head_in",
        "_head_only",
        "_informational",
        "_parser",
        "_reader",
        "_received",
        "_sender",
        "_sent_all",
        "_unparsed",
        "_waiter",
        "closed",
        "complete",
        "on_other",
        "on_whole",
        "owner",
        "raw_headers",
        "reusable",
        "reused",
        "status",
    )

    def __init__(self, connection: _Connection, head_only: bool, reused: bool) -> None:
        self._connection = connection
        self.reused = reused
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._head_in = False  # the response's head has arrived (or the exchange failed)
        self._waiter: asyncio.Future[None] | None = None  # only while someone awaits it
        self._head_only = head_only
        self._head_bytes = 0
        self._unparsed = 0
        self._informational = False
        self._received = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._reader: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._sender: asyncio.Task[None] | None = None
        self._sent_all = False
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.complete = False
        self.reusable = False
        self.closed = False
        self.on_whole: Callable[[_Exchange], None] | None = None
        """Called once, as the bytes arrive, when the head and the whole body are in: the
        caller can answer its client in that same loop turn..."""
        self.owner: Any = None  # what the caller keeps with the exchange, for its callbacks
        self.on_other: Callable[[_Exchange], None] | None = None
        """...or, instead, when anything else happens first: a head whose body is still on
        its way, or a failure. Then the caller waits for the rest (`head`, `read`)."""

    # -- bytes from the connection

    def feed(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:  # bytes after the response: the connection cannot be trusted
            self.reusable = False
            self._connection.close()
            return
        self._received = True
        pending = not self._head_in
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(UpstreamBroken("the app switched protocols, which was not asked for"))
            return
        except httptools.HttpParserError as exc:
            self.fail(UpstreamBroken(f"the app's response is not valid HTTP/1.1: {exc}"))
            return
        if pending and not self._head_in:
            # httptools holds a header until it ends: bound what it holds (S1).
            self._unparsed += len(data)
            if self._unparsed > MAX_HEAD_BYTES:
                self._too_large()
        elif self.complete:
            self._parser = None
        elif self._buffered > HIGH_WATER:
            self._connection.pause_reading()
        if self.on_whole is not None:
            self._notify()

    def lost(self, exc: BaseException | None) -> None:
        """The connection closed: the end of a body delimited by the close, or a failure."""
        self.reusable = False
        if self.complete:
            return
        if self._head_in and self._error is None and self._ends_at_close():
            self._finish()
            self.reusable = False
            self._notify()
        elif not self._received:
            self.fail(_Stale("the app closed the connection before answering"))
        else:
            message = "the app closed the connection before its response ended"
            self.fail(UpstreamBroken(f"{message}: {exc}" if exc else message))

    def _notify(self) -> None:
        """`on_whole` if the answer is whole, `on_other` if something else happened."""
        if self.complete:
            callback = self.on_whole
        elif self._head_in:
            callback = self.on_other
        else:
            return
        self.on_whole = self.on_other = None
        if callback is not None:
            callback(self)

    def _ends_at_close(self) -> bool:
        """RFC 9112 6.3: a response with neither Content-Length nor chunked coding ends
        when the connection closes."""
        for name, value in self.raw_headers:
            lowered = name.lower()
            if lowered == b"content-length" or (
                lowered == b"transfer-encoding" and b"chunked" in value.lower()
            ):
                return False
        return True

    def fail(self, exc: BaseException) -> None:
        self.reusable = False
        if self.complete or self._error is not None:
            return
        self._error = exc
        self._parser = None
        self._head_arrived()
        self._wake()
        self._connection.close()
        self._notify()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        if self.complete:  # a second response nobody asked for
            self.reusable = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_in:
            self.raw_headers.append((name, value))
            self._head_bytes += len(name) + len(value)

    def on_headers_complete(self) -> None:
        if self._head_in:
            return  # a second response nobody asked for (see on_message_begin)
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # 103 Early Hints and the like: uvicorn cannot forward them; the final answer
            # follows on the same connection.
            self.raw_headers.clear()
            self._head_bytes = 0
            self._informational = True
            return
        if self._head_bytes > MAX_HEAD_BYTES:
            self._too_large()
            return
        self.status = status
        self._head_arrived()
        if self._head_only:  # HEAD: no body follows, whatever the headers announce
            self._finish()

    def _head_arrived(self) -> None:
        self._head_in = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _too_large(self) -> None:
        self.fail(UpstreamBroken(f"the app's response head exceeds {MAX_HEAD_BYTES} bytes"))

    def on_body(self, body: bytes) -> None:
        if self.complete:
            return
        self._body.append(body)
        self._buffered += len(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            return
        if not self.complete:
            self._finish()

    def _finish(self) -> None:
        assert self._parser is not None
        self.complete = True
        self.reusable = self._parser.should_keep_alive()
        self._wake()

    def _wake(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    # -- the request

    def write(self, head: bytes, body: AsyncIterable[bytes] | None, length: int | None) -> None:
        """Write the request head now; a body is written by its own task. `length` is the
        body's Content-Length; None: chunked (or no body)."""
        connection = self._connection
        if connection.closed:  # closed between its connect (or pooling) and this request
            raise _Stale("the app closed the connection before the request was sent")
        connection.write(head)
        if body is not None:
            self._sender = connection.loop.create_task(self._send_body(body, length))
            self._sender.add_done_callback(self._body_sent)

    async def head(self) -> None:
        """Wait for the response's head; the exchange's failure if it failed first."""
        if not self._head_in:
            self._waiter = self._connection.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error

    async def _send_body(self, body: AsyncIterable[bytes], length: int | None) -> None:
        connection = self._connection
        sent = 0
        async for chunk in body:
            if self.complete or self._error is not None:
                return  # answered (or broken) already: the rest is not wanted
            if chunk:
                sent += len(chunk)
                if length is None:
                    connection.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                elif sent > length:
                    raise UpstreamBroken(_framing(length, sent))
                else:
                    connection.write(chunk)
                await connection.drained()
        if length is None:
            connection.write(b"0\r\n\r\n")
        elif sent != length:
            # S5: the app would read the next request as the rest of this body.
            raise UpstreamBroken(_framing(length, sent))
        self._sent_all = True

    def _body_sent(self, sender: asyncio.Task[None]) -> None:
        if sender.cancelled():
            return
        exc = sender.exception()
        if exc is None:
            return
        if isinstance(exc, OSError) and not isinstance(exc, UpstreamBroken) and self._head_in:
            return  # the app answered and stopped reading: its answer stands
        # The body's source failed (the client left, S3): the app must not take the
        # request as complete, so the connection is dropped and the caller told.
        self.fail(exc)

    # -- the response (UpstreamResponse)

    @property
    def finished(self) -> bool:
        return self.complete and not self._body

    def take(self) -> bytes:
        """Everything of the body that has arrived, in one piece."""
        body = self._body
        if not body:
            return b""
        chunk = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered -= len(chunk)
        if self._buffered <= HIGH_WATER // 2:
            self._connection.resume_reading()
        return chunk

    async def read(self) -> bytes:
        while True:
            if self._body:
                return self.take()  # everything that arrived, in one piece: one client write
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._reader = self._connection.loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.on_whole = self.on_other = None
        sender = self._sender
        if sender is not None and not sender.done():
            sender.cancel()
        # A body cut short (the app answered early) leaves the app mid-request: not reused.
        sent = sender is None or self._sent_all
        if self.complete and self.reusable and sent and not self._body:
            self._connection.release()
        else:
            self._connection.close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the app; at most one exchange at a time."""

    def __init__(self, pool: HttpUpstream, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None

    def begin(self, head_only: bool, reused: bool) -> _Exchange:
        self.exchange = _Exchange(self, head_only, reused)
        return self.exchange

    def release(self) -> None:
        self.exchange = None
        self.idle_since = time.monotonic()
        self.pool.idle(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("the connection to the app closed")
        self.transport.write(data)

    def writelines(self, data: tuple[bytes, ...]) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("the connection to the app closed")
        self.transport.writelines(data)

    async def drained(self) -> None:
        """Wait while the app does not read what was written (S1)."""
        while self._writable is not None and not self.closed:
            await self._writable
        if self.closed:
            raise ConnectionResetError("the connection to the app closed")

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # an idle connection the app talks on: not ours to reuse
            self.close()
            return
        self.exchange.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self.exchange is not None:
            self.exchange.lost(exc)
        else:
            self.pool.forget(self)

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None


class HttpUpstream:
    """Requests to one app over a keep-alive pool."""

    def __init__(self, app_url: str, connect_timeout_seconds: float = 5.0) -> None:
        parts = urlsplit(app_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the app URL must be http://host[:port][/prefix], got {app_url!r}")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._prefix = parts.path.rstrip("/").encode("latin-1")
        netloc = parts.netloc.rpartition("@")[2]
        self._default_host = netloc.encode("idna")
        self._connect_timeout = connect_timeout_seconds
        self._idle: deque[_Connection] = deque()

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
        chunked: bool,
    ) -> _Exchange:
        """Send `method target` with `headers` (the client's, framing excluded) and `body`,
        framed by `chunked` or by a Content-Length among `headers`; return once the
        response's head is in. `target` is only ever appended to the app's URL (S2)."""
        exchange = self.start(method, target, headers, body, chunked)
        return await self.response(exchange, method, target, headers, body, chunked)

    def start(
        self,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
        chunked: bool,
    ) -> _Exchange | None:
        """`request`'s first half, now, in this loop turn: the head written on an idle pooled
        connection. None when none is idle (`response` connects)."""
        head, length = self._head(method, target, headers, chunked)
        while (connection := self._pooled()) is not None:
            exchange = connection.begin(method == "HEAD", reused=True)
            try:
                exchange.write(head, body, None if chunked else length or 0)
            except _Stale:
                exchange.close()
                continue
            return exchange
        return None

    async def response(
        self,
        exchange: _Exchange | None,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
        chunked: bool,
    ) -> _Exchange:
        """`request`'s second half: wait for the head of the answer to `exchange` (None:
        connect and send first). A bodiless idempotent request that meets a pooled
        connection the app had just closed is sent again, once, on a new one."""
        retry = body is None and method in IDEMPOTENT
        while True:
            if exchange is None:
                head, length = self._head(method, target, headers, chunked)
                connection = await self._connect()
                exchange = connection.begin(method == "HEAD", reused=False)
                try:
                    exchange.write(head, body, None if chunked else length or 0)
                except BaseException:
                    exchange.close()
                    raise
            try:
                await exchange.head()
            except BaseException as exc:
                exchange.close()  # cancelled (S3) or failed: the app's request ends too
                if isinstance(exc, _Stale) and exchange.reused and retry:
                    retry = False
                    exchange = None
                    continue
                raise
            return exchange

    def _head(
        self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]], chunked: bool
    ) -> tuple[bytes, int | None]:
        """The request head, and the body length its Content-Length announces."""
        parts = [method.encode("latin-1"), b" ", self._prefix, target, b" HTTP/1.1\r\n"]
        has_host = False
        length = None
        for name, value in headers:
            if name == b"host":
                has_host = True
            elif name == b"content-length":
                length = int(value)
            parts += (name, b": ", value, b"\r\n")
        if not has_host:  # HTTP/1.1 requires one; an HTTP/1.0 client may send none
            parts += (b"host: ", self._default_host, b"\r\n")
        if chunked:
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        return b"".join(parts), length

    def _pooled(self) -> _Connection | None:
        idle = self._idle
        now = time.monotonic()
        while idle:
            connection = idle.pop()  # the most recently used: the least likely closed
            if not connection.closed and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(self, loop), self._host, self._port),
            self._connect_timeout,
        )
        return connection

    def idle(self, connection: _Connection) -> None:
        if len(self._idle) >= MAX_IDLE:
            oldest = self._idle.popleft()
            oldest.close()
        self._idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        """An idle connection closed (the app's keep-alive ran out)."""
        try:
            self._idle.remove(connection)
        except ValueError:
            pass

    async def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
