"""One client connection of runwarden's HTTP/1.1 server (SPEC S3, S5, S6, D6).

An asyncio protocol parsed by httptools (llhttp, the parser uvicorn and runwarden's
upstream client use). It owns everything about the client's bytes, so that every
guarantee of the front door is decided in one place:

- the head is bounded in bytes while it arrives (an unfinished header line counts) and in
  time from the connection's first byte or its last response (S6);
- what is forwarded is what was parsed (S5): the body is exactly the bytes llhttp framed,
  a request that asked for a protocol switch keeps its body a body and ends its
  connection, trailers never become headers, and anything the parser is unsure of ends
  the connection;
- requests RFC 9112 refuses are refused here (two Hosts, HTTP/1.1 without Host, an
  unknown version or transfer coding), before any handler sees them;
- responses are framed here (Content-Length, chunked or close-delimited), and carry
  `Connection: close` once the server drains (D6).

Handlers get a `Request`: the parsed head, the body to read with back-pressure, and the
response to write with back-pressure. A handler runs as one task; a client that leaves
cancels it (S3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, cast

import httptools

if TYPE_CHECKING:
    from runwarden.server import Server

log = logging.getLogger("runwarden.http")

Headers = list[tuple[bytes, bytes]]
LATER = cast("Coroutine[Any, Any, None]", object())
"""What a handler returns when callbacks it has set up will finish the exchange."""
Handler = Callable[["Request"], Coroutine[Any, Any, None] | None]
"""Called with each request, in the loop turn its head arrives. It answers at once and
returns None; or returns the coroutine that finishes the exchange, run as a task; or returns
LATER: then callbacks it set up finish the exchange (`Request.finish`), or hand it to a task
(`Request.carry_on`), and `Request.on_cancel` is told if the client leaves first. Work done
before a handler first waits is on no task's schedule: the least latency and CPU."""

BODY_HIGH_WATER = 256 * 1024
"""Request body bytes buffered ahead of the handler before the socket stops being read."""
LINGER_CLOSE_SECONDS = 2.0
"""After an answer that ends a connection while the client may still be sending, how long
its bytes are read and dropped so that it reads the answer before the close."""
LINGER_DISCARD_BYTES = 1 << 20
"""...and at most this many of them: a client still sending after that is cut off."""
CHUNK_FRAMING_BYTES = 32
"""What one chunk's size line may cost beyond its data; extensions and trailers beyond it
count against the head limit (S6)."""

_STATUS_LINES = {
    status.value: b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode())
    for status in HTTPStatus
}


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


class ClientDisconnected(Exception):
    """The client left, or broke its request body, before the exchange ended."""


