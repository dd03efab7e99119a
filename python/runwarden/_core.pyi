"""The Rust core's Python face: settings in, events out.

The core owns every thread and every clock: the health-check scheduler and its
probes, the data plane that serves the proxy and admin ports (with `proxy`
settings), and, with GPU monitoring, the NVML sampler and event watcher. None of
them holds the GIL. Python hears about state changes through `Core.event_fd()`,
a socket the asyncio loop watches, and `Core.drain_events()`.
"""

from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any, Literal, TypedDict, final

from typing_extensions import Self, disjoint_base

Trigger = Literal["regular", "gateway", "extra", "manual", "startup"]
Counted = Literal[
    "pass", "counted", "start_period", "busy", "manual", "not_ready", "after_replace", "local"
]
# The names of REASONS below; tests/test_seam.py checks the two agree.
Reason = Literal[
    "shutdown", "health_check", "manual_check", "app_503", "gpu_fault", "stalled", "app_exited"
]
State = Literal["starting", "ready", "replacing", "stopping", "stopped"]

__all__ = [
    "BUILT_FROM",
    "GPU_RULES",
    "PROMOTABLE_WARNINGS",
    "REASONS",
    "SETTINGS",
    "AccessLine",
    "Answer",
    "AppCheck",
    "AsgiEntry",
    "CheckOutcome",
    "Core",
    "Drained",
    "Entered",
    "Front",
    "GpuFinding",
    "GpuMonitoring",
    "GpuSamples",
    "GpuSettings",
    "HealthSettings",
    "LogLine",
    "PortsClosed",
    "ProxySettings",
    "SettingsError",
    "Ticket",
    "Verdict",
    "Waiting",
    "__version__",
    "fd_limits",
]

__version__: str
BUILT_FROM: str
"""The directory of the checkout the extension was compiled in (it may be gone since: a wheel
built elsewhere, or a temporary copy)."""

SETTINGS: list[dict[str, Any]]
"""Every setting of the core, declared once in `rust/settings.rs`: name, group ("health",
"proxy" or "gpu"), kind, expected, default, help, and min/strict/choices where they apply."""
REASONS: list[tuple[Reason, int, str]]
"""Why a runner drains: (reason, exit code, meaning), a clean stop first (D4)."""
GPU_RULES: list[tuple[str, Literal["warning", "fatal"], str]]
"""Every rule a GPU finding can name: (rule, severity, when) (G2, G3)."""
PROMOTABLE_WARNINGS: list[str]
"""The warnings `gpu_promote_warnings` can make fatal once sustained (G3)."""

class SettingsError(ValueError):
    """A setting is invalid; the message names it, says what is allowed and what was given."""

    setting: str | None
    """The setting's name, as data."""

@final
class HealthSettings:
    """The health-check settings of SPEC H, validated (H7). Immutable. The defaults here are
    copies of `SETTINGS`'; tests/test_settings.py checks they agree."""

    start_period_seconds: int
    timeout_seconds: float
    failure_threshold: int
    call_regularly: bool
    period_seconds: float
    startup_check_seconds: float
    startup_timeout_seconds: float
    health_path: str
    health_method: Literal["GET", "POST"]
    check_protocol: Literal["http", "grpc"]
    grpc_health_service: str
    exclusive_checks: bool | None
    allow_on_busy: bool
    stall_seconds: float | None
    trigger_interval_seconds: float
    history_size: int
    def __new__(
        cls,
        *,
        start_period_seconds: int = 30,
        timeout_seconds: float = 5.0,
        failure_threshold: int = 3,
        call_regularly: bool = True,
        period_seconds: float = 15.0,
        startup_check_seconds: float = 0.5,
        startup_timeout_seconds: float = 0.0,
        health_path: str = "/health",
        health_method: str = "GET",
        check_protocol: str = "http",
        grpc_health_service: str = "",
        exclusive_checks: bool | None = None,
        allow_on_busy: bool = False,
        stall_seconds: float | None = None,
        trigger_interval_seconds: float = 1.0,
        history_size: int = 100,
    ) -> HealthSettings: ...
    @property
    def effective_start_period_seconds(self) -> float:
        """H1: max(start_period_seconds, startup_timeout_seconds)."""
    def to_dict(self) -> dict[str, object]: ...

@final
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
    made_ready: bool
    """This pass made the runner ready (its first)."""
    def to_dict(self) -> dict[str, object]: ...

@final
class Verdict:
    """Why the runner drains: a clean stop or a replacement (D1, D4). The first wins; sent
    once."""

    reason: Reason
    detail: str
    age_seconds: float
    exit_code: int
    replacing: bool
    """Every reason but `shutdown` replaces the runner."""
    def to_dict(self) -> dict[str, object]: ...

