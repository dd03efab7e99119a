"""The asyncio face of the Rust core: awaitable checks and a replacement verdict.

The core's threads never touch the GIL. They queue events and make a socket
readable; `loop.add_reader` wakes us, and one non-blocking `drain_events()` takes
them. This is simpler than completing futures from Rust through
`call_soon_threadsafe` (which would make Rust threads take the GIL) and needs no
polling loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

from runwarden._core import (
    CheckOutcome,
    Core,
    GpuFinding,
    GpuMonitoring,
    GpuSamples,
    GpuSettings,
    HealthCheck,
    Replace,
)

if TYPE_CHECKING:
    from runwarden._core import Reason

log = logging.getLogger("runwarden")
T = TypeVar("T")

OutcomeListener = Callable[[CheckOutcome], None]
ReplaceListener = Callable[[Replace], object]
GpuEvent = GpuSamples | GpuFinding | GpuMonitoring
GpuListener = Callable[[GpuEvent], None]


class Warden:
    """Health checks of one app (and its GPUs, when asked), run by the Rust core; results
    delivered on this loop."""

    def __init__(self, health: HealthCheck, app_url: str, gpu: GpuSettings | None = None) -> None:
        self.health = health
        self.core = Core(health, app_url, gpu)
        self._waiting: dict[int, list[asyncio.Future[CheckOutcome]]] = {}
        self._listeners: list[OutcomeListener] = []
        self._gpu_listeners: list[GpuListener] = []
        self._replace_listeners: list[ReplaceListener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._replaced: asyncio.Future[Replace] | None = None
        self.ready = False

    async def start(self) -> None:
        """Start the core's threads and listen for its events on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._replaced = self._loop.create_future()
        self._loop.add_reader(self.core.event_fd(), self._on_events)
        self.core.start()

    async def stop(self, timeout_seconds: float = 2.0) -> bool:
        """Stop the core's threads, waiting at most `timeout_seconds` for them; False if one
        had to be left behind (a thread stuck in the NVML driver)."""
        if self._loop is not None:
            self._loop.remove_reader(self.core.event_fd())
        # Joining is bounded and releases the GIL, but keep it off the loop anyway.
        joined = await asyncio.to_thread(self.core.stop, timeout_seconds)
        for futures in self._waiting.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        self._waiting.clear()
        return joined

    def on_outcome(self, listener: OutcomeListener) -> Callable[[], None]:
        """Call `listener` with every finished check (metrics, logs); returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_replace(self, listener: ReplaceListener) -> None:
        """Call `listener` with the replacement verdict in the same loop turn it arrives,
        before any other event of its batch: the drain must start before anything else."""
        self._replace_listeners.append(listener)

    def on_gpu(self, listener: GpuListener) -> Callable[[], None]:
        """Call `listener` with every GPU sample, finding and monitoring state; returns an
        unsubscribe."""
        self._gpu_listeners.append(listener)
        return lambda: self._gpu_listeners.remove(listener)

    async def check(self, trigger: Literal["gateway", "extra"] = "gateway") -> CheckOutcome:
        """Run a check now, or share the running one; rate-limited triggers get the latest."""
        answer = self.core.request_check(trigger)
        if isinstance(answer, CheckOutcome):
            return answer
        assert self._loop is not None, "Warden.start() first"
        fut: asyncio.Future[CheckOutcome] = self._loop.create_future()
        self._waiting.setdefault(answer, []).append(fut)
        return await fut

    async def replaced(self) -> Replace:
        """Wait for the replacement verdict (sent at most once)."""
        assert self._replaced is not None, "Warden.start() first"
        return await asyncio.shield(self._replaced)

    @property
    def replacement(self) -> Replace | None:
        if self._replaced is not None and self._replaced.done():
            return self._replaced.result()
        return None

    def manual_check(self) -> None:
        self.core.manual_check()

    def report_response(self, status: int) -> None:
        self.core.report_response(status)

    def replace(self, reason: Reason, detail: str) -> bool:
        return self.core.replace(reason, detail)

    def _on_events(self) -> None:
        events = self.core.drain_events()
        # The verdict first: a request arriving in this turn must already be refused.
        for event in events:
            if isinstance(event, Replace):
                self._on_replace(event)
        for event in events:
            if isinstance(event, CheckOutcome):
                if event.passed:
                    self.ready = True
                for fut in self._waiting.pop(event.id, ()):
                    if not fut.done():
                        fut.set_result(event)
                _notify(self._listeners, event)
            elif not isinstance(event, Replace):
                self._log_gpu(event)
                _notify(self._gpu_listeners, event)

    def _on_replace(self, event: Replace) -> None:
        log.warning("replacing the runner: %s (%s)", event.reason, event.detail)
        if self._replaced is not None and not self._replaced.done():
            self._replaced.set_result(event)
        _notify(self._replace_listeners, event)

    @staticmethod
    def _log_gpu(event: GpuEvent) -> None:
        if isinstance(event, GpuMonitoring):
            log.log(logging.INFO if event.enabled else logging.WARNING, "%s", event.detail)
        elif isinstance(event, GpuFinding):
            where = f" on GPU {event.gpu}" if event.gpu is not None else ""
            level = logging.ERROR if event.severity == "fatal" else logging.WARNING
            log.log(level, "GPU %s %s%s: %s", event.severity, event.rule, where, event.detail)


def _notify(listeners: Sequence[Callable[[T], object]], event: T) -> None:
    """Call each listener; one that raises is logged and does not stop the others."""
    for listener in list(listeners):
        try:
            listener(event)
        except Exception:
            log.exception("a listener of %s failed", type(event).__name__)
