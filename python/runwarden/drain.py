"""Draining (SPEC D1, D2, D6): what it takes besides the verdict, which the core owns.

Once the runner drains, refused requests get the same answer, built once here from the
verdict; and the runner waits here for the last request in flight to leave (the count is
the core's, `Warden.in_flight`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from runwarden._core import Verdict

REASON_HEADER = b"x-runwarden-draining"
"""Names why a request was refused while draining (a replace reason, or `shutdown`)."""

RETRY_AFTER_SECONDS = 1
"""What refused clients are told: another runner should take the request at once."""


class Drain:
    """The drain's answers, and a wait for the last request in flight."""

    def __init__(self, in_flight: Callable[[], int]) -> None:
        self._in_flight = in_flight
        self._idle: asyncio.Future[None] | None = None  # only while the runner waits
        # Built once per drain, sent to every refused request.
        self.refusal_body = b""
        self.timeout_body = b""
        self.refusal_headers: list[tuple[bytes, bytes]] = []

    def begin(self, verdict: Verdict) -> None:
        """D1: build the answer every refused request gets from now on."""
        reason, detail = verdict.reason, verdict.detail
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

    def left(self, remaining: int) -> None:
        """A proxied request left; `remaining` are still in flight."""
        if remaining == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def wait_idle(self, timeout: float) -> bool:
        """D2: wait until no proxied request is in flight; False if `timeout` came first."""
        if self._in_flight() == 0:
            return True
        self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except asyncio.TimeoutError:
            return False
        return True
