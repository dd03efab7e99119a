"""Supervision of the app command given after `--` (SPEC D3, D5, D7, H2).

The app runs under its keeper (`keeper.py`) in its own session and process group, so a
terminal's Ctrl-C reaches runwarden only (it drains first, then stops the app), stopping
the app reaches every process it started (the group gets SIGTERM, then SIGKILL after
`app_stop_timeout_seconds`, and no grandchild is left behind), and the app never outlives
runwarden: if runwarden dies, even by SIGKILL, the keeper stops the group within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from runwarden import app_output
from runwarden._core import fd_limits

log = logging.getLogger("runwarden.supervisor")

KEEPER = str(Path(__file__).with_name("keeper.py"))


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

    def __init__(
        self, command: tuple[str, ...], stop_timeout_seconds: float, relay_output: bool = False
    ) -> None:
        self.command = command
        self.stop_timeout_seconds = stop_timeout_seconds
        self.relay_output = relay_output
        """Read the app's stdout and stderr and log each line (`app_output`), instead of
        letting it write to runwarden's own."""
        self._relays: list[asyncio.Task[None]] = []
        self.keeper: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        """The app's own pid (the keeper's child)."""
        self.stopping = False
        self._exited: asyncio.Future[int] | None = None
        self._channel: socket.socket | None = None

    @property
    def returncode(self) -> int | None:
        return self.keeper.returncode if self.keeper is not None else None

    async def start(self) -> None:
        """Start the app (stdin closed, stdout/stderr shared with runwarden, or relayed as
        log records); OSError if its command cannot be started."""
        ours, theirs = socket.socketpair()
        output = asyncio.subprocess.PIPE if self.relay_output else None
        with theirs:
            self.keeper = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", KEEPER, str(theirs.fileno()),
                str(fd_limits()[0]), "--", *self.command,
                stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output,
                start_new_session=True, pass_fds=(theirs.fileno(),),
                limit=app_output.LINE_LIMIT,
            )  # fmt: skip
        self._channel = ours  # runwarden's end: when runwarden dies, the keeper reads EOF
        ours.setblocking(False)
        loop = asyncio.get_running_loop()
        line = b""
        while not line.endswith(b"\n"):
            chunk = await loop.sock_recv(ours, 1024)
            if not chunk:
                break
            line += chunk
        kind, _, rest = line.decode(errors="replace").strip().partition(" ")
        if kind != "pid":
            await self.keeper.wait()
            number, _, message = rest.partition(" ")
            code = int(number) if number.isdigit() else 0
            raise OSError(code, message or f"the app's keeper failed ({line!r})")
        self.pid = int(rest)
        log.info("started the app (pid %d): %s", self.pid, " ".join(self.command))
        keeper = self.keeper
        for name, reader in (("stdout", keeper.stdout), ("stderr", keeper.stderr)):
            if reader is not None:
                self._relays.append(asyncio.ensure_future(app_output.relay(reader, name, self.pid)))
        self._exited = asyncio.ensure_future(self.keeper.wait())

    async def exited(self) -> int:
        """The app's return code, once it has exited (D5)."""
        assert self._exited is not None, "Supervisor.start() first"
        return await asyncio.shield(self._exited)

    async def stop(self) -> None:
        """D3: SIGTERM to the app's group, SIGKILL after the timeout; reap the leader."""
        self.stopping = True
        keeper = self.keeper
        if keeper is None or self._exited is None:
            return
        pgid = keeper.pid  # the leader of its own session and group
        # An app that exited by itself was said to have (the verdict's line): not again.
        exited_by_itself = self._exited.done()
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
        if self._channel is not None:
            self._channel.close()
        # What the app wrote last, logged before the line that says it ended.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._relays), 1.0)
        returncode = keeper.returncode or 0
        if exited_by_itself:
            pass
        elif returncode == -signal.SIGTERM:
            log.info("the app stopped on SIGTERM, as asked")
        else:
            log.info("the app %s", describe_exit(returncode))


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
