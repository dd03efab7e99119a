"""K1: the termination message. On exit runwarden writes its one-line reason (code, reason,
detail) where the orchestrator shows it: Kubernetes reads a container's
`terminationMessagePath` (`/dev/termination-log` by default) into the pod's status, so
`kubectl describe pod` says why the runner went away without anyone reading its log.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("runwarden")

DEFAULT_PATH = "/dev/termination-log"
LIMIT = 4096
"""Kubernetes keeps at most this many bytes of the message."""


def resolve(setting: str | None) -> str | None:
    """The path to write: the setting ("", "off" or "none" is off), else the default when it
    exists and is writable (in a Kubernetes container), else none."""
    if setting is not None:
        setting = setting.strip()
        return None if setting.lower() in ("", "off", "none") else setting
    return DEFAULT_PATH if os.access(DEFAULT_PATH, os.W_OK) else None


def write(path: str | None, line: str) -> None:
    """Write `line` (cut to the limit) to `path`; a failure is logged and changes nothing
    else: the exit code stays the reason's."""
    if path is None:
        return
    data = (line.rstrip("\n") + "\n").encode("utf-8", "replace")[:LIMIT]
    try:
        with open(path, "wb") as out:
            out.write(data)
    except OSError as exc:
        log.warning("could not write the termination message to %s: %s", path, exc)
