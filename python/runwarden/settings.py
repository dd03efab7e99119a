"""The sidecar's settings (SPEC C): one table, read from the command line and from
`RUNWARDEN_*` environment variables (the command line wins).

Each setting is declared once. The core's (health checks, the data plane, GPU monitoring)
are declared in `rust/settings.rs` and arrive here as `runwarden._core.SETTINGS`; the
process's own (the app, logs, the orchestrator) are `SIDECAR` below. From the one table come
the command-line options, the environment names, `--help`, `/status` and
`docs/settings.md`, under one name each: `--failure-threshold` is
`RUNWARDEN_FAILURE_THRESHOLD`, `failure_threshold` in `/status`, in `HealthSettings(...)` and in
the Rust core. The core validates its settings (text becomes a value here, bounds are
checked there); this module the process's. A bad value raises `ConfigError`, whose
`setting` names it; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import argparse
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from runwarden import app_limits
from runwarden._core import SETTINGS, GpuSettings, HealthSettings, ProxySettings, SettingsError
from runwarden.profiles import NAMES as PROFILE_NAMES
from runwarden.profiles import PROFILES

ENV_PREFIX = "RUNWARDEN_"
# Environment variables under the prefix that are not options: the fake NVML driver's state
# file (runwarden.testing), read by the driver inside this process.
NOT_OPTIONS = frozenset({"RUNWARDEN_FAKE_NVML_STATE"})
# Kubernetes' service links: a Service named `runwarden` puts RUNWARDEN_SERVICE_HOST,
# RUNWARDEN_PORT=tcp://10.0.0.1:8080, RUNWARDEN_PORT_8080_TCP_ADDR, … into every container of
# its namespace (unless the pod sets enableServiceLinks: false). They are not options.
SERVICE_LINK = re.compile(
    r"^RUNWARDEN_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$"
)
SERVICE_LINK_VALUE = re.compile(r"^(tcp|udp|sctp)://", re.IGNORECASE)


class ConfigError(ValueError):
    """An invalid option: the message names it and says what is allowed; `setting` is its
    name, as data."""

    def __init__(self, message: str, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


# --- value parsers: text (the command line, the environment) to a value -----------------


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


def _optional_number(text: str) -> float | None:
    if text.strip().lower() in ("", "off", "none"):
        return None
    return _number(text)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text!r}")


def _text(text: str) -> str:
    return text


def _optional_text(text: str) -> str | None:
    return text or None


def _xids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.replace(" ", "").split(",") if part]
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
        out[rule] = _number(seconds)
    return out


def _choice(words: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in words:
            raise argparse.ArgumentTypeError(f"must be {' or '.join(words)}, got {text!r}")
        return lowered

    return parse


def _at_least(low: float, strict: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(text)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(
                f"must be {'>' if strict else '>='} {low:g}, got {text!r}"
            )
        return value

    return parse


def _app_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(
            f"must look like http://HOST:PORT[/PREFIX] (plain HTTP, no query), got {text!r}"
        )
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise argparse.ArgumentTypeError(f"has an invalid port: {text!r}") from None
    if parts.username is not None or parts.password is not None:
        raise argparse.ArgumentTypeError(
            f"must not carry credentials (user:password@): {parts.hostname!r}"
        )
    if any(c.isspace() for c in parts.path):
        raise argparse.ArgumentTypeError(f"has a space in its path: {text!r}")
    return text.strip().rstrip("/")


def _list(text: str) -> list[str]:
    """'127.0.0.0/8, ::1' -> ['127.0.0.0/8', '::1']; empty: none. The core checks each."""
    return [part.strip() for part in text.split(",") if part.strip()]


def _auto(text: str) -> int | None:
    """'auto' -> None (the core derives it); else a whole number."""
    if text.strip().lower() in ("", "auto"):
        return None
    return _int(text)


def _termination_path(text: str) -> str:
    """A file path, or "" for off."""
    stripped = text.strip()
    return "" if stripped.lower() in ("", "off", "none") else stripped


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"must be debug, info, warning or error, got {text!r}")
    return level


ALL_GPUS = "all"


def _gpus(text: str) -> list[str] | str:
    """'0,2' or 'GPU-…,MIG-…' -> a list; 'all' -> 'all' (every GPU, said explicitly)."""
    if text.strip().lower() == ALL_GPUS:
        return ALL_GPUS
    return [part.strip() for part in text.split(",") if part.strip()]


def watched_gpus(
    app_command: Sequence[str], env: Mapping[str, str]
) -> tuple[list[str] | None, str]:
    """G5, when `--gpus` is unset: the GPUs the runner uses, and where that came from. The
    supervised app's CUDA_VISIBLE_DEVICES (from an `env VAR=…` prefix of its command, else
    inherited from runwarden), else NVIDIA_VISIBLE_DEVICES (a container runtime's), else
    runwarden's own CUDA_VISIBLE_DEVICES, else every GPU."""
    own = env.get("CUDA_VISIBLE_DEVICES")
    if app_command:
        prefixed = _env_prefix(app_command).get("CUDA_VISIBLE_DEVICES")
        if prefixed is not None:
            return _gpu_list(prefixed), "CUDA_VISIBLE_DEVICES of the app's command"
        if own is not None:
            return _gpu_list(own), "CUDA_VISIBLE_DEVICES, which the app inherits"
    nvidia = env.get("NVIDIA_VISIBLE_DEVICES")
    if nvidia is not None and nvidia.strip().lower() not in ("all", "", "void", "none"):
        return _gpu_list(nvidia), "NVIDIA_VISIBLE_DEVICES"
    if own is not None:
        return _gpu_list(own), "CUDA_VISIBLE_DEVICES"
    return None, "every GPU (no --gpus, CUDA_VISIBLE_DEVICES or NVIDIA_VISIBLE_DEVICES)"


def _gpu_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _env_prefix(command: Sequence[str]) -> dict[str, str]:
    """The assignments of `env [-i] NAME=VALUE ... PROGRAM`, the way a command sets an
    environment without a shell."""
    if not command or command[0].rsplit("/", 1)[-1] != "env":
        return {}
    out = {}
    for arg in command[1:]:
        if arg.startswith("-"):
            continue
        name, sep, value = arg.partition("=")
        if not sep:
            break
        out[name] = value
    return out


# The core's kinds, read from text; the core checks the bounds.
CORE_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": _int,
    "number": _number,
    "optional_number": _optional_number,
    "bool": _bool,
    "optional_bool": _bool,
    "path": _text,
    "choice": _text,
    "optional_text": _optional_text,
    "xids": _xids,
    "promotions": _promotions,
    "gpus": _gpus,
    "port": _int,
    "host": _text,
    "text": _text,
    "header_name": _text,
    "networks": _list,
    "auto": _auto,
}