@final
class GpuSettings:
    """GPU monitoring settings (SPEC G), validated. Immutable. Defaults copied from `SETTINGS`
    (checked by tests/test_settings.py)."""

    gpus: list[str] | None
    gpu_required: bool
    gpu_sample_seconds: float
    nvml_watchdog_seconds: float
    nvml_library: str | None
    gpu_temperature_warning_celsius: int
    gpu_fatal_xids: list[int]
    gpu_warning_xids: list[int]
    gpu_ignored_xids: list[int]
    gpu_retired_pages_fatal: int
    gpu_remapped_rows_fatal: int
    gpu_promote_warnings: dict[str, float]
    gpu_canary_seconds: float | None
    gpu_canary_timeout_seconds: float
    cuda_library: str | None
    gpu_metrics: Literal["dcgm", "runwarden", "off"]
    def __new__(
        cls,
        *,
        gpus: list[str] | None = None,
        gpu_required: bool = False,
        gpu_sample_seconds: float = 5.0,
        nvml_watchdog_seconds: float = 10.0,
        nvml_library: str | None = None,
        gpu_temperature_warning_celsius: int = 85,
        gpu_fatal_xids: list[int] = [48, 64, 74, 79, 95, 119, 120, 140],
        gpu_warning_xids: list[int] = [38, 54, 56, 57, 58, 61, 62, 63, 92, 94, 121, 150],
        gpu_ignored_xids: list[int] = [13, 31, 43, 45, 68, 109],
        gpu_retired_pages_fatal: int = 63,
        gpu_remapped_rows_fatal: int = 512,
        gpu_promote_warnings: dict[str, float] = {},
        gpu_canary_seconds: float | None = 60.0,
        gpu_canary_timeout_seconds: float = 5.0,
        cuda_library: str | None = None,
        gpu_metrics: str = "dcgm",
    ) -> GpuSettings: ...
    def to_dict(self) -> dict[str, object]: ...

@final
class ProxySettings:
    """The data plane's settings (SPEC P, S, D), validated. Immutable. Defaults copied from
    `SETTINGS` (checked by tests/test_settings.py)."""

    host: str
    port: int
    admin_host: str
    admin_port: int
    app_protocol: Literal["http1", "h2c"]
    check_header: str
    check_trusted_sources: list[str]
    header_timeout_seconds: float
    keep_alive_seconds: float
    client_body_timeout_seconds: float
    send_timeout_seconds: float
    tunnel_idle_timeout_seconds: float
    max_connections: int | None
    max_app_connections: int | None
    max_concurrency: int
    max_queue: int | None
    queue_timeout_seconds: float
    request_timeout_seconds: float | None
    drain_timeout_seconds: float
    access_log: bool
    proxy_threads: int
    def __new__(
        cls,
        *,
        host: str = "0.0.0.0",
        port: int = 8080,
        admin_host: str = "0.0.0.0",
        admin_port: int = 8081,
        app_protocol: str = "http1",
        check_header: str = "x-fal-runner-health-check",
        check_trusted_sources: list[str] = ["127.0.0.0/8", "::1/128"],
        header_timeout_seconds: float = 10.0,
        keep_alive_seconds: float = 75.0,
        client_body_timeout_seconds: float = 60.0,
        send_timeout_seconds: float = 60.0,
        tunnel_idle_timeout_seconds: float = 300.0,
        max_connections: int | None = None,
        max_app_connections: int | None = None,
        max_concurrency: int = 0,
        max_queue: int | None = None,
        queue_timeout_seconds: float = 30.0,
        request_timeout_seconds: float | None = None,
        drain_timeout_seconds: float = 30.0,
        access_log: bool = False,
        proxy_threads: int = 1,
    ) -> ProxySettings: ...
    def to_dict(self) -> dict[str, object]: ...

class EccCounts(TypedDict):
    volatile_corrected: int | None
    volatile_uncorrected: int | None
    aggregate_corrected: int | None
    aggregate_uncorrected: int | None

class RetiredPages(TypedDict):
    single_bit: int
    double_bit: int
    pending: bool

class RemappedRows(TypedDict):
    correctable: int
    uncorrectable: int
    pending: bool
    failure: bool

class ReadError(TypedDict):
    call: str
    error: str

class GpuSample(TypedDict):
    """One GPU in one sample (G1), as `rust/gpu_bindings.rs` builds it; tests/test_seam.py
    checks the keys agree."""

    index: int
    uuid: str | None
    name: str | None
    pci_bus_id: str | None
    temperature_c: int | None
    memory_temperature_c: int | None
    sm_clock_mhz: int | None
    memory_clock_mhz: int | None
    throttle_reasons: int | None
    power_mw: int | None
    gpu_utilization: int | None
    memory_utilization: int | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    energy_mj: int | None
    pcie_replays: int | None
    ecc: EccCounts
    retired_pages: RetiredPages | None
    remapped_rows: RemappedRows | None
    errors: list[ReadError]

