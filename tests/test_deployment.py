"""K: runwarden as users deploy it. Real processes on loopback.

K1 the termination message; K2 sidecar mode, where the app is another container's process
and a replacement must restart it (here "the kubelet" is a loop that restarts the app's
"container" whenever its process exits, as restartPolicy: Always does); K3 fast first
readiness; K4 runwarden as PID 1 of a PID namespace; and the command line and log formats
a deployment reads.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import (
    HERE,
    SHORT_SETTINGS,
    AppServer,
    clean_env,
    free_port,
    parse_metrics,
    poll,
    start_app_server,
    wait_until_listening,
)

# --- K1: the termination message ---------------------------------------------------------


def test_K1_a_replacement_writes_its_exit_line_as_the_termination_message(runwarden, tmp_path):
    """K1: the line the log ends with is what Kubernetes shows as the container's message."""
    message = tmp_path / "termination-log"
    port = free_port()
    app = [sys.executable, str(HERE / "app_server.py"), str(port)]
    rw = runwarden(f"http://127.0.0.1:{port}", "--termination-message-path", str(message),
                   app_command=app, wait_ready=True)  # fmt: skip
    assert httpx.get(f"{rw.url}/predict?status=503", timeout=5).status_code == 503
    assert rw.wait_exit() == 12
    line = message.read_text()
    assert line == "exiting with code 12 (app_503): the app answered 503\n"
    assert line.strip() in rw.log()