# --- the table ------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One setting: its name (snake case, as everywhere), how text becomes its value, its
    default and its help. `group` is "health" or "gpu" for the core's, "sidecar" else."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    group: str = "sidecar"
    shown: str | None = None
    """How `--help` and the docs show a default that is "nothing" (None)."""
    switch: bool = False
    """An on/off option whose default (None) is derived from other settings."""

    @property
    def flag(self) -> bool:
        return isinstance(self.default, bool) or self.switch

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def default_text(self) -> str:
        """The default as a person types it on the command line."""
        value = self.default
        if value is None:
            return self.shown or "none"
        if value == "":
            return '""'
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return ",".join(str(v) for v in value) or "none"
        if isinstance(value, dict):
            return ",".join(f"{k}={v:g}" for k, v in value.items()) or "none"
        if isinstance(value, float):
            return f"{value:g}"
        return str(value)


def _core_spec(row: Mapping[str, Any]) -> Spec:
    shown = {
        "stall_seconds": "off",
        "nvml_library": "libnvidia-ml.so.1, found by the dynamic loader",
        "gpus": "from the environment, else all",
        "max_connections": "auto: (fd limit - 256) / 2",
        "max_app_connections": "auto: a quarter of the app's fd limit, at most 1024",
        "exclusive_checks": "on when call_regularly is off",
        "cuda_library": "libcuda.so.1, found by the dynamic loader",
        "max_queue": "auto: 4 x max_concurrency",
        "request_timeout_seconds": "off",
    }.get(row["name"])
    return Spec(
        name=row["name"],
        parse=CORE_PARSERS[row["kind"]],
        default=row["default"],
        help=row["help"],
        group=row["group"],
        shown=shown,
        switch=row["kind"] == "optional_bool",
    )


CORE: tuple[Spec, ...] = tuple(_core_spec(row) for row in SETTINGS)
HEALTH = tuple(s for s in CORE if s.group == "health")
PROXY = tuple(s for s in CORE if s.group == "proxy")
GPU = tuple(s for s in CORE if s.group == "gpu")