@final
class GpuSamples:
    """One sample of every GPU (G1, G4): a dict per GPU, and what the sample cost."""

    samples: list[GpuSample]
    cost_seconds: float

@final
class GpuFinding:
    """A GPU warning or fault (G2, G3). A fatal one is followed by Verdict(gpu_fault)."""

    gpu: int | None
    uuid: str | None
    rule: str
    severity: Literal["warning", "fatal"]
    detail: str
    xid: int | None
    age_seconds: float
    def to_dict(self) -> dict[str, object]: ...

@final
class GpuMonitoring:
    """GPU monitoring started, or is off and why. Sent once."""

    enabled: bool
    detail: str

@final
class LogLine:
    """A line for runwarden's log, from the data plane."""

    level: Literal["debug", "info", "warning", "error"]
    logger: str
    message: str

@final
class AccessLine:
    """One request on the proxy port, for the access log (`--access-log`)."""

    client: str
    method: str
    target: str
    version: str
    status: int
    """499: the client left before its answer."""
    duration_seconds: float

@final
class Drained:
    """The drain's wait for requests in flight is over (D2, D6); the ports may close."""

    in_flight: int
    """Requests still in flight when the wait ended (0: all finished in time)."""
    answered: int
    """Of those, answered 503 with Retry-After (their answer had not started)."""
    cut: int
    """Of those, cut mid-response (streams, tunnels)."""

@final
class PortsClosed:
    """The proxy port is closed (D6)."""

    cut: int
    """Connections still open at the deadline, cut."""

@final
class AppCheck:
    """Embedded (E4): call the app's health route on this loop and answer check `call`
    (`Core.answer_check`)."""

    call: int

@final
class Entered:
    """Embedded (Q2): the wait named `call` at the door is over (`Waiting.take`)."""

    call: int

@disjoint_base
class AsgiEntry:
    """Embedded (SPEC E): the ASGI middleware's base; its `__call__` is the core's. Until
    `serve_from_core`, every call goes to the subclass's `_slow(scope, receive, send)`; after,
    a request the front admits at once goes to the app from here (its `Ticket`), any other
    to `_other(entry, scope, receive, send)`, and a cancelled one to
    `_cancelled(ticket, send, exc)`."""

    def __new__(cls, *_args: Any, **_kwargs: Any) -> Self: ...
    def serve_from_core(self, front: Front, app: Any) -> None:
        """From now on, requests `front` admits at once are sent to `app` from the core."""
    def __call__(
        self, scope: MutableMapping[str, Any], receive: Any, send: Any
    ) -> Awaitable[None]: ...

@final
class Front:
    """Embedded (SPEC E): the front requests enter the runner by (`Core.front()`)."""

    def enter(self, scope: MutableMapping[str, Any], send: Any) -> Ticket | Answer | Waiting | None:
        """A new request (an ASGI scope of type http or websocket, and the server's `send`):
        a `Ticket` to call the app with (it is the app's `send`), an `Answer` runwarden gives
        itself (D1, Q2), a `Waiting` for a place at the app (Q2), or None for a trusted
        gateway's check request (H5). An untrusted peer's check header is removed from
        `scope`."""
    def check_answer(self, outcome: CheckOutcome | None = None) -> Answer:
        """H5: the answer to a gateway's check request (None: the check was abandoned)."""
    def past_the_drain(self) -> Answer:
        """D6: the answer to a request still in flight at the drain's deadline that had not
        begun its response."""

@final
class Ticket:
    """One request at the app; its `app_send` is the app's `send`: it judges the response
    (R1, R4, H6), adds `Connection: close` while draining (D6), then sends; the response's
    last part ends the visit (so does `done()`, or letting the ticket go). When the core
    calls the app itself (`AsgiEntry`), the ticket is also the awaitable the server awaits:
    it drives the app's coroutine and judges how it ended (R4, D6)."""

    @property
    def app_send(self) -> Callable[[MutableMapping[str, Any]], Awaitable[None]]:
        """The `send` the app is given (a builtin function bound to this ticket)."""
    def __await__(self) -> Generator[Any, Any]: ...
    def __next__(self) -> Any: ...
    def send(self, value: Any) -> Any:
        """A step of the call with `value` sent in (the coroutine protocol's `send`)."""
    def throw(self, *args: Any) -> Any: ...
    def close(self) -> None: ...
    def raised(self) -> None:
        """The app raised: the request is over; before its response began, the server
        answers 500 (R4)."""
    @property
    def responded(self) -> bool:
        """Whether the app's response has begun."""
    def timed_out(self) -> Answer | None:
        """Q3: the 504 to send if the response had not begun (None: cut it)."""
    def done(self) -> None:
        """The app returned: the request leaves the runner (D2, Q2, H6)."""

