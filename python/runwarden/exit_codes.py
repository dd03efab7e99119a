"""runwarden's exit codes (SPEC D4): one per way it can end, documented in the README.

An orchestrator or a person reading `echo $?` can tell why a runner went away without
reading its log. The reasons a runner drains, with their codes, are the core's
(`runwarden._core.REASONS`, declared in `rust/verdict.rs`); the two ways it can fail to
start are here. Values avoid 1 (an unexpected crash of Python), 126/127 (shell: not
executable / not found) and 128+n (killed by signal n).
"""

from __future__ import annotations

from typing import Final

from runwarden._core import REASONS

CLEAN: Final = 0
"""Stopped by SIGTERM/SIGINT after draining (a clean stop: the `shutdown` reason)."""

BAD_CONFIG: Final = 2
"""An option or environment variable was invalid; nothing was started."""

STARTUP_FAILED: Final = 3
"""A port could not be bound or the app command could not be started."""

TABLE: Final[list[tuple[int, str, str]]] = sorted(
    [
        (BAD_CONFIG, "bad_config", "an invalid option or RUNWARDEN_* variable; nothing started"),
        (STARTUP_FAILED, "startup_failed", "a port was in use or the app command could not start"),
        *((code, reason, meaning) for reason, code, meaning in REASONS),
    ]
)

BY_REASON: Final[dict[str, int]] = {
    reason: code for reason, code, _ in REASONS if reason != "shutdown"
}
"""The code of each reason that replaces the runner."""
