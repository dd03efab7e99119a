"""The streaming reverse proxy in front of the app (SPEC S1-S4, R1-R4, H5, H6, D1).

A raw ASGI app (measured faster than a Starlette route, benches/RESULTS.md): per request
it refuses while draining, answers health-check triggers itself, filters headers once,
and streams the body each way chunk by chunk with back-pressure (S1). Everything that
does not depend on the request is computed in `__init__`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from email.utils import formatdate
from typing import Any

from runwarden.drain import Drain
from runwarden.metrics import Metrics
from runwarden.upstream import Upstream, UpstreamError, UpstreamResponse
from runwarden.warden import Warden

log = logging.getLogger("runwarden.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# RFC 9110 7.6.1 hop-by-hop headers, plus the framing we re-derive (S4) and `expect`,
# which uvicorn already answered towards the client.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
REQUEST_DROPPED = HOP_BY_HOP | {
    b"content-length",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
}
RESPONSE_DROPPED = HOP_BY_HOP | {b"server", b"date"}
WATCH_AFTER_SECONDS = 0.05
"""A client that leaves is noticed, and its request ended at the app, this much later at
most (S3)."""
# R1: 503 replaces; R4: these ask for one extra check.
EXTRA_CHECK_STATUSES = frozenset({500, 502, 504})
SERVER = b"runwarden"
UNREACHABLE_BODY = json.dumps(
    {"error": "app unreachable", "detail": "runwarden could not reach the app; see its log"}
).encode()


class _DateHeader:
    """The Date header value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._value = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


class ClientDisconnected(Exception):
    """The client left while its body streamed: raised into the upstream client so it
    aborts the app's request instead of ending the body as if it were complete (S3)."""


class _BadRequest(Exception):
    """A request the proxy will not forward; the message is the 400 answer's reason."""