SIDECAR: tuple[Spec, ...] = (
    Spec("app_url", _app_url, "http://127.0.0.1:8000",
         "the app's address, with a path prefix the app is mounted under if any; requests "
         "and checks go only there"),
    Spec("app_profile", _choice(PROFILE_NAMES), "generic",
         "a known model server (vllm, sglang, tgi, triton): its health path, method, "
         "whether its check is thorough (run alone) and its start-up budget (20 minutes to "
         "load a model), for every one of them not set explicitly (docs/profiles.md)"),
    Spec("sidecar", _bool, False,
         "the app runs in another container of the pod (shareProcessNamespace: true, one "
         "user): a replacement stops the process listening on the app's port, so its "
         "container restarts, and runwarden starts over instead of exiting (K2)"),
    Spec("termination_message_path", _termination_path, None,
         "where the one-line exit reason is written for the orchestrator; off: nowhere (K1)",
         shown="/dev/termination-log when writable, else off"),
    Spec("app_stop_timeout_seconds", _at_least(0, False), 10.0,
         "SIGTERM to SIGKILL delay for the supervised app (D3)"),
    Spec("gpu_monitoring", _bool, True, "watch the GPUs through NVML (off without a driver)"),
    Spec("log_level", _log_level, "INFO", "log level: debug, info, warning or error"),
    Spec("log_format", _choice(("text", "json")), "text",
         "text, or one JSON object per line (time, level, logger, message; reason, detail "
         "and exit_code on verdicts and exits), the supervised app's output included "
         "(logger app, with its stream and pid)"),
)  # fmt: skip

SPECS: tuple[Spec, ...] = HEALTH + PROXY + SIDECAR + GPU
"""Every setting, in the order `--help` lists them."""
BY_NAME = {s.name: s for s in SPECS}


class Settings:
    """Everything `runwarden serve` needs, validated: every setting's value by its name
    (`settings.port`), the core's as `health` and `gpu`, and the app command."""

    def __init__(
        self,
        values: Mapping[str, Any],
        health: HealthSettings,
        proxy: ProxySettings,
        gpu: GpuSettings | None,
        app_command: tuple[str, ...] = (),
        gpu_selection: str = "",
    ) -> None:
        self._values = dict(values)
        self.health = health
        self.proxy = proxy
        self.gpu = gpu
        """None when GPU monitoring is off."""
        self.app_command = app_command
        self.gpu_selection = gpu_selection
        """Where the GPUs to watch came from (G5): `--gpus`, or which variable."""
        self.notes: list[str] = []
        """What reading the settings found worth a warning, for the log once it is set up."""
        self.sources: dict[str, str] = {}
        """Where each setting's value came from: option, environment, profile NAME, the
        command's own defaults (demo), or default (`/status`'s `setting_sources`)."""
        self.serve_app: tuple[str, str, int, str, dict[str, Any]] | None = None
        """`runwarden run`: the app (MODULE:APP), its host and port, where to import it from,
        and the options given (SPEC E7)."""

    def override(self, **values: Any) -> None:
        """Set values decided outside the table (`runwarden run`'s host and port: the app's)."""
        self._values.update(values)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r}") from None

    def to_dict(self) -> dict[str, object]:
        """`/status`'s settings: each once, under its name, as the core holds it."""
        out: dict[str, object] = {s.name: self._values[s.name] for s in SIDECAR}
        out.update(self.health.to_dict())
        out.update(self.proxy.to_dict())
        out.update((self.gpu or GpuSettings()).to_dict())
        return out  # the app command is /status's `app` section's


RULE_IDS = re.compile(r" ?\((?:[A-Z]\d*)(?:, [A-Z]\d*)*\)")
"""The SPEC's rule IDs in a help text, such as " (H4)": kept in docs/, left out of --help."""

HELP_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("the app and its process", frozenset({
        "app_url", "app_profile", "sidecar", "app_stop_timeout_seconds",
        "termination_message_path", "app_protocol"})),
    ("health checks", frozenset(s.name for s in HEALTH) | {"check_header",
                                                          "check_trusted_sources"}),
    ("the runner's door: concurrency, queue, timeouts", frozenset({
        "max_concurrency", "max_queue", "queue_timeout_seconds", "request_timeout_seconds"})),
    ("proxy and limits", frozenset(s.name for s in PROXY) - {"admin_host", "admin_port",
                                                             "access_log"}),
    ("admin port and metrics", frozenset({"admin_host", "admin_port", "gpu_metrics"})),
    ("GPU monitoring", frozenset(s.name for s in GPU) | {"gpu_monitoring"}),
    ("logging", frozenset({"log_level", "log_format", "access_log"})),
)  # fmt: skip
"""`--help`'s sections: each option in the first whose names hold it."""


