"""Draining (SPEC D1, D2, D6): once a runner is being replaced or stopped, it takes no new
work and lets the work it has finish, for at most `drain_timeout_seconds`.

`Drain` is the small piece of state the proxy consults on every request (one attribute
read) and the runner awaits: why we drain, and how many proxied requests are in flight.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

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
        self._idle: asyncio.Future[None] | None = None  # only while the runner waits
        self._listeners: list[Callable[[], None]] = []
        # Built once per drain, sent to every refused request.
        self.refusal_body = b""
        self.timeout_body = b""
        self.refusal_headers: list[tuple[bytes, bytes]] = []

    @property
    def replacing(self) -> bool:
        """Draining because the runner must be replaced (not a clean stop)."""
        return self.reason is not None and self.reason != SHUTDOWN

    def on_begin(self, listener: Callable[[], None]) -> None:
        """Call `listener` when the drain begins, in the same loop turn."""
        self._listeners.append(listener)

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
        self.timeout_body = json.dumps(
            {
                "error": "runner is draining",
                "reason": reason,
                "detail": "the request was still in flight when the drain timeout ended; "
                "retry it on another runner",
            }
        ).encode()
        self.refusal_headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
            (REASON_HEADER, reason.encode("ascii", "replace")),
        ]
        self.started.set()
        for listener in self._listeners:
            listener()
        return True

    def enter(self) -> None:
        """A proxied request started."""
        self.in_flight += 1

    def leave(self) -> None:
        """A proxied request ended (completed, failed or cancelled)."""
        self.in_flight -= 1
        if self.in_flight == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def wait_idle(self, timeout: float) -> bool:
        """D2: wait until no proxied request is in flight; False if `timeout` came first."""
        if self.in_flight == 0:
            return True
        self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except asyncio.TimeoutError:
            return False
        return True