def test_K1_a_clean_stop_and_a_bad_option_write_theirs_too(runwarden, app_server, tmp_path):
    message = tmp_path / "termination-log"
    rw = runwarden(app_server.url, "--termination-message-path", str(message), wait_ready=True)
    rw.proc.send_signal(signal.SIGTERM)
    assert rw.wait_exit() == 0
    assert message.read_text() == "exiting with code 0 (shutdown): received SIGTERM\n"

    bad = subprocess.run(
        [sys.executable, "-m", "runwarden", "serve", "--failure-threshold", "0"],
        env=clean_env(RUNWARDEN_TERMINATION_MESSAGE_PATH=str(message)),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert bad.returncode == 2
    assert message.read_text().startswith("exiting with code 2 (bad_config): --failure-threshold")


def test_K1_off_writes_nothing(runwarden, app_server, tmp_path):
    rw = runwarden(app_server.url, "--termination-message-path", "off", wait_ready=True)
    rw.stop()
    assert rw.proc.returncode == 0
    assert list(tmp_path.glob("*termination*")) == []


# --- K2: sidecar mode ------------------------------------------------------------------


class Kubelet:
    """One container with restartPolicy: Always: the app, restarted each time its process
    exits. The app is this loop's child, in its own process tree: not runwarden's."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        loop = f'while :; do "{sys.executable}" "{HERE / "app_server.py"}" {port}; sleep 0.1; done'
        with log.open("wb") as out:
            self.proc = subprocess.Popen(["bash", "-c", loop], stdout=out, stderr=out,
                                         start_new_session=True)  # fmt: skip
        wait_until_listening(port, self.proc)

    @property
    def app(self) -> AppServer:
        return AppServer(self.port, self.proc)

    def app_pid(self) -> int:
        return int(self.app.state()["pid"])  # type: ignore[call-overload]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def kubelet(tmp_path: Path) -> Iterator[Kubelet]:
    k = Kubelet(free_port(), tmp_path / "container.log")
    try:
        yield k
    finally:
        k.stop()


def test_K2_sidecar_mode_restarts_the_apps_container_every_time_and_stays_up(runwarden, kubelet):
    """K2: runwarden beside the app (not its parent): each replacement stops the app's
    process so its container restarts; runwarden drains, starts over, is not ready until the
    new app passes, and never exits."""
    rw = runwarden(kubelet.app.url, "--sidecar", wait_ready=True)
    first = kubelet.app_pid()
    poll(lambda: rw.status()["app"]["pid"] == first)  # type: ignore[index]
    assert f"sidecar mode: the app is pid {first}" in rw.log()

    # A 503: replaced at once.
    assert httpx.get(f"{rw.url}/predict?status=503", timeout=5).status_code == 503
    second = poll(lambda: _new_app(kubelet, {first}), timeout=15)
    assert not psutil.pid_exists(first) or psutil.Process(first).status() == "zombie"
    rw.wait_ready()
    assert httpx.get(f"{rw.url}/predict", timeout=5).json()["ok"] is True

    # Failing checks: replaced again, the same way.
    kubelet.app.set_health("fail500")
    third = poll(lambda: _new_app(kubelet, {first, second}), timeout=15)
    rw.wait_ready()
    status = rw.status()
    assert status["state"] == "ready" and status["reason"] is None
    assert status["app"]["mode"] == "sidecar"  # type: ignore[index]
    assert status["app"]["replacements"] == 2  # type: ignore[index]
    assert rw.proc.poll() is None, "runwarden stays up"
    log = rw.log()
    assert f"stopped the app, pid {first}" in log and f"stopped the app, pid {second}" in log
    assert log.count("starting over: not ready until") == 2
    assert "health_check" in log

    # A clean stop of runwarden (the pod goes away) leaves the app to its own container.
    rw.proc.send_signal(signal.SIGTERM)
    assert rw.wait_exit() == 0
    assert kubelet.app_pid() == third


def test_K2_never_ready_on_the_old_app(runwarden, kubelet):
    """K2, the race of two containers: between the verdict and the new app's first pass,
    /readyz never says 200 (the old app is gone before runwarden starts over)."""
    rw = runwarden(kubelet.app.url, "--sidecar", wait_ready=True)
    first = kubelet.app_pid()
    httpx.get(f"{rw.url}/predict?status=503", timeout=5)
    answers = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ready = httpx.get(f"{rw.admin_url}/readyz", timeout=2).status_code == 200
        answers.append(ready)
        if ready:
            break
    assert answers[-1] is True and False in answers
    # When it says ready again, it is the new app's process that answers.
    assert kubelet.app_pid() != first


def test_K2_an_app_that_cannot_be_stopped_makes_runwarden_exit_with_the_code(runwarden):
    """K2: when runwarden may not look into the app's process (the containers run as
    different users and runwarden lacks CAP_SYS_PTRACE), it says so once ready, and at a
    replacement says why it cannot stop the app and exits with the verdict's code: its own
    restart is then the only replacement left."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or not shutil.which("setpriv") or system_python is None:
        pytest.skip("needs root, setpriv and a system python3 to run the app as another user")
    served = Path(tempfile.mkdtemp())
    served.chmod(0o755)
    (served / "health").write_text("ok\n")
    (served / "health").chmod(0o644)
    port = free_port()
    app = subprocess.Popen(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", system_python,
         "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(served)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until_listening(port, app)
        # runwarden as root, less the capabilities that look into other users' processes.
        drop = "--bounding-set=-sys_ptrace,-dac_read_search,-dac_override"
        rw = runwarden(f"http://127.0.0.1:{port}", "--sidecar", wait_ready=True,
                       wrapper=["setpriv", drop, "--"])  # fmt: skip
        poll(lambda: "a replacement could not stop the app" in rw.log())
        (served / "health").unlink()  # the app's checks fail from now on (404)
        assert rw.wait_exit() == 10
        log = rw.log()
        assert "cannot stop the app for the replacement" in log
        assert "could not be looked into: run both containers as the same user" in log
        assert "exiting with code 10 (health_check)" in log
        assert app.poll() is None, "the app was not stopped: runwarden could not"
    finally:
        app.kill()
        app.wait(10)
        shutil.rmtree(served, ignore_errors=True)


def test_K2_sidecar_and_an_app_command_are_one_or_the_other():
    result = subprocess.run(
        [sys.executable, "-m", "runwarden", "serve", "--sidecar", "--", "python", "app.py"],
        env=clean_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--sidecar guards an app in another container" in result.stderr


def _new_app(kubelet: Kubelet, old: set[int]) -> int | None:
    try:
        pid = kubelet.app_pid()
    except httpx.TransportError:
        return None
    return pid if pid not in old else None


# --- K3: fast first readiness ----------------------------------------------------------


def test_K3_ready_soon_after_the_app_not_a_period_later(runwarden, tmp_path):
    """K3: with the SPEC's 15 s period and 30 s start period, an app that comes up 1 s after
    runwarden makes it ready within about half a second, its early failures uncounted."""
    port = free_port()
    rw = runwarden(f"http://127.0.0.1:{port}", "--period-seconds", "15",
                   "--start-period-seconds", "30", "--timeout-seconds", "1")  # fmt: skip
    time.sleep(1.0)  # the app is still loading its weights
    began = time.monotonic()
    app = start_app_server(port)
    try:
        up = time.monotonic()
        rw.wait_ready(timeout=14)
        ready = time.monotonic()
        status = rw.status()
    finally:
        app.kill()
    assert ready - up < 5.0, f"ready {ready - up:.1f}s after the app (period: 15 s)"
    checks = status["checks"]
    assert status["health"]["consecutive_failures"] == 0  # type: ignore[index]
    assert {c["counted"] for c in checks[:-1]} <= {"start_period"}  # type: ignore[index]
    assert len(checks) >= 2, "it checked before the app was up, at the startup interval"
    print(f"ready {ready - up:.2f}s after the app listened ({ready - began:.2f}s after start)")


# --- K4: PID 1 ------------------------------------------------------------------------

ORPHANS = """
import os, subprocess, sys, time
# Leave orphans behind, as daemonising helpers do: a short one (exits in 0.3 s) and a long one.
for seconds in ("0.3", "1000"):
    if os.fork() == 0:
        subprocess.Popen(["sleep", seconds], start_new_session=False)
        os._exit(0)
    os.wait()
os.execv(sys.executable, [sys.executable, sys.argv[1], sys.argv[2]])
"""


@pytest.fixture
def pid_namespace() -> None:
    if os.geteuid() != 0:
        pytest.skip("unshare --pid needs root")
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, timeout=30)  # fmt: skip
    if probe.returncode != 0:
        pytest.skip(f"no PID namespaces here: {probe.stderr.decode().strip()}")


def _pid1(tmp_path: Path, port: int, admin: int, *extra: str) -> subprocess.Popen[bytes]:
    app_port = free_port()
    script = tmp_path / "orphans.py"
    script.write_text(ORPHANS)
    args = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
            sys.executable, "-m", "runwarden", "serve", "--host", "127.0.0.1",
            "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin),
            *SHORT_SETTINGS, "--app-url", f"http://127.0.0.1:{app_port}", *extra, "--",
            sys.executable, str(script), str(HERE / "app_server.py"), str(app_port)]  # fmt: skip
    out = (tmp_path / f"pid1-{port}.log").open("wb")
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=clean_env())


