"""The sidecar's settings (SPEC C): one table of options, read from the command line
and from `RUNWARDEN_*` environment variables (the command line wins).

Each option is named after the setting it sets, the same in the CLI (`--failure-threshold`),
the environment (`RUNWARDEN_FAILURE_THRESHOLD`), `/status` and the Rust core. The health
settings are validated by the core (`HealthCheck`); the rest here. A bad value raises
`ConfigError` naming the option; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from runwarden._core import GpuSettings, HealthCheck, SettingsError

ENV_PREFIX = "RUNWARDEN_"
# Environment variables under the prefix that are not options: the fake NVML driver's state
# file (runwarden.testing), read by the driver inside this process.
NOT_OPTIONS = frozenset({"RUNWARDEN_FAKE_NVML_STATE"})
# The GPU policy's defaults live in the core; shown here for --help and /status.
GPU_DEFAULTS = GpuSettings().to_dict()


class ConfigError(ValueError):
    """An invalid option: the message names it and says what is allowed."""


# --- value parsers: each raises argparse.ArgumentTypeError with a reason -----------------


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None


def _number(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _optional_seconds(text: str) -> float | None:
    if text.strip().lower() in ("", "off", "none"):
        return None
    return _number(text)


def _port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1-65535, got {text!r}")
    return value


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


# Headers the proxy frames, drops or sets itself: a check header named like one would
# corrupt every request or response.
RESERVED_HEADERS = frozenset(
    {
        "connection", "keep-alive", "proxy-connection", "proxy-authenticate",
        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
        "content-length", "expect", "host", "server", "date",
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    }
)  # fmt: skip


def _header_name(text: str) -> str:
    if not _TOKEN.match(text):
        raise argparse.ArgumentTypeError(f"must be an HTTP header name, got {text!r}")
    if text.lower() in RESERVED_HEADERS:
        raise argparse.ArgumentTypeError(
            f"must not be a header the proxy frames or sets itself, got {text!r}"
        )
    return text.lower()


def _app_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(
            f"must look like http://HOST:PORT (plain HTTP, no query), got {text!r}"
        )
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise argparse.ArgumentTypeError(f"has an invalid port: {text!r}") from None
    return text.strip().rstrip("/")


def _networks(text: str) -> tuple[str, ...]:
    """'127.0.0.0/8, ::1' -> ('127.0.0.0/8', '::1/128'); empty: nobody."""
    out = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be addresses or CIDR networks separated by commas, got {part!r}"
            ) from None
    return tuple(out)


def _connections(text: str) -> int | None:
    if text.strip().lower() in ("", "auto"):
        return None
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 or auto, got {text!r}")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


def _xids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be XID numbers separated by commas, got {text!r}"
        ) from None


def _promotions(text: str) -> dict[str, float]:
    """'temperature=60,power_brake=30' -> {'temperature': 60.0, 'power_brake': 30.0}."""
    out: dict[str, float] = {}
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        rule, sep, seconds = part.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(
                f"must be WARNING=SECONDS pairs separated by commas, got {text!r}"
            )
        out[rule] = _non_negative(seconds)
    return out


def _xid_default(name: str) -> str:
    return ",".join(str(x) for x in GPU_DEFAULTS[name])  # type: ignore[attr-defined]


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"must be debug, info, warning or error, got {text!r}")
    return level


# --- the option table ------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    name: str  # the setting's name, snake case
    parse: Callable[[str], Any]
    default: Any
    help: str
    health: bool = False  # a HealthCheck setting (validated by the core)
    flag: bool = False  # --name / --no-name

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


OPTIONS: tuple[Option, ...] = (
    # SPEC H: the health check, validated by the core.
    Option(
        "start_period_seconds",
        _int,
        30,
        "failures are not counted while the runner is younger",
        True,
    ),
    Option("timeout_seconds", _number, 5.0, "a check not answered by then has failed", True),
    Option("failure_threshold", _int, 3, "consecutive failed checks that replace the runner", True),
    Option(
        "call_regularly", _bool, True, "run checks on a schedule (else only on request)", True, True
    ),
    Option("period_seconds", _number, 15.0, "seconds between scheduled checks", True),
    Option(
        "startup_timeout_seconds",
        _number,
        0.0,
        "the app's startup budget (raises the start period)",
        True,
    ),
    Option("health_path", str, "/health", "the app's health path", True),
    Option("health_method", str, "GET", "the health check's HTTP method (GET or POST)", True),
    Option(
        "allow_on_busy", _bool, False, "do not count failures while requests move bytes", True, True
    ),
    Option(
        "stall_seconds",
        _optional_seconds,
        None,
        "replace when in-flight requests move no byte this long",
        True,
    ),
    Option("trigger_interval_seconds", _number, 1.0, "rate limit of gateway/extra checks", True),
    Option("history_size", _int, 100, "check outcomes kept for /status", True),
    # The sidecar.
    Option(
        "app_url", _app_url, "http://127.0.0.1:8000", "the app's address; requests go only there"
    ),
    Option("host", str, "0.0.0.0", "the proxy's listen address"),
    Option("port", _port, 8080, "the proxy's listen port"),
    Option(
        "admin_host",
        str,
        "127.0.0.1",
        "the admin port's listen address (/livez /readyz /status /metrics)",
    ),
    Option("admin_port", _port, 8081, "the admin port"),
    Option(
        "check_header",
        _header_name,
        "x-fal-runner-health-check",
        "header that asks for a check (H5, H6)",
    ),
    Option(
        "check_trusted_sources",
        _networks,
        "127.0.0.0/8,::1",
        "peers whose check header triggers a check (H5); others' is dropped",
    ),
    Option(
        "header_timeout_seconds",
        _positive,
        10.0,
        "a request head must arrive within this of the connection or its first byte",
    ),
    Option("keep_alive_seconds", _positive, 75.0, "an idle client connection is closed after this"),
    Option(
        "max_connections",
        _connections,
        None,
        "client connections held at once on the proxy port",
    ),
    Option(
        "drain_timeout_seconds",
        _non_negative,
        30.0,
        "how long in-flight requests may finish when draining",
    ),
    Option(
        "app_stop_timeout_seconds",
        _non_negative,
        10.0,
        "SIGTERM to SIGKILL delay for the supervised app",
    ),
    # GPU monitoring (SPEC G), run by the core.
    Option(
        "gpu_monitoring",
        _bool,
        True,
        "watch the GPUs through NVML (off without a driver)",
        False,
        True,
    ),
    Option("gpu_sample_seconds", _positive, 5.0, "seconds between NVML samples"),
    Option(
        "nvml_watchdog_seconds", _positive, 10.0, "an NVML call slower than this is a GPU fault"
    ),
    Option("nvml_library", str, None, "path of the NVML library to load"),
    Option(
        "gpu_temperature_warning_celsius",
        _int,
        GPU_DEFAULTS["temperature_warning_celsius"],
        "a GPU hotter than this is a warning",
    ),
    Option("gpu_fatal_xids", _xids, _xid_default("fatal_xids"), "XIDs that replace the runner"),
    Option("gpu_warning_xids", _xids, _xid_default("warning_xids"), "XIDs that warn"),
    Option("gpu_ignored_xids", _xids, _xid_default("ignored_xids"), "XIDs ignored (app errors)"),
    Option(
        "gpu_retired_pages_fatal",
        _int,
        GPU_DEFAULTS["retired_pages_fatal"],
        "retired pages that replace the runner",
    ),
    Option(
        "gpu_remapped_rows_fatal",
        _int,
        GPU_DEFAULTS["remapped_rows_fatal"],
        "uncorrectable remapped rows that replace the runner",
    ),
    Option(
        "gpu_promote_warnings",
        _promotions,
        "",
        "warnings fatal once sustained, as WARNING=SECONDS,... (temperature, power_brake, "
        "hw_slowdown, hw_thermal_slowdown, sw_thermal_slowdown, pending_retirement, "
        "pending_remap, corrected_ecc)",
    ),
    Option("log_level", _log_level, "INFO", "log level: debug, info, warning or error"),
)

OPTIONS_BY_NAME = {o.name: o for o in OPTIONS}
# How --help shows the options whose default is "nothing".
EMPTY_DEFAULTS = {
    "stall_seconds": "off",
    "max_connections": "auto: (fd limit - 256) / 2",
    "nvml_library": "libnvidia-ml.so.1, found by the dynamic loader",
    "gpu_promote_warnings": "none",
}
HEALTH_OPTIONS = tuple(o for o in OPTIONS if o.health)


@dataclass(frozen=True)
class Settings:
    """Everything `runwarden serve` needs, validated."""

    health: HealthCheck
    app_url: str = "http://127.0.0.1:8000"
    host: str = "0.0.0.0"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 8081
    check_header: str = "x-fal-runner-health-check"
    check_trusted_sources: Any = ("127.0.0.0/8", "::1/128")
    header_timeout_seconds: float = 10.0
    keep_alive_seconds: float = 75.0
    max_connections: int | None = None
    drain_timeout_seconds: float = 30.0
    app_stop_timeout_seconds: float = 10.0
    gpu_monitoring: bool = True
    gpu_sample_seconds: float = 5.0
    nvml_watchdog_seconds: float = 10.0
    nvml_library: str | None = None
    gpu_temperature_warning_celsius: int = 85
    gpu_fatal_xids: Any = None
    gpu_warning_xids: Any = None
    gpu_ignored_xids: Any = None
    gpu_retired_pages_fatal: int = 63
    gpu_remapped_rows_fatal: int = 512
    gpu_promote_warnings: Any = None
    log_level: str = "INFO"
    app_command: tuple[str, ...] = field(default=())
    # Built from the gpu_* options by `resolve`; None when monitoring is off.
    gpu: GpuSettings | None = None

    def to_dict(self) -> dict[str, object]:
        """The settings as `/status` shows them, under the same names as the options."""
        out: dict[str, object] = dict(self.health.to_dict())
        for option in OPTIONS:
            if not option.health:
                out[option.name] = getattr(self, option.name)
        out["app_command"] = list(self.app_command)
        for name in ("gpu_fatal_xids", "gpu_warning_xids", "gpu_ignored_xids",
                     "check_trusted_sources"):  # fmt: skip
            out[name] = list(out[name] or ())  # type: ignore[call-overload]
        return out


def add_options(parser: argparse.ArgumentParser, defaults: Mapping[str, Any] | None = None) -> None:
    """Add every option to `parser`; values left unset are None (the env or default fills them)."""
    defaults = {**{o.name: o.default for o in OPTIONS}, **(defaults or {})}
    for option in OPTIONS:
        default = defaults[option.name]
        shown = EMPTY_DEFAULTS.get(option.name, default) if default in (None, "") else default
        help_text = f"{option.help} (default: {shown}; env {option.env})"
        if option.flag:
            parser.add_argument(
                option.cli,
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                option.cli,
                dest=option.name,
                type=option.parse,
                default=None,
                metavar=option.name.upper().split("_")[-1] if option.parse is not str else "TEXT",
                help=help_text,
            )
    parser.set_defaults(_runwarden_defaults=defaults)


def resolve(
    args: argparse.Namespace, env: Mapping[str, str], app_command: Sequence[str] = ()
) -> Settings:
    """Merge parsed options with the environment and defaults; validate; build Settings."""
    defaults: Mapping[str, Any] = args._runwarden_defaults
    known = {o.env for o in OPTIONS}
    unknown = sorted(
        k for k in env if k.startswith(ENV_PREFIX) and k not in known and k not in NOT_OPTIONS
    )
    if unknown:
        raise ConfigError(
            f"unknown environment variable {unknown[0]}: not a runwarden option "
            f"(see `runwarden serve --help` for the RUNWARDEN_* names)"
        )
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.name)
        if value is None and option.env in env:
            try:
                value = option.parse(env[option.env])
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{option.env} (option {option.cli}) {exc}") from None
        if value is None:
            value = defaults[option.name]
        values[option.name] = value

    try:
        health = HealthCheck(**{o.name: values.pop(o.name) for o in HEALTH_OPTIONS})
    except SettingsError as exc:
        raise ConfigError(f"{_option_named_in(str(exc))}{exc}") from None
    if isinstance(values["check_trusted_sources"], str):  # the default, as shown in --help
        values["check_trusted_sources"] = _networks(values["check_trusted_sources"])
    return Settings(health=health, app_command=tuple(app_command), gpu=_gpu(values), **values)


# The GPU options and the core's GpuSettings names they set.
GPU_OPTION_NAMES = {
    "gpu_sample_seconds": "sample_seconds",
    "nvml_watchdog_seconds": "watchdog_seconds",
    "nvml_library": "library",
    "gpu_temperature_warning_celsius": "temperature_warning_celsius",
    "gpu_fatal_xids": "fatal_xids",
    "gpu_warning_xids": "warning_xids",
    "gpu_ignored_xids": "ignored_xids",
    "gpu_retired_pages_fatal": "retired_pages_fatal",
    "gpu_remapped_rows_fatal": "remapped_rows_fatal",
    "gpu_promote_warnings": "promote_warnings",
}


def _gpu(values: dict[str, Any]) -> GpuSettings | None:
    """The core's GPU settings from the gpu_* options; a bad one is a ConfigError naming it."""
    if not values["gpu_monitoring"]:
        return None
    for name in ("gpu_fatal_xids", "gpu_warning_xids", "gpu_ignored_xids"):
        if isinstance(values[name], str):  # the default, as shown in --help
            values[name] = _xids(values[name])
    if isinstance(values["gpu_promote_warnings"], str):
        values["gpu_promote_warnings"] = _promotions(values["gpu_promote_warnings"])
    try:
        return GpuSettings(**{core: values[option] for option, core in GPU_OPTION_NAMES.items()})
    except SettingsError as exc:
        message = str(exc)
        for option, core in sorted(GPU_OPTION_NAMES.items(), key=lambda kv: -len(kv[1])):
            if message.startswith((core, option)):
                cli = OPTIONS_BY_NAME[option]
                raise ConfigError(f"{cli.cli} (env {cli.env}): {message}") from None
        raise ConfigError(message) from None


def _option_named_in(message: str) -> str:
    """'--failure-threshold: ' for a core message that names failure_threshold."""
    for option in sorted(HEALTH_OPTIONS, key=lambda o: -len(o.name)):
        if option.name in message:
            return f"{option.cli} (env {option.env}): "
    return ""
