"""Draining (SPEC D1, D2): once a runner is being replaced or stopped, it takes no new work
and lets the work it has finish, for at most `drain_timeout_seconds`.

`Drain` is the small piece of state the proxy consults on every request (one attribute
read) and the runner awaits: why we drain, and how many proxied requests are in flight.
"""

from __future__ import annotations

import asyncio
import json
import time

SHUTDOWN = "shutdown"
"""The drain reason of a clean stop (SIGTERM/SIGINT); not a replacement."""

REASON_HEADER = b"x-runwarden-draining"
"""Names why a request was refused while draining (a replace reason, or `shutdown`)."""

RETRY_AFTER_SECONDS = 1
"""What refused clients are told: another runner should take the request at once."""


class Drain:
    """Whether and why the runner drains, and the proxied requests still in flight."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.detail = ""
        self.started_at: float | None = None
        self.in_flight = 0
        self.started = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        # Built once per drain, sent to every refused request.
        self.refusal_body = b""
        self.refusal_headers: list[tuple[bytes, bytes]] = []

    @property
    def replacing(self) -> bool:
        """Draining because the runner must be replaced (not a clean stop)."""
        return self.reason is not None and self.reason != SHUTDOWN

    def begin(self, reason: str, detail: str) -> bool:
        """Start draining (D1): from now on new requests are refused. The first reason wins."""
        if self.reason is not None:
            return False
        self.reason = reason
        self.detail = detail
        self.started_at = time.monotonic()
        self.refusal_body = json.dumps(
            {"error": "runner is draining", "reason": reason, "detail": detail}
        ).encode()
        self.refusal_headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
            (REASON_HEADER, reason.encode("ascii", "replace")),
            (b"connection", b"close"),
        ]
        self.started.set()
        return True

    def enter(self) -> None:
        """A proxied request started."""
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        """A proxied request ended (completed, failed or cancelled)."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """D2: wait until no proxied request is in flight; False if `timeout` came first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