def add_options(
    parser: argparse.ArgumentParser,
    defaults: Mapping[str, Any] | None = None,
    specs: Sequence[Spec] = SPECS,
    defaults_source: str = "default",
) -> None:
    """Add each option of `specs` (every one by default) to `parser`, in `HELP_GROUPS`'
    sections; values left unset are None (the environment or the default fills them).
    `defaults` replace the table's defaults for this command, and `/status`'s
    `setting_sources` names them `defaults_source` (`runwarden demo`'s: demo)."""
    overrides = dict(defaults or {})
    groups = {title: parser.add_argument_group(title) for title, _ in HELP_GROUPS}
    for spec in specs:
        title = next(t for t, names in HELP_GROUPS if spec.name in names)
        group = groups[title]
        shown = str(overrides[spec.name]) if spec.name in overrides else spec.default_text
        help_text = f"{RULE_IDS.sub('', spec.help)} (default: {shown}; env {spec.env})"
        if spec.flag:
            group.add_argument(spec.cli, dest=spec.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)  # fmt: skip
        else:
            metavar = spec.name.upper().split("_")[-1] if spec.parse is not _text else "TEXT"
            group.add_argument(spec.cli, dest=spec.name, type=spec.parse, default=None,
                               metavar=metavar, help=help_text)  # fmt: skip
    parser.set_defaults(_runwarden_defaults=overrides, _runwarden_source=defaults_source)


def suggest(name: str, known: Iterable[str]) -> str:
    """ " (did you mean X?)" for the known name nearest a misspelled one, or nothing."""
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean {near[0]}?)" if near else ""


def resolve(
    args: argparse.Namespace, env: Mapping[str, str], app_command: Sequence[str] = ()
) -> Settings:
    """Merge parsed options with the environment and defaults; validate; build Settings."""
    overrides: Mapping[str, Any] = args._runwarden_defaults
    links = sorted(k for k, v in env.items() if _service_link(k, v))
    env = {k: v for k, v in env.items() if k not in links}
    unknown = sorted(
        k for k in env if k.startswith(ENV_PREFIX) and k not in _ENV_NAMES and k not in NOT_OPTIONS
    )
    if unknown:
        hint = suggest(unknown[0], _ENV_NAMES)
        raise ConfigError(
            f"unknown environment variable {unknown[0]}: not a runwarden option{hint} "
            f"(see `runwarden serve --help` for the RUNWARDEN_* names)"
        )
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SPECS:
        value = getattr(args, spec.name)
        source = "option"
        if value is None and spec.env in env:
            source = "environment"
            try:
                value = spec.parse(env[spec.env])
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{spec.env} (option {spec.cli}) {exc}", spec.name) from None
        if value is None:
            source = "default"
            value = spec.default
            if spec.name in overrides:
                source = getattr(args, "_runwarden_source", "default")
                value = overrides[spec.name]
        values[spec.name] = value
        sources[spec.name] = source
    # A profile fills what was not given explicitly; an explicit option wins.
    profile = values["app_profile"]
    for name, value in PROFILES[profile].items():
        if sources[name] == "default":
            values[name] = value
            sources[name] = f"profile {profile}"
    door_note = app_limits.fit_door(values, sources, app_command)
    if values["gpus"] is None:
        values["gpus"], selection = watched_gpus(app_command, env)
    elif values["gpus"] == ALL_GPUS:
        values["gpus"], selection = None, "--gpus all"
    else:
        selection = "--gpus"
    try:
        health = HealthSettings(**{s.name: values[s.name] for s in HEALTH})
        proxy = ProxySettings(**{s.name: values[s.name] for s in PROXY})
        gpu = GpuSettings(**{s.name: values[s.name] for s in GPU})
    except SettingsError as exc:
        raise _named(exc) from None
    # The core's values as it checked them (a header name lowercased, networks normalised).
    gpus = values["gpus"]
    for checked in (health, proxy, gpu):
        values.update(checked.to_dict())
    values["gpus"] = gpus
    if values["sidecar"] and app_command:
        raise ConfigError(
            "--sidecar guards an app in another container; an app command after -- makes "
            "runwarden its parent: use one or the other",
            "sidecar",
        )
    on = values["gpu_monitoring"]
    settings = Settings(values, health, proxy, gpu if on else None, tuple(app_command), selection)
    settings.sources = sources
    if door_note:
        settings.notes.append(door_note)
    if links:
        settings.notes.append(
            f"ignored {', '.join(links)}: Kubernetes service links of a Service named "
            "runwarden, not options (set enableServiceLinks: false in the pod, or name the "
            "Service otherwise)"
        )
    return settings


