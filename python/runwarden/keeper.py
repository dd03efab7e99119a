"""The app's keeper (SPEC D7): a small process between runwarden and the app, so that the
app never outlives runwarden, however runwarden ends (SIGKILL included).

    python keeper.py CHANNEL_FD FD_SOFT_LIMIT -- APP COMMAND ...

runwarden starts it as the leader of a new session and process group and holds the other
end of the socket CHANNEL_FD. The keeper starts the app in that group, writes
`pid <app pid>` (or `error <errno> <message>` if the command could not be started) to the
channel, and then waits for either end: when the app exits, the keeper exits the same way
(so runwarden sees the app's own status); when the channel reads end-of-file, runwarden is
gone, and the keeper stops the whole group: SIGTERM, then SIGKILL half a second later.

Signals runwarden sends to the group (D3) reach the app; the keeper only waits. It is also
the app's subreaper (K4): a process the app starts and leaves behind (a daemonised helper, a
double fork) becomes the keeper's child when its parent exits, and the keeper reaps it when it
exits, so no zombie piles up, even with runwarden as a container's PID 1. It uses the standard
library alone and is run with `python -I -S`, so it starts in milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
import sys

GRACE_SECONDS = 0.5
"""From SIGTERM to SIGKILL once runwarden is gone: the app outlives it by about this."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> None:
    channel, soft_limit = int(argv[1]), int(argv[2])
    command = argv[argv.index("--") + 1 :]
    for sig in STOP_SIGNALS:  # a handler, not SIG_IGN: exec resets it for the app
        signal.signal(sig, _ignore)
    _become_subreaper()
    # An orphan's exit wakes the loop below through this pipe (SIGCHLD's wakeup fd).
    woken, wake = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, _ignore)
    pid = _spawn(command, channel, soft_limit)
    if not _tell(channel, b"pid %d\n" % pid):
        _stop_group(pid)
    while True:
        readable, _, _ = select.select([channel, woken], [], [])
        if woken in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(woken, 512):
                    pass
        _reap(pid)
        if channel in readable and not os.read(channel, 64):
            _stop_group(pid)


def _become_subreaper() -> None:
    """Orphans of the app come to the keeper, not to PID 1 (K4); best effort."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _reap(app: int) -> None:
    """Reap every child that exited: orphans the keeper inherited, and the app, whose exit
    ends the keeper with the same status."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid == app:
            _exit_as(status)


def _spawn(command: list[str], channel: int, soft_limit: int) -> int:
    """Fork and exec the app; an exec failure is reported on the channel and ends us."""
    report_r, report_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(report_r)
        os.close(channel)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as subprocess does: Python ignores it
        if soft_limit > 0:  # the limit runwarden was started with, before it raised its own
            _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft_limit, hard), hard))
            except (ValueError, OSError):
                pass
        try:
            os.execvp(command[0], command)
        except OSError as exc:
            os.write(report_w, b"%d %s" % (exc.errno or 0, (exc.strerror or "").encode()))
        os._exit(127)
    os.close(report_w)
    failure = os.read(report_r, 1024)  # empty: the exec closed the pipe, the app runs
    os.close(report_r)
    if failure:
        os.waitpid(pid, 0)
        _tell(channel, b"error " + failure + b"\n")
        os._exit(127)
    return pid


def _tell(channel: int, line: bytes) -> bool:
    """Write to runwarden; False if it is gone."""
    try:
        os.write(channel, line)
    except OSError:
        return False
    return True


def _stop_group(pid: int) -> None:
    """runwarden is gone: end the app and everything it started, now."""
    os.killpg(0, signal.SIGTERM)
    waited = 0.0
    while waited < GRACE_SECONDS:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        select.select([], [], [], 0.02)
        waited += 0.02
    os.killpg(0, signal.SIGKILL)  # the rest of the group, and the keeper with it


def _exit_as(status: int) -> None:
    """Exit with the app's status: its code, or killed by its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal that does not kill (none of the usual ones)
    os._exit(os.waitstatus_to_exitcode(status))


def _ignore(signum: int, frame: object) -> None:
    """The app decides what a stop signal does; the keeper waits for the outcome."""


if __name__ == "__main__":
    main(sys.argv)
