"""The asyncio face of the Rust core, and its only one: awaitable checks, the runner's
verdict, the drain's end, and snapshots.

The core owns the runner's life (starting → ready → draining → stopped, `rust/lifecycle.rs`)
and the data plane that serves both ports: readiness, the verdict, the exit code and the
drain live there and nowhere else. `verdict` here is a read-only mirror for the runner and
its log: set in the same call that made the core decide (a signal, the app's exit) or from
the core's event, whichever comes first, and then never changes.

The core's threads never touch the GIL. They queue events and make a socket readable;
`loop.add_reader` wakes us, and one non-blocking `drain_events()` takes them. The data
plane's log lines arrive the same way and are written here, by Python's logging.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from runwarden._core import (
    AccessLine,
    AppCheck,
    CheckOutcome,
    Core,
    Drained,
    Entered,
    Front,
    GpuFinding,
    GpuMonitoring,
    GpuSamples,
    GpuSettings,
    HealthSettings,
    LogLine,
    PortsClosed,
    ProxySettings,
    Verdict,
)
from runwarden.logs import fields

if TYPE_CHECKING:
    from runwarden._core import Reason

log = logging.getLogger("runwarden")
access_log = logging.getLogger("runwarden.access")
T = TypeVar("T")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip

OutcomeListener = Callable[[CheckOutcome], None]
VerdictListener = Callable[[Verdict], object]
GpuEvent = GpuSamples | GpuFinding | GpuMonitoring
GpuListener = Callable[[GpuEvent], None]
EmbeddedListener = Callable[[AppCheck | Entered], None]


class Warden:
    """Health checks of one app (and its GPUs, and both ports, when asked), run by the Rust
    core; results delivered on this loop."""

    def __init__(
        self,
        health: HealthSettings,
        app_url: str,
        gpu: GpuSettings | None = None,
        proxy: ProxySettings | None = None,
        embedded: bool = False,
    ) -> None:
        self.health = health
        self._core = core = Core(health, app_url, gpu, proxy, embedded)
        self.verdict: Verdict | None = None
        """Why the runner drains (the core's, mirrored); None while it does not."""
        self._waiting: dict[int, list[asyncio.Future[CheckOutcome]]] = {}
        self._listeners: list[OutcomeListener] = []
        self._gpu_listeners: list[GpuListener] = []
        self._verdict_listeners: list[VerdictListener] = []
        self._embedded_listener: EmbeddedListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._decided: asyncio.Future[Verdict] | None = None
        self._gpu_up: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[Drained] | None = None
        self._closed: asyncio.Future[PortsClosed] | None = None
        self.in_flight = core.in_flight
        self.set_info = core.set_info
        self.limits = core.limits

    async def start(self) -> None:
        """Bind both ports (OSError if one cannot be had), start the core's threads, and
        listen for its events on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._decided = self._loop.create_future()
        self._gpu_up = self._loop.create_future()
        self._drained = self._loop.create_future()
        self._closed = self._loop.create_future()
        self._loop.add_reader(self._core.event_fd(), self._on_events)
        try:
            self._core.start()
        except BaseException:
            self._loop.remove_reader(self._core.event_fd())
            raise

    async def stop(self, timeout_seconds: float = 2.0) -> bool:
        """Stop the core's threads, waiting at most `timeout_seconds` for them; False if one
        had to be left behind (a thread stuck in the NVML driver)."""
        if self._loop is not None:
            self._loop.remove_reader(self._core.event_fd())
        # Joining is bounded and releases the GIL, but keep it off the loop anyway.
        joined = await asyncio.to_thread(self._core.stop, timeout_seconds)
        for futures in self._waiting.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()
        self._waiting.clear()
        return joined

    # -- listening

    def on_outcome(self, listener: OutcomeListener) -> Callable[[], None]:
        """Call `listener` with every finished check (metrics, logs); returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def on_verdict(self, listener: VerdictListener) -> None:
        """Call `listener` with the verdict in the same loop turn it is known, before any
        other event of its batch: the drain must start before anything else (D1)."""
        self._verdict_listeners.append(listener)

    def on_gpu(self, listener: GpuListener) -> Callable[[], None]:
        """Call `listener` with every GPU sample, finding and monitoring state; returns an
        unsubscribe."""
        self._gpu_listeners.append(listener)
        return lambda: self._gpu_listeners.remove(listener)

    def on_embedded(self, listener: EmbeddedListener) -> None:
        """Embedded (SPEC E): call `listener` with each check the core asks of the app's loop
        and each wait at the door that ends."""
        self._embedded_listener = listener

    def front(self) -> Front:
        """Embedded: the front requests enter by (once started)."""
        front = self._core.front()
        assert front is not None, "Warden.start() first, with embedded=True"
        return front

    def answer_check(self, call: int, status: int | None, error: str | None = None) -> bool:
        """Embedded (E4): the app's loop answers check `call`."""
        return self._core.answer_check(call, status, error)

    def check_wanted(self, call: int) -> bool:
        return self._core.check_wanted(call)

    async def gpu_started(self) -> None:
        """Wait until GPU monitoring has taken its first sample, or is off, or the runner
        drains (a fault found on the way, G6)."""
        assert self._gpu_up is not None, "Warden.start() first"
        await asyncio.shield(self._gpu_up)

    async def decided(self) -> Verdict:
        """Wait for the verdict."""
        assert self._decided is not None, "Warden.start() first"
        return await asyncio.shield(self._decided)

    async def drained(self) -> Drained:
        """Wait for the drain's wait for requests in flight to end (D2, D6)."""
        assert self._drained is not None, "Warden.start() first"
        return await asyncio.shield(self._drained)

    async def close_ports(self) -> int:
        """D6: close the proxy port (answering what had arrived, lingering for requests on
        their way); how many connections had to be cut at the end."""
        assert self._closed is not None, "Warden.start() first"
        self._core.close_ports()
        return (await asyncio.shield(self._closed)).cut

    def hurry(self) -> None:
        """A second stop signal: stop waiting for requests in flight (D2)."""
        self._core.hurry()

    # -- asking the core

    def app_started(self) -> None:
        """The supervised app started: the runner's age counts from now (H2)."""
        self._core.app_started()

    async def check(self, trigger: Literal["gateway", "extra"] = "gateway") -> CheckOutcome:
        """Run a check now, or share the running one; rate-limited triggers get the latest."""
        answer = self._core.request_check(trigger)
        if isinstance(answer, CheckOutcome):
            return answer
        assert self._loop is not None, "Warden.start() first"
        fut: asyncio.Future[CheckOutcome] = self._loop.create_future()
        self._waiting.setdefault(answer, []).append(fut)
        return await fut

    def manual_check(self) -> None:
        self._core.manual_check()

    def replace(self, reason: Reason, detail: str) -> Verdict | None:
        """Replace for a reason found outside the core; the verdict that holds after it."""
        return self._mirror(self._core.replace(reason, detail))

    def shutdown(self, detail: str) -> Verdict | None:
        """A clean stop (D4); the verdict that holds after it (an earlier replacement's, if
        one came first)."""
        return self._mirror(self._core.shutdown(detail))

    def restart(self) -> bool:
        """K2: the replaced app's process is gone and its container restarts beside this
        runwarden: back to starting (no verdict, no failure counted, the age from now)."""
        if not self._core.restart():
            return False
        self.verdict = None
        assert self._loop is not None, "Warden.start() first"
        self._decided = self._loop.create_future()
        self._drained = self._loop.create_future()
        return True

    def finish(self) -> int | None:
        """The drain is over: the runner is stopped. Its exit code (D4)."""
        return self._core.finish()

    def snapshot(self) -> dict[str, Any]:
        """The runner's life for `/status` and `/readyz`: state, ready, reason, detail,
        exit code, age, failures; one read of the core."""
        return self._core.state()

    def history(self) -> list[CheckOutcome]:
        return self._core.history()

    def gpu_status(self) -> dict[str, Any] | None:
        return self._core.gpu_status()

    # -- events

    def _mirror(self, verdict: Verdict | None) -> Verdict | None:
        if verdict is not None and self.verdict is None:
            self.verdict = verdict
            (log.warning if verdict.replacing else log.info)(
                "%s: %s (%s)",
                "replacing the runner" if verdict.replacing else "stopping",
                verdict.reason,
                verdict.detail,
                extra=fields(verdict.reason, verdict.detail, verdict.exit_code),
            )
            if self._decided is not None and not self._decided.done():
                self._decided.set_result(verdict)
            self._gpu_settled()
            _notify(self._verdict_listeners, verdict)
        return self.verdict

    def _on_events(self) -> None:
        # In the order they happened, so the log tells the failure before the replacement
        # it caused (the core refuses new requests from the verdict on by itself, D1).
        for event in self._core.drain_events():
            if isinstance(event, Verdict):
                self._mirror(event)
            elif isinstance(event, CheckOutcome):
                for fut in self._waiting.pop(event.id, ()):
                    if not fut.done():
                        fut.set_result(event)
                _notify(self._listeners, event)
            elif isinstance(event, LogLine):
                logging.getLogger(event.logger).log(LEVELS[event.level], "%s", event.message)
            elif isinstance(event, AccessLine):
                _access_line(event)
            elif isinstance(event, Drained):
                _settle(self._drained, event)
            elif isinstance(event, PortsClosed):
                _settle(self._closed, event)
            elif isinstance(event, AppCheck | Entered):
                if self._embedded_listener is not None:
                    self._embedded_listener(event)
            else:
                if isinstance(event, GpuSamples) or (
                    isinstance(event, GpuMonitoring) and not event.enabled
                ):
                    self._gpu_settled()
                self._log_gpu(event)
                _notify(self._gpu_listeners, event)

    def _gpu_settled(self) -> None:
        if self._gpu_up is not None and not self._gpu_up.done():
            self._gpu_up.set_result(None)

    @staticmethod
    def _log_gpu(event: GpuEvent) -> None:
        if isinstance(event, GpuMonitoring):
            log.log(logging.INFO if event.enabled else logging.WARNING, "%s", event.detail)
        elif isinstance(event, GpuFinding):
            where = f" on GPU {event.gpu}" if event.gpu is not None else ""
            level = logging.ERROR if event.severity == "fatal" else logging.WARNING
            log.log(level, "GPU %s %s%s: %s", event.severity, event.rule, where, event.detail)


def _settle(future: asyncio.Future[T] | None, value: T) -> None:
    if future is not None and not future.done():
        future.set_result(value)


def _access_line(line: AccessLine) -> None:
    """One access-log line (`--access-log`); the JSON log format makes each part a field."""
    milliseconds = line.duration_seconds * 1000
    access_log.info(
        '%s "%s %s HTTP/%s" %d %.1fms', line.client, line.method, line.target, line.version,
        line.status, milliseconds,
        extra={"client": line.client, "method": line.method, "target": line.target,
               "status": line.status, "duration_ms": round(milliseconds, 3)},
    )  # fmt: skip


def _notify(listeners: Sequence[Callable[[T], object]], event: T) -> None:
    """Call each listener; one that raises is logged and does not stop the others."""
    for listener in list(listeners):
        try:
            listener(event)
        except Exception:
            log.exception("a listener of %s failed", type(event).__name__)
