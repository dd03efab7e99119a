"""runwarden's exit codes (SPEC D4): one per way it can end, documented in the README.

An orchestrator or a person reading `echo $?` can tell why a runner went away
without reading its log. Values avoid 1 (an unexpected crash of Python), 2 (bad
configuration, as argparse uses it), 126/127 (shell: not executable / not found)
and 128+n (killed by signal n).
"""

from __future__ import annotations

from typing import Final

CLEAN: Final = 0
"""Stopped by SIGTERM/SIGINT after draining (a clean stop)."""

BAD_CONFIG: Final = 2
"""An option or environment variable was invalid; nothing was started."""

STARTUP_FAILED: Final = 3
"""A port could not be bound or the app command could not be started."""

TABLE: Final[list[tuple[int, str, str]]] = [
    (CLEAN, "clean", "SIGTERM/SIGINT: drained, stopped the app, exited"),
    (BAD_CONFIG, "bad_config", "an invalid option or RUNWARDEN_* variable; nothing started"),
    (STARTUP_FAILED, "startup_failed", "a port was in use or the app command could not start"),
    (10, "health_check", "failure_threshold consecutive health checks failed (H4)"),
    (11, "manual_check", "a manual check requested by the app failed (H6)"),
    (12, "app_503", "the app answered a request with 503 (R1)"),
    (13, "gpu_fault", "a fatal GPU condition (G2)"),
    (14, "stalled", "in-flight requests moved no byte for stall_seconds (H9)"),
    (15, "app_exited", "the supervised app exited by itself (D5)"),
]

# A replacement reason's code: each reason of the SPEC has its own, from 10 up.
BY_REASON: Final[dict[str, int]] = {name: code for code, name, _ in TABLE if code >= 10}


def for_reason(reason: str | None) -> int:
    """The exit code for a replacement reason; None (a clean stop) is 0."""
    if reason is None:
        return CLEAN
    return BY_REASON[reason]