PROXY_ONLY: frozenset[str] = frozenset({
    "host", "port", "app_url", "app_protocol", "header_timeout_seconds", "keep_alive_seconds",
    "client_body_timeout_seconds", "send_timeout_seconds", "tunnel_idle_timeout_seconds",
    "max_connections", "max_app_connections", "proxy_threads", "access_log", "sidecar",
    "app_stop_timeout_seconds", "check_protocol", "grpc_health_service",
})  # fmt: skip
"""Settings of the proxy front with no meaning inside the app's own process (SPEC E): the
proxy's listener and connections, the app's process, checks over the network. The app's
server owns its port and its connections there."""


def resolve_embedded(given: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    """The embedded front's settings (SPEC E2): `given` (the middleware's keywords, a
    `HealthCheck`'s fields) win over `RUNWARDEN_*`, then the profile, then the default. An
    unknown name, one of the proxy's, or a bad value raises ConfigError naming it."""
    values: dict[str, Any] = {}
    for name, value in given.items():
        spec = BY_NAME.get(name)
        if spec is None:
            known = [s.name for s in SPECS if s.name not in PROXY_ONLY]
            raise ConfigError(f"unknown setting {name!r}{suggest(name, known)}", name)
        if name in PROXY_ONLY:
            raise ConfigError(
                f"{name} is the proxy's (runwarden serve) and does not apply inside the app's "
                "process, where the app's server holds the port and the connections",
                name,
            )
        if spec.group == "sidecar" and isinstance(value, str):
            try:
                value = spec.parse(value)
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{name} {exc}", name) from None
        values[name] = value
    args = argparse.Namespace(**{s.name: values.get(s.name) for s in SPECS})
    args._runwarden_defaults = {}
    proxy_env = {BY_NAME[name].env for name in PROXY_ONLY}
    env = {k: v for k, v in env.items() if k not in proxy_env}
    return resolve(args, env)


def _service_link(name: str, value: str) -> bool:
    """A variable Kubernetes made for a Service named `runwarden`, not one of our options.
    RUNWARDEN_PORT is both: as a link its value is `tcp://ADDRESS:PORT`."""
    if name == "RUNWARDEN_PORT":
        return bool(SERVICE_LINK_VALUE.match(value.strip()))
    return bool(SERVICE_LINK.match(name))


def _named(exc: SettingsError) -> ConfigError:
    """The core's error, with the option and the variable it came from."""
    spec = BY_NAME.get(exc.setting or "")
    where = f"{spec.cli} (env {spec.env}): " if spec is not None else ""
    return ConfigError(f"{where}{exc}", exc.setting)


_ENV_NAMES = frozenset(s.env for s in SPECS)


def markdown() -> str:
    """`docs/settings.md`: every setting, generated from the one table (`make docs`)."""
    sections = [
        ("Health checks (SPEC H)", HEALTH, "rust/settings.rs"),
        ("The data plane (SPEC P, S, D, A)", PROXY, "rust/settings.rs"),
        ("The process (SPEC C, D, K)", SIDECAR, "python/runwarden/settings.py"),
        ("GPU monitoring (SPEC G)", GPU, "rust/settings.rs"),
    ]
    out = [
        "# Settings",
        "",
        "<!-- generated by `make docs` (python -m runwarden.settings); do not edit -->",
        "",
        "Every setting is an option of `runwarden serve` and an environment variable; the "
        "command line wins. `/status` shows each under its name, as `HealthSettings(...)` and "
        "`GpuSettings(...)` take it.",
    ]
    for title, specs, source in sections:
        out += ["", f"## {title}", "", f"Declared in `{source}`.", ""]
        out += ["| option | environment | default | meaning |", "|---|---|---|---|"]
        out += [f"| `{s.cli}` | `{s.env}` | `{s.default_text}` | {s.help} |" for s in specs]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