class _RateLimitedLog:
    """A warning at most once per `interval` seconds, with how many were held back."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0
        self._held = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return
        held, self._held, self._next = self._held, 0, now + self.interval
        suffix = f" ({held} more like it held back)" if held else ""
        log.warning(message + suffix, *args)


class _Exchange:
    """Per-request state shared by the forwarding task and its disconnect watcher."""

    __slots__ = ("disconnected", "finished", "task", "timer", "watcher")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.finished = False
        self.disconnected = False


class Proxy:
    """ASGI app: forwards to the one configured app, watched by `warden`."""

    def __init__(
        self,
        warden: Warden,
        upstream: Upstream,
        drain: Drain,
        metrics: Metrics,
        check_header: str,
    ) -> None:
        self.warden = warden
        self.upstream = upstream
        self.drain = drain
        self.metrics = metrics
        self.check_header = check_header.lower().encode("latin-1")
        self._request_dropped = REQUEST_DROPPED | {self.check_header}
        self._date = _DateHeader()
        # H9's traffic accounting feeds only allow_on_busy and stall_seconds: with both off
        # (the default) the hot path makes none of these calls into the core.
        core = warden.core
        h9 = warden.health.allow_on_busy or warden.health.stall_seconds is not None
        self._started = core.request_started if h9 else _nothing
        self._finished = core.request_finished if h9 else _nothing
        self._progress = core.request_progress if h9 else _nothing
        self._client_wait_started = core.client_wait_started if h9 else _nothing
        self._client_wait_finished = core.client_wait_finished if h9 else _nothing
        self._unreachable_log = _RateLimitedLog(10.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1013})
            return
        drain = self.drain
        if drain.reason is not None:  # D1: never reaches the app
            await self._answer(send, 503, drain.refusal_body, drain.refusal_headers)
            return

        target = scope.get("raw_path") or scope["path"].encode()
        try:
            if not target.startswith(b"/"):  # `OPTIONS *` or an absolute form: no app path
                raise _BadRequest("the request target must be a path starting with '/'")
            headers, host, triggered, has_body, chunked = self._request_headers(scope)
        except _BadRequest as exc:
            body = json.dumps({"error": "bad request", "detail": str(exc)}).encode()
            await self._answer(send, 400, body, [(b"content-type", b"application/json")])
            return
        if triggered:  # H5: answered here, not forwarded
            await self._answer_check(send)
            return

        client = scope.get("client")
        headers.append((b"x-forwarded-for", client[0].encode() if client else b""))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        if host is not None:
            headers.append((b"x-forwarded-host", host))
        if scope["query_string"]:
            target += b"?" + scope["query_string"]

        exchange = _Exchange(asyncio.current_task())
        drain.enter()
        self._started()
        try:
            await self._forward(scope["method"], target, headers, has_body, chunked,
                                receive, send, exchange)  # fmt: skip
        except asyncio.CancelledError:
            if not exchange.disconnected:
                raise
            # S3: the client left; its upstream request was cancelled with this task.
            task = asyncio.current_task()
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
            self.metrics.record_request(499, "client")
        finally:
            if exchange.timer is not None:
                exchange.timer.cancel()
            if exchange.watcher is not None:
                exchange.watcher.cancel()
            self._finished()
            drain.leave()

    def _request_headers(
        self, scope: Scope
    ) -> tuple[list[tuple[bytes, bytes]], bytes | None, bool, bool, bool]:
        """S2/S4: the client's headers, byte for byte, less hop-by-hop ones and those named
        in Connection; and the request's Host, whether it triggers a check (H5), whether it
        has a body and whether that body is chunked."""
        dropped = self._request_dropped
        kept: list[tuple[bytes, bytes]] = []
        named: set[bytes] | None = None
        host: bytes | None = None
        triggered = chunked = False
        content_length = None
        for name, value in scope["headers"]:
            if name in dropped:
                if name == b"connection":
                    if named is None:
                        named = set()
                    named.update(t.strip().lower() for t in value.split(b","))
                elif name == b"transfer-encoding":
                    chunked = True
                elif name == b"content-length":
                    content_length = value
                elif name == self.check_header:
                    triggered = True
                continue
            if name == b"host":
                host = value
            kept.append((name, value))
        if named:
            kept = [(n, v) for n, v in kept if n not in named]
            if b"host" in named:
                host = None
        has_body = chunked
        if content_length is not None and not chunked:
            # httptools validated it; the body is forwarded with the same length.
            kept.append((b"content-length", content_length))
            has_body = content_length != b"0"
        return kept, host, triggered, has_body, chunked

    async def _forward(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        has_body: bool,
        chunked: bool,
        receive: Receive,
        send: Send,
        exchange: _Exchange,
    ) -> None:
        body = self._request_body(receive, exchange) if has_body else None
        if body is None:
            self._watch_later(receive, exchange)
        try:
            response = await self.upstream.request(method, target, headers, body, chunked)
        except UpstreamError as exc:
            if exchange.disconnected:
                raise asyncio.CancelledError from exc
            # R3: answer 502 and let health checks decide whether the app is gone; as R4
            # asks, that 502 is followed by an extra check, so a dead app is noticed at once.
            # The client is told no internal address; the log says what failed, rate-limited.
            self._unreachable_log.warning(
                "app unreachable for %s %s: %s",
                method,
                target.decode("latin-1"),
                str(exc) or repr(exc),
            )
            self.warden.report_response(502)
            await self._answer(
                send, 502, UNREACHABLE_BODY, [(b"content-type", b"application/json")]
            )
            return
        try:
            await self._respond(response, send, exchange)
        finally:
            response.close()

    async def _respond(self, response: UpstreamResponse, send: Send, exchange: _Exchange) -> None:
        status: int = response.status
        headers, manual = self._response_headers(response.raw_headers)
        if status == 503:  # R1: forwarded unchanged, and the runner is replaced
            self.drain.begin("app_503", "the app answered 503")
            self.warden.report_response(status)
        elif status in EXTRA_CHECK_STATUSES:  # R4
            self.warden.report_response(status)
        try:
            await self._to_client(
                send, {"type": "http.response.start", "status": status, "headers": headers}
            )
            progress = self._progress
            read = response.read
            last = False
            try:
                while not last:
                    chunk = await read()
                    progress()
                    # The last piece ends the response in the same message.
                    last = exchange.finished = not chunk or response.finished
                    await self._to_client(
                        send, {"type": "http.response.body", "body": chunk, "more_body": not last}
                    )
            except UpstreamError as exc:
                # The status is gone already: cut the response so the client sees it broke.
                log.warning("app broke off a response with status %d: %r", status, exc)
                self.metrics.record_request(status, "app")
                return
            self.metrics.record_request(status, "app")
        finally:
            if manual:  # H6: a check once the response is sent, or broke off, or was dropped
                self.warden.manual_check()

    async def _to_client(self, send: Send, message: Message) -> None:
        """Send to the client; while it holds us back (it does not read), the request waits
        on the client, not on the app (H9)."""
        self._client_wait_started()
        try:
            await send(message)
        finally:
            self._client_wait_finished()

    def _response_headers(self, raw: Any) -> tuple[list[tuple[bytes, bytes]], bool]:
        """S2/S4 for responses; exactly one Server and one Date; H6's header removed."""
        out: list[tuple[bytes, bytes]] = []
        named: set[bytes] = set()
        server = date = None
        manual = False
        check_header = self.check_header
        for raw_name, value in raw:
            name = raw_name.lower()
            if name in RESPONSE_DROPPED:
                if name == b"connection":
                    named.update(t.strip().lower() for t in value.split(b","))
                elif name == b"server" and server is None:
                    server = value
                elif name == b"date" and date is None:
                    date = value
                continue
            if name == check_header:
                manual = True
                continue
            out.append((name, value))
        if named:
            out = [(n, v) for n, v in out if n not in named]
        out.append((b"server", server if server is not None else SERVER))
        out.append((b"date", date if date is not None else self._date()))
        return out, manual

    async def _request_body(self, receive: Receive, exchange: _Exchange) -> AsyncIterator[bytes]:
        """S1: the client's body, chunk by chunk as uvicorn reads it (with back-pressure)."""
        progress = self._progress
        while True:
            self._client_wait_started()  # H9: waiting for the client's bytes is not the app's
            try:
                message = await receive()
            finally:
                self._client_wait_finished()
            if message["type"] == "http.disconnect":
                exchange.disconnected = True
                if exchange.task is not None:
                    exchange.task.cancel()
                # Raise, not return: an ended generator would tell the upstream client that
                # the body is complete, and the app would get a truncated one (S3).
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                yield chunk
                progress()  # the upstream client asks for more once it wrote this one
            if not message.get("more_body", False):
                break
        self._watch_later(receive, exchange)

    def _watch_later(self, receive: Receive, exchange: _Exchange) -> None:
        """S3: watch for the client leaving once the exchange has lasted WATCH_AFTER_SECONDS
        (most answers come sooner, and a watcher task per request costs more than a timer)."""
        exchange.timer = asyncio.get_running_loop().call_later(
            WATCH_AFTER_SECONDS, self._watch, receive, exchange
        )

    def _watch(self, receive: Receive, exchange: _Exchange) -> None:
        exchange.timer = None
        if not exchange.finished:
            exchange.watcher = asyncio.ensure_future(self._watch_disconnect(receive, exchange))

    @staticmethod
    async def _watch_disconnect(receive: Receive, exchange: _Exchange) -> None:
        """S3: once the request body is read, a disconnect cancels the exchange."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if not exchange.finished and exchange.task is not None:
                    exchange.disconnected = True
                    exchange.task.cancel()
                return

    async def _answer_check(self, send: Send) -> None:
        """H5: run (or share) a check and answer with its result."""
        outcome = await self.warden.check("gateway")
        body: dict[str, object] = {"passed": outcome.passed, "check": outcome.to_dict()}
        if not outcome.passed:
            body["reason"] = outcome.error or f"health check answered {outcome.status}"
        status = 200 if outcome.passed else 503
        await self._answer(
            send, status, json.dumps(body).encode(), [(b"content-type", b"application/json")]
        )

    async def _answer(
        self, send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """A response runwarden makes itself."""
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *headers,
                    (b"content-length", str(len(body)).encode()),
                    (b"server", SERVER),
                    (b"date", self._date()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})
        self.metrics.record_request(status, "runwarden")


def _nothing() -> None:
    """Stands in for H9's accounting calls when no H9 rule reads them."""
