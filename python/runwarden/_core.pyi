"""The Rust core's Python face: settings in, events out.

The core owns every thread and every clock: the health-check scheduler and its
probes (and, with GPU monitoring, the NVML sampler and event watcher). None of
them holds the GIL. Python hears about state changes through `Core.event_fd()`,
a socket the asyncio loop watches, and `Core.drain_events()`.
"""

from collections.abc import Iterable
from typing import Any, Literal

Trigger = Literal["regular", "gateway", "extra", "manual", "startup"]
Counted = Literal[
    "pass", "counted", "start_period", "busy", "manual", "not_ready", "after_replace", "local"
]
Reason = Literal["health_check", "manual_check", "app_503", "gpu_fault", "stalled", "app_exited"]

__version__: str

class SettingsError(ValueError):
    """A setting is invalid; the message names it, says what is allowed and what was given."""

class HealthCheck:
    """The health-check settings of SPEC H, validated (H7). Immutable."""

    start_period_seconds: int
    timeout_seconds: float
    failure_threshold: int
    call_regularly: bool
    period_seconds: float
    startup_timeout_seconds: float
    health_path: str
    health_method: Literal["GET", "POST"]
    allow_on_busy: bool
    stall_seconds: float | None
    trigger_interval_seconds: float
    history_size: int
    def __init__(
        self,
        *,
        start_period_seconds: int = 30,
        timeout_seconds: float = 5.0,
        failure_threshold: int = 3,
        call_regularly: bool = True,
        period_seconds: float = 15.0,
        startup_timeout_seconds: float = 0.0,
        health_path: str = "/health",
        health_method: str = "GET",
        allow_on_busy: bool = False,
        stall_seconds: float | None = None,
        trigger_interval_seconds: float = 1.0,
        history_size: int = 100,
    ) -> None: ...
    @property
    def effective_start_period_seconds(self) -> float:
        """H1: max(start_period_seconds, startup_timeout_seconds)."""
    def to_dict(self) -> dict[str, object]: ...

class CheckOutcome:
    """One finished health check (H8), as the scheduler judged it."""

    id: int
    triggers: list[Trigger]
    passed: bool
    status: int | None
    error: str | None
    latency_seconds: float
    age_seconds: float
    counted: Counted
    consecutive_failures: int
    def to_dict(self) -> dict[str, object]: ...

class Replace:
    """The runner must be replaced: drain and exit with the reason's code. Sent once."""

    reason: Reason
    detail: str
    age_seconds: float
    def to_dict(self) -> dict[str, object]: ...

class GpuSettings:
    """GPU monitoring settings (SPEC G), validated. Immutable."""

    sample_seconds: float
    watchdog_seconds: float
    library: str
    def __init__(
        self,
        *,
        sample_seconds: float = 5.0,
        watchdog_seconds: float = 10.0,
        library: str | None = None,
        temperature_warning_celsius: int = 85,
        fatal_xids: Iterable[int] = ...,
        warning_xids: Iterable[int] = ...,
        ignored_xids: Iterable[int] = ...,
        retired_pages_fatal: int = 63,
        remapped_rows_fatal: int = 512,
        promote_warnings: dict[str, float] | None = None,
    ) -> None: ...
    def to_dict(self) -> dict[str, object]: ...

class GpuSamples:
    """One sample of every GPU (G1, G4): a dict per GPU, and what the sample cost."""

    samples: list[dict[str, Any]]
    cost_seconds: float

class GpuFinding:
    """A GPU warning or fault (G2, G3). A fatal one is followed by Replace(gpu_fault)."""

    gpu: int | None
    uuid: str | None
    rule: str
    severity: Literal["warning", "fatal"]
    detail: str
    xid: int | None
    age_seconds: float
    def to_dict(self) -> dict[str, object]: ...

class GpuMonitoring:
    """GPU monitoring started, or is off and why. Sent once."""

    enabled: bool
    detail: str

Event = CheckOutcome | Replace | GpuSamples | GpuFinding | GpuMonitoring

class Core:
    """The scheduler and its threads. Create, `start()`, feed it traffic, read events, `stop()`."""

    def __init__(
        self, health: HealthCheck, app_url: str, gpu: GpuSettings | None = None
    ) -> None: ...
    def start(self) -> None:
        """Start the threads (GPU monitoring's too, if asked for); runner age (H2) counts
        from now."""
    def app_started(self) -> None:
        """The supervised app was (re)started: runner age counts from now (H2)."""
    def stop(self, timeout_seconds: float = 2.0) -> bool:
        """Stop and join the threads within the bound; False if one had to be left behind."""
    def request_check(self, trigger: Literal["gateway", "extra"]) -> int | CheckOutcome:
        """H5/R4: the id of the check whose outcome answers this trigger (a running one is
        shared, a new one is started), or, when rate-limited, the latest outcome itself."""
    def manual_check(self) -> None:
        """H6: run a check as soon as possible; its failure replaces the runner at once."""
    def report_response(self, status: int) -> None:
        """An app response's status: 503 replaces (R1); 500/502/504 ask for an extra check (R4)."""
    def replace(self, reason: Reason, detail: str) -> bool:
        """Replace for a reason found outside the core (app_exited). False if already replacing."""
    def request_started(self) -> None:
        """H9 accounting: a proxied request entered (counts as progress)."""
    def request_progress(self) -> None:
        """H9 accounting: a byte moved to or from the app."""
    def request_finished(self) -> None:
        """H9 accounting: a proxied request left."""
    def client_wait_started(self) -> None:
        """H9 accounting: a request is blocked on its client (a body not sent yet, a client
        not reading), not on the app; it does not count toward a stall meanwhile."""
    def client_wait_finished(self) -> None:
        """H9 accounting: the client moved; the request waits on the app again."""
    def event_fd(self) -> int:
        """A readable socket: it becomes readable when events are waiting."""
    def drain_events(self) -> list[Event]:
        """Take every waiting event (never blocks); clears the fd's readiness."""
    def history(self) -> list[CheckOutcome]:
        """The bounded check history (H8), oldest first."""
    def state(self) -> dict[str, object]:
        """A snapshot: age, ready, replacing reason, consecutive failures, settings."""
    def gpu_status(self) -> dict[str, Any] | None:
        """GPU monitoring for /status: enabled, detail, samples, findings; None if not asked."""
