"""The streaming reverse proxy in front of the app (SPEC S1-S5, R1-R4, H5, H6, D1, D6).

The handler runwarden's server (`server.py`, `http1.py`) runs for each request on the proxy
port: it refuses while draining, answers trusted health-check triggers itself, filters
headers once, and streams the body each way with back-pressure (S1). The server has
already refused what RFC 9112 refuses and framed the body; everything that does not
depend on the request is computed in `__init__`.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Sequence
from email.utils import formatdate
from typing import Any

from runwarden.drain import Drain
from runwarden.http1 import LATER, ClientDisconnected, Headers, Request
from runwarden.metrics import Metrics
from runwarden.upstream import Upstream, UpstreamError, UpstreamResponse
from runwarden.warden import Warden

log = logging.getLogger("runwarden.proxy")
access_log = logging.getLogger("runwarden.access")

# RFC 9110 7.6.1 hop-by-hop headers (the server has taken out the framing and Host).
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
# What runwarden owns towards the app (S4): the client's copies are dropped, not trusted.
FORWARDED = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"}
)
REQUEST_DROPPED = HOP_BY_HOP | FORWARDED
RESPONSE_DROPPED = HOP_BY_HOP | {b"server", b"date", b"content-length"}
# R1: 503 replaces; R4: these ask for one extra check.
EXTRA_CHECK_STATUSES = frozenset({500, 502, 504})
# S6: runwarden itself ran out of fds, buffers, memory or local ports: not the app's doing.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                          errno.EADDRNOTAVAIL})  # fmt: skip
SERVER = b"runwarden"
JSON = (b"content-type", b"application/json")
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


class TrustedSources:
    """H5: the peers whose check header is a gateway's request for a check."""

    def __init__(self, networks: Sequence[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._seen: dict[str, bool] = {}

    def __contains__(self, address: str) -> bool:
        known = self._seen.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address.partition("%")[0])
            except ValueError:
                known = False
            else:
                mapped = getattr(ip, "ipv4_mapped", None)
                ip = mapped or ip
                known = any(ip in network for network in self.networks)
            if len(self._seen) >= 1024:
                self._seen.clear()
            self._seen[address] = known
        return known


class Proxy:
    """The proxy port's handler: forwards to the one configured app, watched by `warden`."""

    def __init__(
        self,
        warden: Warden,
        upstream: Upstream,
        drain: Drain,
        metrics: Metrics,
        check_header: str,
        trusted: TrustedSources,
        access_log: bool = False,
    ) -> None:
        self.warden = warden
        self.upstream = upstream
        self.drain = drain
        self.metrics = metrics
        self.trusted = trusted
        self.check_header = check_header.lower().encode("latin-1")
        self._request_dropped = REQUEST_DROPPED | {self.check_header}
        self._date = _DateHeader()
        # The in-flight count is the core's (one counter); the rest of H9's accounting feeds
        # only allow_on_busy and stall_seconds: with both off (the default) the hot path
        # makes none of those calls.
        self._started = warden.request_started
        self._finished = warden.request_finished
        h9 = warden.health.allow_on_busy or warden.health.stall_seconds is not None
        self._progress = warden.request_progress if h9 else _nothing
        self._client_wait_started = warden.client_wait_started if h9 else _nothing
        self._client_wait_finished = warden.client_wait_finished if h9 else _nothing
        self._unreachable_log = _RateLimitedLog(10.0)
        self._clock = asyncio.get_running_loop().time
        self._observe = metrics.record_latency
        self._access = _access_line if access_log else None

    def __call__(self, request: Request) -> Coroutine[Any, Any, None] | None:
        """In the loop turn the request's head arrives: refuse it while draining, or answer a
        check trigger, or send its head to the app now on a pooled connection. The rest of
        the exchange is the coroutine returned (`server.py` runs it as a task)."""
        if self.warden.verdict is not None:  # D1: never reaches the app
            drain = self.drain
            self._answer(request, 503, drain.refusal_body, drain.refusal_headers)
            return None
        headers, triggered = self._request_headers(request)
        if triggered:  # H5: answered here, not forwarded
            return self._answer_check(request)
        self._started()
        request.on_done = self._left
        body = self._request_body(request) if request.has_body else None
        exchange = self.upstream.start(
            request.method, request.target, headers, body, request.chunked
        )
        if exchange is None or body is not None:
            return self._forward(request, headers, body, exchange)
        # Sent on a pooled connection: a whole answer is forwarded as it arrives (`_whole`),
        # with no task; anything else (a streamed body, a failure) goes on as one.
        exchange.owner = (request, headers)
        exchange.on_whole = self._whole_answer
        exchange.on_other = self._carry_on
        request.on_cancel = exchange.close  # S3: the client left; the app's request ends
        return LATER

    def _whole_answer(self, exchange: Any) -> None:
        self._whole(exchange.owner[0], exchange)

    def _carry_on(self, exchange: Any) -> None:
        request, headers = exchange.owner
        request.carry_on(self._forward(request, headers, None, exchange))

    def _left(self, request: Request) -> None:
        self.drain.left(self._finished())
        seconds = self._clock() - request.received
        self._observe(seconds)
        if self._access is not None:
            self._access(request, seconds)

    def _request_headers(self, request: Request) -> tuple[Headers, bool]:
        """S2/S4: the client's headers, byte for byte, less hop-by-hop ones, those named in
        Connection and those runwarden owns; then Host, X-Forwarded-*, and the framing the
        server parsed (S5). Whether the request is a trusted check trigger (H5)."""
        dropped = self._request_dropped
        kept: Headers = []
        named: set[bytes] | None = None
        triggered = False
        for name, value in request.headers:
            if name in dropped:
                if name == b"connection":
                    if named is None:
                        named = set()
                    named.update(t.strip().lower() for t in value.split(b","))
                elif name == self.check_header:
                    # H5: only a trusted peer asks for a check; from any other the header
                    # is dropped and the request forwarded as an ordinary one.
                    triggered = request.client in self.trusted
                continue
            kept.append((name, value))
        if named:
            kept = [(n, v) for n, v in kept if n not in named]
        host = request.host
        if host is not None:
            kept.append((b"host", host))
        kept.append((b"x-forwarded-for", request.client.encode()))
        kept.append((b"x-forwarded-proto", b"http"))
        if host is not None:
            kept.append((b"x-forwarded-host", host))
        if request.content_length is not None and not request.chunked:
            kept.append((b"content-length", b"%d" % request.content_length))
        return kept, triggered

    async def _forward(
        self,
        request: Request,
        headers: Headers,
        body: AsyncIterator[bytes] | None,
        exchange: Any,
    ) -> None:
        try:
            response = await self.upstream.response(
                exchange, request.method, request.target, headers, body, request.chunked
            )
        except ClientDisconnected:
            return  # the server has answered the client (a broken body) or it is gone
        except UpstreamError as exc:
            # R3: answer 502 and let health checks decide whether the app is gone; as R4
            # asks, that 502 is followed by an extra check, so a dead app is noticed at once.
            # The client is told no internal address; the log says what failed, rate-limited.
            self._unreachable_log.warning(
                "app unreachable for %s %s: %s",
                request.method,
                request.target.decode("latin-1"),
                str(exc) or repr(exc),
            )
            if getattr(exc, "errno", None) not in LOCAL_ERRNOS:
                self.warden.report_response(502)
            self._answer(request, 502, UNREACHABLE_BODY, [JSON])
            return
        except asyncio.CancelledError:
            # S3: the client left (or D6: the drain ended and answered it); the app's
            # request ends with this task.
            if not request.ended:
                self.metrics.record_request(499, "client")
            raise
        if request.started:  # answered as the bytes arrived (`_whole`)
            return
        response.on_whole = None  # the rest streams from here
        try:
            await self._respond(response, request)
        finally:
            response.close()

    def _whole(self, request: Request, exchange: Any) -> None:
        """The app's whole answer is in, in the loop turn it arrived: forward it now, in one
        write, before the task that waits for it wakes."""
        if request.gone or request.started:
            return
        status = exchange.status
        headers, length, manual = self._response_headers(exchange.raw_headers)
        self._judge(status)
        self._progress()
        request.start(status, headers, length)
        request.end(exchange.take())
        self.metrics.record_request(status, "app")
        exchange.close()
        if manual:  # H6: a check once the response is sent
            self.warden.manual_check()
        if request.task is None:
            request.finish()

    def _judge(self, status: int) -> None:
        # R1: a 503 is forwarded unchanged, and the runner is replaced: the core's verdict
        # comes back in this call, so the drain starts before the 503 is sent (D1). R4:
        # 500/502/504 ask for one extra check.
        if status == 503 or status in EXTRA_CHECK_STATUSES:
            self.warden.report_response(status)

    async def _respond(self, response: UpstreamResponse, request: Request) -> None:
        status: int = response.status
        headers, length, manual = self._response_headers(response.raw_headers)
        self._judge(status)
        try:
            chunk = await response.read()
            request.start(status, headers, length)
            if response.finished:  # the whole answer is in: one write
                request.end(chunk)
                self.metrics.record_request(status, "app")
                return
            progress = self._progress
            read = response.read
            try:
                while chunk:
                    progress()
                    if request.writing_paused:
                        await self._to_slow_client(request, chunk)
                    else:
                        await request.write(chunk)
                    if response.finished:
                        break
                    chunk = await read()
            except UpstreamError as exc:
                # The status is gone already: cut the response so the client sees it broke.
                log.warning("app broke off a response with status %d: %r", status, exc)
                self.metrics.record_request(status, "app")
                request.abort()
                return
            except ClientDisconnected:
                return
            request.end()
            self.metrics.record_request(status, "app")
        finally:
            if manual:  # H6: a check once the response is sent, or broke off, or was dropped
                self.warden.manual_check()

    async def _to_slow_client(self, request: Request, chunk: bytes) -> None:
        """While the client holds us back (it does not read), the request waits on the
        client, not on the app (H9)."""
        self._client_wait_started()
        try:
            await request.write(chunk)
        finally:
            self._client_wait_finished()

    def _response_headers(
        self, raw: Sequence[tuple[bytes, bytes]]
    ) -> tuple[Headers, int | None, bool]:
        """S2/S4 for responses: exactly one Server and one Date; the body's length, which the
        server frames; whether H6's header asked for a check (it is removed)."""
        out: Headers = []
        named: set[bytes] = set()
        server = date = None
        length = None
        manual = False
        check_header = self.check_header
        for raw_name, value in raw:
            name = raw_name.lower()
            if name in RESPONSE_DROPPED:
                if name == b"connection":
                    named.update(t.strip().lower() for t in value.split(b","))
                elif name == b"content-length":
                    length = int(value)  # the upstream parser validated it
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
        return out, length, manual

    async def _request_body(self, request: Request) -> AsyncIterator[bytes]:
        """S1: the client's body as the server framed it, with back-pressure. A client that
        leaves or breaks it raises ClientDisconnected here: the upstream client then aborts
        the app's request instead of ending the body as if it were complete (S3)."""
        progress = self._progress
        while True:
            self._client_wait_started()  # H9: waiting for the client's bytes is not the app's
            try:
                chunk = await request.read()
            finally:
                self._client_wait_finished()
            if not chunk:
                return
            yield chunk
            progress()  # the upstream client asks for more once it wrote this one

    async def _answer_check(self, request: Request) -> None:
        """H5: run (or share) a check and answer with its result."""
        outcome = await self.warden.check("gateway")
        body: dict[str, object] = {"passed": outcome.passed, "check": outcome.to_dict()}
        if not outcome.passed:
            body["reason"] = outcome.error or f"health check answered {outcome.status}"
        self._answer(request, 200 if outcome.passed else 503, json.dumps(body).encode(), [JSON])

    def _answer(self, request: Request, status: int, body: bytes, headers: Headers) -> None:
        """A response runwarden makes itself."""
        request.respond(status, [*headers, (b"server", SERVER), (b"date", self._date())], body)
        self.metrics.record_request(status, "runwarden")

    def drain_timed_out(self, request: Request) -> bool:
        """D6: a request still in flight when the drain ends: answered 503 (the gateway
        retries it elsewhere) if its response has not started (True), else cut."""
        drain = self.drain
        headers = [*drain.refusal_headers, (b"server", SERVER), (b"date", self._date())]
        answered = request.abandon(503, headers, drain.timeout_body)
        if answered:
            self.metrics.record_request(503, "runwarden")
        return answered


def _access_line(request: Request, seconds: float) -> None:
    """One access-log line per proxied request (`--access-log`); the JSON log format makes
    each part a field."""
    status = request.status if request.started else 499
    access_log.info(
        '%s "%s %s HTTP/%s" %d %.1fms', request.client, request.method,
        request.target.decode("latin-1"), request.version, status, seconds * 1000,
        extra={"client": request.client, "method": request.method,
               "target": request.target.decode("latin-1"), "status": status,
               "duration_ms": round(seconds * 1000, 3)},
    )  # fmt: skip


def _nothing() -> None:
    """Stands in for H9's accounting calls when no H9 rule reads them."""
