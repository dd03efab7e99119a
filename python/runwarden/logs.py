"""runwarden's log: text for people (the default), or one JSON object per line for log
pipelines (`--log-format json`, python-json-logger).

Every JSON line has `time` (UTC, ISO 8601, milliseconds), `level`, `logger` and `message`;
the lines that decide the runner's fate (a verdict, the exit) add `reason`, `detail` and
`exit_code` as fields (`fields()` builds them), and access-log lines (`--access-log`, logger
`runwarden.access`) their request's parts.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(level: str, form: str = "text") -> None:
    """Log to stderr at `level`, as text or JSON; replaces any earlier setup."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(json_formatter() if form == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def json_formatter() -> logging.Formatter:
    formatter = JsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )
    formatter.converter = time.gmtime
    formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
    formatter.default_msec_format = "%s.%03dZ"
    return formatter


def fields(reason: str, detail: str, exit_code: int | None) -> dict[str, Any]:
    """The `extra` of a line about the runner's fate: its parts as JSON fields."""
    return {"reason": reason, "detail": detail, "exit_code": exit_code}
