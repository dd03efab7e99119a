"""K2, sidecar mode: the app runs in another container of the pod, not as runwarden's child.

Kubernetes restarts a container when its main process exits, and only that container. When
runwarden is a container of its own beside the model server's, its own exit would restart
runwarden and leave a broken app serving. So in sidecar mode (`--sidecar`, in a pod with
`shareProcessNamespace: true`, both containers under one user) a replacement stops the
app's process instead: the process that holds the socket listening on the app's port, the
topmost one that holds it (a server's master, not its workers). It gets SIGTERM, then
SIGKILL after `--app-stop-timeout-seconds`; runwarden waits until it is gone, so a check can
never reach the old app again, and starts over; the kubelet starts the app's container anew.

Processes are found the way `ss -lptn` finds them: the listening socket's inode in
`/proc/net/tcp{,6}` (this network namespace: the pod's), then the process whose file
descriptors include it. Signals go through a pidfd, so a recycled PID is never signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


@dataclass(frozen=True)
class AppProcess:
    """The app's process as found on its port."""

    pid: int
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command})"


class NotFound(LookupError):
    """No process of ours holds the app's listening socket; the message says what to check."""


def listening_inodes(port: int, proc: Path = PROC) -> set[str]:
    """The inodes of the TCP sockets listening on `port` in this network namespace."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def holders(inodes: set[str], proc: Path = PROC) -> tuple[dict[int, int], int]:
    """The processes holding any of `inodes` (pid to parent pid), and how many processes
    could not be looked into (another user's, without CAP_SYS_PTRACE)."""
    targets = {f"socket:[{inode}]" for inode in inodes}
    found: dict[int, int] = {}
    hidden = 0
    own = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except PermissionError:
            hidden += 1
            continue
        except OSError:
            continue  # gone meanwhile
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd) in targets:
                    found[int(entry.name)] = _parent(entry)
                    break
    return found, hidden


def find(port: int, proc: Path = PROC) -> AppProcess | None:
    """The app's process: the topmost process holding the socket listening on `port`; None
    if nothing listens there (the app is gone already). NotFound if something listens but
    runwarden cannot see who."""
    inodes = listening_inodes(port, proc)
    if not inodes:
        return None
    found, hidden = holders(inodes, proc)
    if not found:
        why = (
            f"{hidden} process(es) of another user could not be looked into: run both "
            "containers as the same user"
            if hidden
            else "the pod needs shareProcessNamespace: true"
        )
        raise NotFound(f"port {port} listens, but runwarden sees no process holding it ({why})")
    top = min(pid for pid, parent in found.items() if parent not in found)
    return AppProcess(top, _command(proc / str(top)))


async def stop(app: AppProcess, timeout: float) -> str:
    """SIGTERM, then SIGKILL after `timeout`; return once the process is gone, saying how
    it went. PermissionError if runwarden may not signal it."""
    try:
        pidfd = os.pidfd_open(app.pid)
    except ProcessLookupError:
        return "it had already exited"
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, exited)
    try:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        except ProcessLookupError:
            return "it had already exited"
        try:
            await asyncio.wait_for(asyncio.shield(gone), timeout)
            return "it exited after SIGTERM"
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            await gone
            return f"it was killed with SIGKILL after {timeout:g}s"
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _parent(entry: Path) -> int:
    try:
        stat = (entry / "stat").read_text()
    except OSError:
        return 0
    # pid (comm) state ppid ...: comm may hold spaces and parentheses.
    return int(stat.rsplit(")", 1)[1].split()[1])


def _command(entry: Path) -> str:
    try:
        raw = (entry / "cmdline").read_bytes()
    except OSError:
        return "?"
    words = raw.rstrip(b"\0").split(b"\0")
    text = " ".join(w.decode(errors="replace") for w in words[:4])
    return text + (" …" if len(words) > 4 else "")
