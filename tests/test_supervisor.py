"""Supervision of the app command after `--` (SPEC D3, D5, H2)."""

from __future__ import annotations

import json
import re
import resource
import signal
import sys
import textwrap
import time

import psutil
from conftest import HERE, free_port, poll
from runwarden import exit_codes


def _gone(pids: list[int]) -> bool:
    return not [pid for pid in pids if psutil.pid_exists(pid) and _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_D5_app_crash_exits_with_app_exited_and_logs_its_status(runwarden):
    """D5/D4: a supervised app that exits by itself replaces the runner: exit code
    app_exited's, and the log says the app's exit status."""
    app = [sys.executable, "-c", "import time, sys; time.sleep(0.5); sys.exit(3)"]
    # Nothing listens at the app URL: a long start period keeps health checks out of it.
    rw = runwarden("http://127.0.0.1:9", "--start-period-seconds", "60", app_command=app)
    assert rw.wait_exit() == exit_codes.BY_REASON["app_exited"]
    log = rw.log()
    exit_line = r"exiting with code 15 \(app_exited\): the app \(pid \d+\) exited with status 3"
    assert re.search(exit_line, log), log
    assert log.count("exited with status 3") == 2, log  # the verdict's line and the exit's


def test_D3_sigterm_drains_then_stops_the_app_with_sigkill_after_the_timeout(runwarden):
    """D3/D4: SIGTERM to runwarden stops the app: SIGTERM (ignored here), then SIGKILL after
    app_stop_timeout_seconds; runwarden exits 0."""
    port = free_port()
    app = [sys.executable, "-c", textwrap.dedent(f"""
        import http.server, signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        handler = http.server.SimpleHTTPRequestHandler
        http.server.HTTPServer(("127.0.0.1", {port}), handler).serve_forever()
    """)]  # fmt: skip
    rw = runwarden(f"http://127.0.0.1:{port}", "--app-stop-timeout-seconds", "1",
                   "--health-path", "/", app_command=app, wait_ready=True)  # fmt: skip
    app_pid = int(rw.status()["app"]["pid"])  # type: ignore[index]
    assert _alive(app_pid)
    rw.proc.send_signal(signal.SIGTERM)
    assert rw.wait_exit() == exit_codes.CLEAN
    assert not _alive(app_pid)
    assert "did not stop within 1.0 s of SIGTERM: sending SIGKILL" in rw.log()


def test_D3_D5_killed_app_leaves_no_orphans(runwarden):
    """D5/D3: the app (started through a shell that forks a worker) is SIGKILLed; runwarden
    replaces the runner and kills the rest of the app's process group: no orphan survives."""
    rw, _, _, family = _app_with_a_worker(runwarden)
    psutil.Process(family[0]).kill()
    assert rw.wait_exit() == exit_codes.BY_REASON["app_exited"]
    assert re.search(r"the app \(pid \d+\) was killed by signal SIGKILL", rw.log())
    poll(lambda: _gone(family), timeout=10)


def _app_with_a_worker(runwarden):  # type: ignore[no-untyped-def]
    """runwarden supervising an app that started a worker of its own: runwarden, the app
    command, its port, and the pids of the app and its worker."""
    port = free_port()
    worker = f"{sys.executable} -c 'import time; time.sleep(120)'"
    app = ["sh", "-c", f"{worker} & exec {sys.executable} {HERE / 'app_server.py'} {port}"]
    rw = runwarden(f"http://127.0.0.1:{port}", app_command=app, wait_ready=True)
    app_pid = int(rw.status()["app"]["pid"])  # type: ignore[index]
    family = [app_pid, *(p.pid for p in psutil.Process(app_pid).children(recursive=True))]
    assert len(family) == 2
    return rw, app, port, family


def test_D3_clean_stop_stops_the_whole_process_group(runwarden):
    """D3: SIGTERM to runwarden ends the app and everything it started."""
    rw, _, _, family = _app_with_a_worker(runwarden)
    rw.proc.send_signal(signal.SIGINT)
    assert rw.wait_exit() == exit_codes.CLEAN
    poll(lambda: _gone(family), timeout=10)


def test_H2_A_supervised_app_in_status_without_its_arguments(runwarden):
    """H2/A: /status shows the supervised app's program and pid, and not its arguments (the
    admin port is open to the pod's network; an argument can be a token)."""
    port = free_port()
    app = [sys.executable, str(HERE / "app_server.py"), str(port), "--token=s3cr3t"]
    rw = runwarden(f"http://127.0.0.1:{port}", app_command=app, wait_ready=True)
    status = rw.status()["app"]
    assert status["mode"] == "supervised"  # type: ignore[index]
    assert (status["program"], status["arguments"]) == (sys.executable, 3)  # type: ignore[index]
    assert _alive(int(status["pid"]))  # type: ignore[index]
    assert "s3cr3t" not in json.dumps(rw.status())


def test_D7_front_door_6_the_app_never_outlives_a_killed_runwarden(runwarden):
    """D7 (issue 9, item 6): runwarden SIGKILLed: the app and what it started are gone
    within about a second, and a new runwarden on the same ports starts cleanly (no
    "address already in use" crash loop)."""
    rw, app, port, family = _app_with_a_worker(runwarden)
    rw.proc.kill()
    killed = time.monotonic()
    poll(lambda: _gone(family), timeout=5)
    assert time.monotonic() - killed < 1.5
    again = runwarden(f"http://127.0.0.1:{port}", app_command=app, wait_ready=True)
    assert again.status()["state"] == "ready"
    assert again.proc.poll() is None


def test_D3_the_supervised_app_keeps_the_fd_limit_runwarden_was_given(runwarden):
    """D3/S6: runwarden raises its own fd limit for its connections; the app it starts gets
    the limit runwarden was started with, as if started directly."""
    port = free_port()
    app = [sys.executable, str(HERE / "app_server.py"), str(port)]
    rw = runwarden(f"http://127.0.0.1:{port}", app_command=app, wait_ready=True, max_fds=None)
    app_pid = int(rw.status()["app"]["pid"])  # type: ignore[index]
    ours = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert psutil.Process(app_pid).rlimit(psutil.RLIMIT_NOFILE)[0] == ours[0]
    assert psutil.Process(rw.proc.pid).rlimit(psutil.RLIMIT_NOFILE)[0] == ours[1]