def _namespace(unshare: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """Every process in the namespace, as seen from outside: PID 1 and its descendants."""
    try:
        return psutil.Process(unshare.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.usefixtures("pid_namespace")
@pytest.mark.parametrize("how", ["sigterm", "replacement"])
def test_K4_pid1_drains_reaps_orphans_and_leaves_nothing(tmp_path, how):
    """K4: `runwarden serve -- app` as PID 1 of a new PID namespace. Orphans the app leaves
    are reaped (no zombie), SIGTERM drains and exits 0, a replacement exits with its code,
    and no process of the namespace survives."""
    port, admin = free_port(), free_port()
    unshare = _pid1(tmp_path, port, admin)
    try:
        wait_until_listening(admin, unshare)
        poll(lambda: _ready(admin), timeout=15)
        runwarden = psutil.Process(unshare.pid).children()[0]
        assert "runwarden" in " ".join(runwarden.cmdline())
        # The 0.3 s orphan exits and is reaped: no zombie; the long one still runs.
        poll(lambda: _orphans(unshare) == ([["sleep", "1000"]], 0), timeout=10)
        inside = _namespace(unshare)
        if how == "sigterm":
            runwarden.send_signal(signal.SIGTERM)
            expected = 0
        else:
            httpx.get(f"http://127.0.0.1:{port}/predict?status=503", timeout=5)
            expected = 12
        assert unshare.wait(30) == expected
        assert all(not p.is_running() or _state(p) == psutil.STATUS_ZOMBIE for p in inside)
        log = (tmp_path / f"pid1-{port}.log").read_text()
        assert f"exiting with code {expected}" in log
    finally:
        if unshare.poll() is None:
            unshare.kill()
            unshare.wait(10)


def _orphans(unshare: subprocess.Popen[bytes]) -> tuple[list[list[str]], int]:
    """The sleeps running in the namespace, and its zombies."""
    running, zombies = [], 0
    for process in _namespace(unshare):
        if _state(process) == psutil.STATUS_ZOMBIE:
            zombies += 1
        elif _state(process) is not None and process.name() == "sleep":
            running.append(process.cmdline())
    return running, zombies


def _ready(admin: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{admin}/readyz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _state(process: psutil.Process) -> str | None:
    try:
        return str(process.status())
    except psutil.NoSuchProcess:
        return None


# --- the command line and the log a deployment reads --------------------------------


def test_C_version_and_help():
    """C: `--version`; `runwarden` alone prints the help (with the exit codes), exit 2; a bad
    `serve` option prints `serve`'s usage."""
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("runwarden 0.")
    bare = _cli()
    assert bare.returncode == 2 and "serve" in bare.stdout and "exit codes" in bare.stdout
    wrong = _cli("serve", "--no-such")
    assert wrong.returncode == 2
    assert wrong.stderr.startswith("usage: runwarden serve [OPTIONS]")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runwarden", *args],
                          capture_output=True, text=True, timeout=30, env=clean_env())  # fmt: skip


def test_C_json_log_lines_parse_back_with_the_verdict_and_exit_as_fields(runwarden):
    """`--log-format json`: one object per line; the verdict and the exit carry reason,
    detail and exit code as fields; `--access-log` adds one line per proxied request."""
    port = free_port()
    app = [sys.executable, str(HERE / "app_server.py"), str(port)]
    rw = runwarden(f"http://127.0.0.1:{port}", "--log-format", "json", "--access-log",
                   app_command=app, wait_ready=True)  # fmt: skip
    assert httpx.get(f"{rw.url}/predict?latency=0.05", timeout=5).status_code == 200
    httpx.get(f"{rw.url}/predict?status=503", timeout=5)
    assert rw.wait_exit() == 12
    lines = [json.loads(line) for line in rw.log().splitlines() if line.startswith("{")]
    ours = [e for e in lines if e["logger"].startswith("runwarden")]
    assert ours and all({"time", "level", "logger", "message"} <= set(e) for e in ours)
    assert all(e["time"].endswith("Z") and "T" in e["time"] for e in ours)
    verdict = next(e for e in ours if e["message"].startswith("replacing the runner"))
    assert (verdict["reason"], verdict["exit_code"]) == ("app_503", 12)
    last = next(e for e in ours if e["message"].startswith("exiting with code"))
    assert (last["level"], last["reason"], last["detail"], last["exit_code"]) == (
        "ERROR", "app_503", "the app answered 503", 12,
    )  # fmt: skip
    access = [e for e in ours if e["logger"] == "runwarden.access"]
    assert [(e["method"], e["status"]) for e in access] == [("GET", 200), ("GET", 503)]
    assert access[0]["target"] == "/predict?latency=0.05" and access[0]["duration_ms"] >= 50


def test_C_the_access_log_is_off_by_default(runwarden, app_server):
    rw = runwarden(app_server.url, wait_ready=True)
    httpx.get(f"{rw.url}/predict", timeout=5)
    rw.stop()
    assert '"GET /predict HTTP/1.1" 200' not in rw.log()


def test_A_metrics_people_expect(runwarden, app_server):
    """A: build info, the proxied-request latency histogram, the consecutive-failures gauge,
    the state as `state=`, and no `_created` series."""
    rw = runwarden(app_server.url, wait_ready=True)
    for _ in range(3):
        httpx.get(f"{rw.url}/predict?latency=0.02", timeout=5)
    text = httpx.get(f"{rw.admin_url}/metrics", timeout=5).text
    metrics = parse_metrics(text)
    build = [k for k in metrics if k.startswith("runwarden_build_info{")]
    assert build and 'python="' in build[0] and 'version="0.' in build[0]
    histogram = "runwarden_proxied_request_duration_seconds"
    assert metrics[f"{histogram}_count"] == 3
    assert metrics[f'{histogram}_bucket{{le="0.01"}}'] == 0
    assert metrics[f'{histogram}_bucket{{le="+Inf"}}'] == 3
    # A monotonic clock with sub-millisecond resolution: 20 ms answers are not rounded.
    assert 0.06 <= metrics[f"{histogram}_sum"] < 1.0
    assert metrics[f'{histogram}_bucket{{le="0.0025"}}'] == 0
    assert metrics["runwarden_check_consecutive_failures"] == 0
    assert metrics['runwarden_state{state="ready"}'] == 1
    assert "_created" not in text
    assert "runwarden_state{runwarden_state" not in text