class _Refused(Exception):
    """A request the server answers itself with `status` and closes (RFC 9112)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status


class Request:
    """One request as a handler sees it: the head, the body, the response."""

    __slots__ = (
        "_body",
        "_body_bytes",
        "_buffered",
        "_cancelled",
        "_chunked_out",
        "_complete",
        "_connection",
        "_continue",
        "_error",
        "_head",
        "_reader",
        "chunked",
        "client",
        "content_length",
        "ended",
        "headers",
        "host",
        "keep_alive",
        "method",
        "on_cancel",
        "on_done",
        "received",
        "running",
        "started",
        "status",
        "target",
        "task",
        "upgrade",
        "version",
    )

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.method = ""
        self.target = b""
        self.version = "1.1"
        self.headers: Headers = []
        """Names lowercased, values byte for byte; framing, Host and trailers excluded."""
        self.host: bytes | None = None
        self.client = connection.client
        self.content_length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade = False
        self._continue = False
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._body_bytes = 0
        self._complete = False
        self._error: BaseException | None = None
        self._reader: asyncio.Future[None] | None = None
        self._head = b""
        self._chunked_out = False
        self.task: asyncio.Task[None] | None = None
        self.running = False
        self._cancelled: str | None = None
        self.on_done: Callable[[Request], None] | None = None
        """Called once with the request when the exchange ends, however it ends (a handler's
        accounting)."""
        self.received = 0.0
        """The loop's clock when the head was complete and handed to the handler."""
        self.on_cancel: Callable[[], None] | None = None
        """For a LATER handler without a task: called if the exchange is cancelled."""
        self.started = False
        self.ended = False
        self.status = 0

    # -- the request body

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    @property
    def body_complete(self) -> bool:
        return self._complete

    async def read(self) -> bytes:
        """The next piece of the body as it arrived; b"" at its end. Raises
        ClientDisconnected if the client leaves or breaks the body first."""
        while True:
            if self._body:
                body = self._body
                chunk = body.popleft() if len(body) == 1 else b"".join(body)
                body.clear()
                self._buffered = 0
                self._connection.body_taken()
                return chunk
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            if self._continue:  # RFC 9110 10.1.1: the client waits for this to send its body
                self._continue = False
                if not self.started:
                    self._connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self._reader = self._connection.loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None

    def _feed(self, data: bytes) -> None:
        self._body.append(data)
        self._buffered += len(data)
        self._body_bytes += len(data)
        self._wake()

    def _end_body(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    # -- the response

    def start(self, status: int, headers: Headers, content_length: int | None = None) -> None:
        """The response's head; written with the first piece of its body. Framing is the
        server's: `content_length`, else chunked (HTTP/1.1) or close-delimited (1.0)."""
        self.started = True
        self.status = status
        connection = self._connection
        bodiless = self.method == "HEAD" or status in (204, 304) or status < 200
        keep = self.keep_alive and self._complete and not connection.server.draining
        parts = [status_line(status)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if content_length is not None:
            parts += (b"content-length: ", b"%d" % content_length, b"\r\n")
        elif not bodiless:
            if self.version == "1.1":
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                keep = False  # the end of the body is the end of the connection
        self.keep_alive = keep
        if not keep:
            parts.append(b"connection: close\r\n")
        elif self.version == "1.0":
            parts.append(b"connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self._head = b"".join(parts)
        self._chunked_out = content_length is None and not bodiless and self.version == "1.1"

    @property
    def writing_paused(self) -> bool:
        """The client is not reading: the next `write` waits for it."""
        return self._connection.writing_paused

    async def write(self, chunk: bytes) -> None:
        """A piece of the response body, with back-pressure."""
        if chunk:
            self._send(chunk, last=False)
        connection = self._connection
        if connection.writing_paused:
            await connection.drained()
        if connection.closed:
            raise ClientDisconnected("the client left")

    def end(self, chunk: bytes = b"") -> None:
        """The last piece of the body (or none): the response is complete."""
        self._send(chunk, last=True)
        self.ended = True
        self._connection.response_ended(self)

    def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response in one write."""
        self.start(status, headers, len(body))
        self.end(body)

    @property
    def gone(self) -> bool:
        """The client's connection is closed."""
        return self._connection.closed

    def abort(self) -> None:
        """End the exchange without ending the response: the client sees it broke."""
        self._connection.close()

    def abandon(self, status: int, headers: Headers, body: bytes) -> bool:
        """Stop handling this request: answer `status` and end the connection if no
        response has started (True), else cut the response (False). The handler's task
        is cancelled, and with it the app's side of the request."""
        if self.ended or self._connection.closed:
            return False
        answered = not self.started
        if answered:
            self.keep_alive = False
            self.respond(status, headers, body)
        else:
            self._connection.close()
        self.cancel("abandoned")
        return answered

    def carry_on(self, rest: Coroutine[Any, Any, None]) -> None:
        """A LATER handler continues the exchange as a task."""
        self.on_cancel = None
        self.task = self._connection.start_task(self, rest)

    def finish(self) -> None:
        """A LATER handler's callbacks are done with the exchange."""
        self.on_cancel = None
        self._connection.handled(self)

    def cancel(self, why: str) -> None:
        """Cancel the handler's task, also before its first step (then it never starts, and
        `on_done` still runs), or tell a LATER handler's callbacks."""
        task = self.task
        if task is None:
            on_cancel, self.on_cancel = self.on_cancel, None
            if on_cancel is not None:
                on_cancel()
                self._connection.handled(self)
            return
        if self.running:
            task.cancel(msg=why)
        else:
            self._cancelled = why

    def _send(self, chunk: bytes, last: bool) -> None:
        head, self._head = self._head, b""
        if self.method == "HEAD":
            chunk = b""
        if self._chunked_out:
            if chunk:
                data = b"%s%x\r\n%s\r\n" % (head, len(chunk), chunk)
            else:
                data = head
            if last:
                data += b"0\r\n\r\n"
        else:
            data = head + chunk if head else chunk
        if data:
            self._connection.write(data)


class _BodyOnly:
    """Parses the body of a request that asked for a protocol switch: llhttp stops at such
    a head, so its body is framed again by a second parser (S5)."""

    def __init__(self, connection: Connection, request: Request) -> None:
        self.connection = connection
        self.request = request

    def on_body(self, body: bytes) -> None:
        self.connection.on_body(body)

    def on_chunk_header(self) -> None:
        self.connection.on_chunk_header()

    def on_message_complete(self) -> None:
        self.connection.body_parsed()
        self.connection.discard_input()


class Connection(asyncio.Protocol):
    """One client connection: parse, hand requests to the handler one at a time, frame
    their responses, enforce the limits, and close when the exchange allows."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = server.loop
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.closed = False
        self._parser: httptools.HttpRequestParser | _Discard = httptools.HttpRequestParser(self)
        self._parsing: Request | None = None
        self._active: Request | None = None
        self._pending: deque[Request] = deque()
        self._deferred: _Refused | None = None
        self._url = b""
        self._headers: Headers = []
        self._in_head = False
        self._head_bytes = 0
        self._fresh = False
        self._fed = 0
        self._body_base = 0
        self._overhead_allowed = 0
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self.deadline = 0.0
        """When the server's sweep times this connection out (monotonic; 0: never)."""
        self._idle = False

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else ""
        self._arm(self.limits.header_timeout_seconds)  # S6: from accept to a whole head
        self.server.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.resume_writing()
        gone = ClientDisconnected("the client left")
        for request in (self._active, self._parsing, *self._pending):
            if request is not None:
                request._fail(gone)
        active = self._active
        if active is not None and not active.ended:
            active.cancel("the client left")
        self._pending.clear()
        self.server.closed(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgraded(data, upgrade.args[0] if upgrade.args else len(data))
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if not isinstance(cause, _Refused):
                log.error("a request callback failed", exc_info=cause)
                cause = _Refused(400, "malformed request")
            self._refuse_parsed(cause)
            return
        except httptools.HttpParserError as exc:
            self._malformed(exc)
            return
        if self._in_head:
            # llhttp holds an unfinished line until it ends: bound what arrived (S6).
            self._head_bytes += len(data)
            if self._head_bytes > self.limits.max_head_bytes:
                self._refuse_parsed(_Refused(431, "request header fields too large"))
        elif self._parsing is not None:
            # Chunk extensions and trailers are held by the parser too: bound them.
            if self._fresh:
                self._fresh = False
                self._fed = 0
                self._body_base = self._parsing._body_bytes
            else:
                self._fed += len(data)
                framing = self._fed - (self._parsing._body_bytes - self._body_base)
                if framing > self._overhead_allowed:
                    self._malformed(ValueError("chunk extensions or trailers too large"))

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        if self._idle:  # the head of the next request must arrive in time from here (S6)
            self._arm(self.limits.header_timeout_seconds)

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers.append((name, value))
        # Otherwise a trailer field: never a header (S5); dropped, as nginx does.

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = cast(httptools.HttpRequestParser, self._parser)
        request = Request(self)
        request.method = parser.get_method().decode("ascii")
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.upgrade = parser.should_upgrade()
        _read_head(request, self._url, self._headers, self.limits.max_head_bytes)
        if request.upgrade:
            # Upgrades are not proxied: the request is an ordinary one, and its connection
            # ends with it, since what follows was meant for another protocol.
            request.keep_alive = False
        if not request.has_body:
            request._complete = True  # known now: a handler may answer in this very turn
        self._parsing = request
        self._fresh = True
        self._overhead_allowed = self.limits.max_head_bytes
        if self._active is None:
            self._dispatch(request)
        else:  # pipelined: handled once the one before it is answered
            self._pending.append(request)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        request = self._parsing
        if request is not None:
            request._feed(body)
            if request._buffered > BODY_HIGH_WATER:
                self._pause_reading()

    def on_chunk_header(self) -> None:
        self._overhead_allowed += CHUNK_FRAMING_BYTES

    def on_message_complete(self) -> None:
        request = self._parsing
        if request is not None and request.upgrade and request.has_body:
            return  # llhttp skipped the body of a switch request: `_upgraded` parses it
        self.body_parsed()

    def body_parsed(self) -> None:
        request, self._parsing = self._parsing, None
        if request is not None:
            request._end_body()

    # -- what a Request drives

    @property
    def writing_paused(self) -> bool:
        return self._writable is not None

    async def drained(self) -> None:
        while self._writable is not None and not self.closed:
            await self._writable

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def body_taken(self) -> None:
        if self._reading_paused and not self._pending:
            self._reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def response_ended(self, request: Request) -> None:
        """The response is written: the next request, idle, or close."""
        if request is not self._active:
            return
        self._active = None
        if self._deferred is not None:  # a pipelined request that was malformed
            self.refuse(self._deferred.status, str(self._deferred))
            return
        if not request.keep_alive:
            self._close_after(request)
            return
        if self._pending:
            self._dispatch(self._pending.popleft())
            return
        self.server.waiting(self)
        self.body_taken()
        if self._parsing is not None or self._in_head:
            self._arm(self.limits.header_timeout_seconds)
        else:
            self._idle = True
            self._arm(self.server.idle_seconds())

    # -- what the server drives

    @property
    def active(self) -> Request | None:
        """The request being handled."""
        return self._active

    @property
    def busy(self) -> bool:
        """A request is being received or handled."""
        return self._active is not None or self._parsing is not None or self._in_head

    def refuse(self, status: int, detail: str) -> None:
        """Answer a request the server will not hand on, and close (RFC 9112)."""
        active = self._active
        if active is not None:
            if active.started:
                self.close()  # a response is under way: ending the connection is all we can
                return
            active.cancel(detail)
            active.ended = True
        body = detail.encode() + b"\n"
        self.write(
            status_line(status)
            + b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(body), body)
        )
        self.server.refused(status)
        self._close_lingering()

    def linger(self, seconds: float) -> None:
        """While the server closes: an idle connection waits this long for a request already
        on its way, then closes; a busy one closes after its response."""
        if not self.busy:
            self._idle = True
            self._arm(seconds)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._disarm()
            if self.transport is not None:
                self.transport.close()

    def discard_input(self) -> None:
        """Read nothing more as requests: after a protocol switch or a refusal."""
        self._parser = _Discard(self)
        self._in_head = False
        self._parsing = None
        self._pending.clear()

    # -- inside

    def _dispatch(self, request: Request) -> None:
        request.received = self.loop.time()
        self.deadline = 0.0
        self._idle = False
        self._active = request
        self.server.busy(self)
        try:
            rest = self.server.handler(request)
        except Exception as exc:
            log.error("request handler failed: %r", exc, exc_info=exc)
            rest = None
        if rest is None:
            self.handled(request)
        elif rest is not LATER:
            request.task = self.start_task(request, rest)

    def start_task(self, request: Request, rest: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return self.loop.create_task(self._handle(request, rest))

    async def _handle(self, request: Request, rest: Coroutine[Any, Any, None]) -> None:
        request.running = True
        try:
            if request._cancelled is None:
                await rest
            else:
                rest.close()  # cancelled before it could start
        except asyncio.CancelledError:
            pass  # the client left, or the server answered for the handler
        except Exception as exc:
            log.error("request handler failed: %r", exc, exc_info=exc)
        self.handled(request)

    def handled(self, request: Request) -> None:
        """The handler is done with `request`: its accounting runs, and a response it did
        not finish is not taken for a whole one."""
        done, request.on_done = request.on_done, None
        if done is not None:
            done(request)
        if not request.ended and not self.closed and request is self._active:
            # The handler ended without finishing its response (it failed, or was
            # cancelled): the client must not take what it got as a whole answer.
            if request.started:
                self.close()
            else:
                self.refuse(502, "runwarden could not complete this request")

    def _upgraded(self, data: bytes, offset: int) -> None:
        """llhttp stopped at the head of a request that asked for a protocol switch. Its body,
        if it declared one, is still a body (S5): a parser of its own frames it."""
        request = self._parsing
        if request is None or not request.has_body:
            self.body_parsed()
            self.discard_input()
            return
        framing = (
            b"transfer-encoding: chunked"
            if request.chunked
            else b"content-length: %d" % (request.content_length or 0)
        )
        self._parser = httptools.HttpRequestParser(_BodyOnly(self, request))
        try:
            self._parser.feed_data(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n\r\n" + data[offset:])
        except httptools.HttpParserError as exc:
            self._malformed(exc)

    def _malformed(self, exc: BaseException) -> None:
        """A parse error: in the body of the request being handled, the body is broken and
        the request aborted (its head may have reached the app already, never its end);
        otherwise the request is refused."""
        request = self._parsing
        if request is not None and request is self._active:
            request._fail(ClientDisconnected(f"the request body is malformed: {_reason(exc)}"))
        self._refuse_parsed(_Refused(400, f"malformed request: {_reason(exc)}"))

    def _refuse_parsed(self, refused: _Refused) -> None:
        """Refuse what the parser found wrong; a request answered before it keeps its answer."""
        active = self._active
        if active is not None and self._parsing is not active and not active.ended:
            self._deferred = refused  # a later, pipelined request: answered after this one
            self.discard_input()
            return
        self.refuse(refused.status, str(refused))

    def _close_after(self, request: Request) -> None:
        if request.body_complete:
            self.close()
        else:
            self._close_lingering()

    def _close_lingering(self) -> None:
        """Close once the client has read the answer: stop writing, read and drop what it
        still sends for a while (an upload cut short by an answer), then close. Closing at
        once would reset the connection and could lose the answer (nginx's lingering close)."""
        if self.closed or self.transport is None:
            return
        self.discard_input()
        self._active = None
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()
        try:
            self.transport.write_eof()
        except (OSError, RuntimeError):
            self.close()
            return
        self._idle = True
        self._arm(LINGER_CLOSE_SECONDS)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def _arm(self, seconds: float) -> None:
        # A deadline the server's sweep looks at, not a timer per request: arming and
        # cancelling a loop timer twice per request costs more than the whole sweep.
        self.deadline = time.monotonic() + seconds
        self.server.sweep_within(seconds)

    def _disarm(self) -> None:
        self.deadline = 0.0

    def timed_out(self) -> None:
        """The deadline passed (the server's sweep calls this)."""
        self.deadline = 0.0
        if self._active is not None:
            return
        if self._in_head:  # S6: a head that takes too long
            self.refuse(408, "request head not received in time")
        else:  # idle before a first request, between requests, or lingering
            self.close()


class _Discard:
    """Stands in for the parser once a connection reads no more requests: drops what
    arrives, up to LINGER_DISCARD_BYTES, then closes the connection."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.left = LINGER_DISCARD_BYTES

    def feed_data(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.connection.close()


def _read_head(request: Request, url: bytes, raw: Headers, max_head_bytes: int) -> None:
    """Fill `request` from the parsed head, refusing what RFC 9112 says to refuse."""
    size = len(url)
    headers: Headers = []
    hosts: list[bytes] = []
    codings: list[bytes] = []
    expect: bytes | None = None
    for name, value in raw:
        size += len(name) + len(value) + 4
        lowered = name.lower()
        if lowered == b"host":
            hosts.append(value)
        elif lowered == b"content-length":
            request.content_length = int(value)  # llhttp refused any other form
        elif lowered == b"transfer-encoding":
            codings += (c.strip().lower() for c in value.split(b","))
        elif lowered == b"expect":
            expect = value.strip().lower()
        elif b"_" in lowered:
            continue  # nginx's default: a name with `_` could alias an `-` one at the app
        else:
            headers.append((lowered, value))
    if size > max_head_bytes:
        raise _Refused(431, "request header fields too large")
    if request.version not in ("1.0", "1.1"):
        raise _Refused(505, f"HTTP/{request.version} is not supported; use HTTP/1.1")
    if codings:
        if codings != [b"chunked"]:  # RFC 9112 6.1: runwarden decodes no other coding
            raise _Refused(501, "only the chunked transfer coding is supported")
        request.chunked = True
    if len(hosts) > 1:
        raise _Refused(400, "more than one Host header")
    if not hosts and request.version == "1.1":
        raise _Refused(400, "an HTTP/1.1 request needs a Host header")
    request.host = hosts[0] if hosts else None
    if expect is not None:
        if expect != b"100-continue":
            raise _Refused(417, "only Expect: 100-continue is supported")
        request._continue = request.version == "1.1"
    target = url
    if not target.startswith(b"/"):
        target = _origin_form(request, url)
    request.target = target
    request.headers = headers


def _origin_form(request: Request, url: bytes) -> bytes:
    """RFC 9112 3.2.2: an absolute-form target's authority replaces Host; the app gets the
    path. `*` (OPTIONS) and the authority form (CONNECT) name no path of the app."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise _Refused(400, "the request target must be a path starting with '/'")
    authority, slash, path = rest.partition(b"/")
    if not authority or b"@" in authority:
        raise _Refused(400, "the absolute-form target has no valid authority")
    request.host = authority
    return b"/" + path if slash else b"/"


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return text.partition(": ")[2] or text or type(exc).__name__
