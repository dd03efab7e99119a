"""Supervision of the app command given after `--` (SPEC D3, D5, H2).

The app runs in its own process group (a new session), so a terminal's Ctrl-C reaches
runwarden only (it drains first, then stops the app) and stopping the app reaches every
process it started: the group gets SIGTERM, then SIGKILL after `app_stop_timeout_seconds`,
and no grandchild is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

log = logging.getLogger("runwarden.supervisor")


def describe_exit(returncode: int) -> str:
    """'exited with status 3' or 'was killed by signal SIGKILL'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"was killed by signal {name}"
    return f"exited with status {returncode}"


class Supervisor:
    """Starts the app, reports its exit, stops its whole process group."""

    def __init__(self, command: tuple[str, ...], stop_timeout_seconds: float) -> None:
        self.command = command
        self.stop_timeout_seconds = stop_timeout_seconds
        self.process: asyncio.subprocess.Process | None = None
        self.stopping = False
        self._exited: asyncio.Future[int] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    async def start(self) -> None:
        """Start the app (stdin closed, stdout/stderr shared with runwarden)."""
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.DEVNULL, start_new_session=True
        )
        log.info("started the app (pid %d): %s", self.process.pid, " ".join(self.command))
        self._exited = asyncio.ensure_future(self.process.wait())

    async def exited(self) -> int:
        """The app's return code, once it has exited (D5)."""
        assert self._exited is not None, "Supervisor.start() first"
        return await asyncio.shield(self._exited)

    async def stop(self) -> None:
        """D3: SIGTERM to the app's group, SIGKILL after the timeout; reap the leader."""
        self.stopping = True
        process = self.process
        if process is None or self._exited is None:
            return
        pgid = process.pid  # the leader of its own session and group
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stop_timeout_seconds
        if _signal_group(pgid, signal.SIGTERM):
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), self.stop_timeout_seconds)
            except asyncio.TimeoutError:
                log.warning(
                    "the app did not stop within %.1f s of SIGTERM: sending SIGKILL",
                    self.stop_timeout_seconds,
                )
                _signal_group(pgid, signal.SIGKILL)
        await self._exited
        # The leader is gone; what it started gets the rest of the timeout, then SIGKILL,
        # so no grandchild outlives the runner.
        # No event tells us when a group empties; poll, for at most the stop timeout.
        while _signal_group(pgid, 0) and loop.time() < deadline:
            _reap_group(pgid)
            await asyncio.sleep(0.05)
        if _signal_group(pgid, signal.SIGKILL):
            log.warning("killed processes left in the app's process group")
        log.info("the app %s", describe_exit(process.returncode or 0))


def _reap_group(pgid: int) -> None:
    """Reap the group's exited processes that are our children: as a container's PID 1
    (or a subreaper) runwarden inherits the app's orphans, and a zombie still counts as a
    member of the group, so the wait above would last the whole stop timeout."""
    with contextlib.suppress(ChildProcessError):
        while os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG) is not None:
            pass


def _signal_group(pgid: int, sig: int) -> bool:
    """Signal every process of the group; False when none is left."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
        return True
    return False