@final
class Waiting:
    """A request waiting for a place at the app (Q2)."""

    @property
    def call(self) -> int:
        """The `Entered` event's `call`."""
    def take(self) -> Ticket | Answer | None:
        """After `Entered`: the ticket (now at the app) or the door's refusal."""
    def abandon(self) -> None:
        """The client left: its place goes to the next in line; it never reaches the app."""

@final
class Answer:
    """An answer runwarden gives itself, as ASGI's response messages take it."""

    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> list[tuple[bytes, bytes]]: ...
    @property
    def body(self) -> bytes: ...

Event = (
    CheckOutcome
    | Verdict
    | GpuSamples
    | GpuFinding
    | GpuMonitoring
    | LogLine
    | AccessLine
    | Drained
    | AppCheck
    | Entered
    | PortsClosed
)

def fd_limits() -> tuple[int, int]:
    """The soft fd limit runwarden was started with (the supervised app keeps it) and the one
    in force, raised to the hard limit on the first call."""

@final
class Core:
    """The core's threads: the runner's (its life and checks), GPU monitoring's, and (with
    `proxy`) the data plane's, which serves both ports. Create, `start()`, read events,
    `stop()`."""

    def __new__(
        cls,
        health: HealthSettings,
        app_url: str,
        gpu: GpuSettings | None = None,
        proxy: ProxySettings | None = None,
        embedded: bool = False,
    ) -> Core: ...
    def start(self) -> None:
        """Bind both ports (OSError if one cannot be had; nothing else has started then), then
        start every thread; runner age (H2) counts from now."""
    def set_info(self, key: str, value: str) -> None:
        """A section of /status that Python owns (`settings`, `app`, `gpu_selection`), as
        JSON text."""
    def app_started(self) -> None:
        """The supervised app was (re)started: runner age counts from now (H2)."""
    def restart(self) -> bool:
        """K2: the replaced app was restarted beside a runwarden that stays up: back to
        starting, no failure counted, the age from now, the history kept, the ports open.
        False (nothing changes) unless a replacement is draining."""
    def hurry(self) -> None:
        """D2: a second stop signal: stop waiting for requests in flight."""
    def close_ports(self) -> None:
        """D6, after `Drained`: stop listening on the proxy port, answer what had arrived,
        close the connections; `PortsClosed` follows."""
    def limits(self) -> tuple[int, int] | None:
        """The client connections the proxy port may hold and the requests the app may have
        at once; None without a data plane."""
    def stop(self, timeout_seconds: float = 2.0) -> bool:
        """Stop and join the threads within the bound; False if one had to be left behind."""
    def request_check(self, trigger: Literal["gateway", "extra"]) -> int | CheckOutcome:
        """H5/R4: the id of the check whose outcome answers this trigger (a running one is
        shared, a new one is started), or, when rate-limited, the latest outcome itself."""
    def front(self) -> Front | None:
        """Embedded (E2): the front requests enter by; None before `start`, or for a proxy."""
    def answer_check(self, call: int, status: int | None = None, error: str | None = None) -> bool:
        """Embedded (E4): the app's loop answers check `call` with its route's status, or why
        it gave none; False if the check is no longer waited for."""
    def check_wanted(self, call: int) -> bool:
        """Embedded: whether check `call` is still waited for."""
    def manual_check(self) -> None:
        """H6: run a check as soon as possible; its failure replaces the runner at once."""
    def replace(self, reason: Reason, detail: str) -> Verdict | None:
        """Replace for a reason found outside the core (app_exited). The verdict after it:
        this one, or the one that came first."""
    def shutdown(self, detail: str) -> Verdict | None:
        """A clean stop (a signal, D4): drain, exit 0, unless another verdict came first."""
    def verdict(self) -> Verdict | None:
        """Why the runner drains; None while it does not."""
    def finish(self) -> int | None:
        """The drain is over: the runner is stopped; its exit code (None: nothing drained)."""
    def in_flight(self) -> int:
        """Proxied requests in flight (tunnels and streams included)."""
    def event_fd(self) -> int:
        """A readable socket: it becomes readable when events are waiting."""
    def drain_events(self) -> list[Event]:
        """Take every waiting event (never blocks); clears the fd's readiness."""
    def history(self) -> list[CheckOutcome]:
        """The bounded check history (H8), oldest first."""
    def state(self) -> dict[str, Any]:
        """A snapshot of the runner's life: state, ready, reason, detail, exit_code,
        draining_since_age_seconds, age_seconds, consecutive_failures, running_check,
        health_url."""
    def gpu_status(self) -> dict[str, Any] | None:
        """GPU monitoring for /status: enabled, detail, samples, findings; None if not asked."""
