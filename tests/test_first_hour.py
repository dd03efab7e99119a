"""An operator's first hour (issue 17): what runwarden says when it is set up wrong, and the
command line's help. Real processes on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from conftest import AppServer, Runwarden, clean_env, free_port, poll
from runwarden import exit_codes


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runwarden", *args],
        capture_output=True, text=True, timeout=30, env=clean_env(**env),
    )  # fmt: skip


def test_a_wrong_app_url_is_said_at_info_soon_after_start(
    runwarden: Callable[..., Runwarden],
) -> None:
    """Nothing listens at --app-url: inside a long start period no failure is counted, but
    runwarden says, at the default level, what it tried and what came back."""
    wrong = f"http://127.0.0.1:{free_port()}"
    warden = runwarden(wrong, "--start-period-seconds", "600")
    line = poll(
        lambda: next((x for x in warden.log().splitlines() if "has not passed" in x), None),
        timeout=15,
    )
    assert f"{wrong}/health" in line, line  # type: ignore[operator]
    assert "refused" in line.lower(), line  # type: ignore[union-attr]
    assert "--app-url" in line  # type: ignore[operator]


def test_both_ports_are_bound_before_the_app_starts(tmp_path: Path) -> None:
    """The proxy port is taken: runwarden exits with startup_failed's code and the app,
    which would have begun loading its weights, is never started."""
    marker = tmp_path / "started"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run(
            "serve", "--host", "127.0.0.1", "--port", str(port),
            "--admin-host", "127.0.0.1", "--admin-port", str(free_port()),
            "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')",
        )  # fmt: skip
    assert result.returncode == exit_codes.STARTUP_FAILED, result.stderr
    assert not marker.exists(), "the app was started"


def test_guard_mode_warns_once_that_a_replacement_stops_only_runwarden(
    runwarden: Callable[..., Runwarden], app_server: AppServer
) -> None:
    warden = runwarden(app_server.url, wait_ready=True)
    log = warden.log()
    assert log.count("guard mode: no app command after --") == 1, log
    assert "--sidecar" in log


def test_supervised_and_sidecar_modes_do_not_warn(
    runwarden: Callable[..., Runwarden], app_server: AppServer
) -> None:
    warden = runwarden(app_server.url, "--sidecar", wait_ready=True)
    assert "guard mode" not in warden.log()


def test_a_misspelled_option_or_variable_gets_the_nearest_name() -> None:
    option = _run("serve", "--failure-treshold", "3")
    assert option.returncode == exit_codes.BAD_CONFIG
    assert "did you mean --failure-threshold?" in option.stderr, option.stderr
    variable = _run("serve", RUNWARDEN_FAILURE_TRESHOLD="3")
    assert variable.returncode == exit_codes.BAD_CONFIG
    assert "did you mean RUNWARDEN_FAILURE_THRESHOLD?" in variable.stderr, variable.stderr


def test_dash_capital_v_prints_the_version() -> None:
    result = _run("-V")
    assert result.returncode == 0
    assert result.stdout.startswith("runwarden ")


def test_serve_help_is_grouped_and_has_no_rule_ids() -> None:
    text = _run("serve", "--help").stdout
    for section in ("health checks:", "the runner's door", "proxy and limits:",
                    "GPU monitoring:", "the app and its process:", "admin port and metrics:",
                    "logging:"):  # fmt: skip
        assert section in text, section
    assert "(H4)" not in text and "(K3)" not in text and "(Q2)" not in text


def test_serve_help_opens_with_two_examples_supervised_and_guard_mode() -> None:
    """The first screen of `serve --help` (before 279 lines of options) shows how it is run:
    an app command after `--`, and guard mode with --app-url."""
    top = _run("serve", "--help").stdout.splitlines()[:15]
    examples = [line.strip() for line in top if line.strip().startswith("runwarden serve ")]
    assert any(" -- " in line for line in examples), top
    assert any("--app-url" in line and " -- " not in line for line in examples), top


def test_demo_help_shows_the_admin_hosts_default_without_contradicting_it() -> None:
    text = " ".join(_run("demo", "--help").stdout.split())
    start = text.index("--admin-host TEXT the admin")
    entry = text[start : text.index("--admin-port", start)]
    assert "default: 127.0.0.1" in entry
    assert "every address" not in entry


def test_fast_first_readiness_holds_with_a_start_period_of_0(
    runwarden: Callable[..., Runwarden], app_server: AppServer
) -> None:
    """K3 whatever the start period: with 0 and a 15 s period, the runner is ready about
    half a second after its app, not a period later."""
    warden = runwarden(
        app_server.url, "--start-period-seconds", "0", "--period-seconds", "15",
        "--startup-check-seconds", "0.5",
    )  # fmt: skip
    started = time.monotonic()
    warden.wait_ready(timeout=10)
    assert time.monotonic() - started < 5.0


def test_with_json_logs_the_apps_lines_are_json_too_and_a_traceback_is_one_object() -> None:
    """Every line runwarden writes is one JSON object; the app's lines carry their stream
    and the app's pid, and its traceback stays whole."""
    app = (
        "import sys; print('hello from the app', flush=True); "
        "print('a warning', file=sys.stderr, flush=True); 1/0"
    )
    result = subprocess.run(
        [sys.executable, "-m", "runwarden", "serve", "--log-format", "json",
         "--host", "127.0.0.1", "--port", str(free_port()), "--admin-host", "127.0.0.1",
         "--admin-port", str(free_port()), "--no-gpu-monitoring",
         "--", sys.executable, "-c", app],
        capture_output=True, text=True, timeout=60, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == exit_codes.BY_REASON["app_exited"], result.stderr
    records = [json.loads(line) for line in (result.stdout + result.stderr).splitlines()]
    app_lines = [r for r in records if r["logger"] == "app"]
    assert {"message": "hello from the app", "stream": "stdout"}.items() <= app_lines[0].items()
    assert any(r["message"] == "a warning" and r["stream"] == "stderr" for r in app_lines)
    traceback = next(r for r in app_lines if r["message"].startswith("Traceback"))
    assert traceback["message"].endswith("ZeroDivisionError: division by zero")
    assert all(isinstance(r["pid"], int) for r in app_lines)


def test_a_check_request_through_a_front_proxy_on_this_host_is_warned_of_once(
    runwarden: Callable[..., Runwarden], app_server: AppServer
) -> None:
    """Trust is the peer's address; a loopback peer forwarding clients (X-Forwarded-For) makes
    every client trusted: runwarden says so once, with the setting that fixes it."""
    warden = runwarden(app_server.url, wait_ready=True)
    for _ in range(3):
        httpx.get(
            f"{warden.url}/",
            headers={"x-fal-runner-health-check": "1", "x-forwarded-for": "203.0.113.7"},
            timeout=10,
        )
    log = warden.log()
    assert log.count("came from 127.0.0.1 with X-Forwarded-For") == 1, log
    assert "--check-trusted-sources" in log


def test_the_log_tells_the_failure_before_the_replacement_it_caused(
    runwarden: Callable[..., Runwarden], app_server: AppServer
) -> None:
    warden = runwarden(app_server.url, wait_ready=True)
    app_server.set_health("fail500")
    assert warden.wait_exit() == exit_codes.BY_REASON["health_check"]
    lines = warden.log().splitlines()
    failed = max(i for i, x in enumerate(lines) if "health check failed (counted" in x)
    replacing = next(i for i, x in enumerate(lines) if "replacing the runner" in x)
    assert failed < replacing, "\n".join(lines)


def test_an_app_that_stops_on_sigterm_is_said_to_have_stopped_as_asked(
    runwarden: Callable[..., Runwarden], app_server: AppServer
) -> None:
    """A clean stop: runwarden SIGTERMs the app, which ends by the signal's default action;
    that is the stop asked for, not a kill."""
    app = [sys.executable, "-c", "import time; time.sleep(600)"]
    warden = runwarden(app_server.url, app_command=app, wait_ready=True)
    poll(lambda: "started the app" in warden.log())
    warden.stop()
    log = warden.log()
    assert "the app stopped on SIGTERM, as asked" in log, log
    assert "killed by signal SIGTERM" not in log


# A model server that loads for SECONDS before it listens (a stand-in for reading weights),
# then answers 200 to every GET.
SLOW_APP = """
import http.server, sys, time
time.sleep(float(sys.argv[2]))


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""


def _slow_app(load_seconds: float) -> tuple[str, list[str]]:
    port = free_port()
    return f"http://127.0.0.1:{port}", [sys.executable, "-c", SLOW_APP, str(port),
                                        str(load_seconds)]  # fmt: skip


def test_H1_a_model_server_profile_lets_a_slow_loading_app_load_and_become_ready(
    runwarden: Callable[..., Runwarden],
) -> None:
    """H1 under `--app-profile vllm`: the profile's start-up budget (1200 s) raises the start
    period, so an app that loads for longer than the checks alone allow stays up and becomes
    ready. Scaled: the tests' periods (0.2 s, threshold 3, start period 0) would replace a
    runner whose app is silent for ~0.6 s, and this app loads for 3 s, as the defaults (30 s
    start period, 3 checks 15 s apart: ~60 s) would replace a model loading for 100 s."""
    url, command = _slow_app(3)
    started = time.monotonic()
    rw = runwarden(url, "--app-profile", "vllm", app_command=command)
    rw.wait_ready(timeout=20)
    assert time.monotonic() - started >= 3
    assert rw.proc.poll() is None
    status = rw.status()
    sources = status["setting_sources"]
    assert sources["startup_timeout_seconds"] == "profile vllm", sources  # type: ignore[index]
    assert status["settings"]["startup_timeout_seconds"] == 1200, status  # type: ignore[index]


def test_H1_a_runner_replaced_before_its_app_ever_passed_names_the_startup_timeout(
    runwarden: Callable[..., Runwarden],
) -> None:
    """The same slow app with the generic profile (no start-up budget): replaced while still
    loading, and the exit line says the app never passed a check and which option gives it
    longer."""
    url, command = _slow_app(30)
    rw = runwarden(url, "--app-profile", "generic", app_command=command)
    assert rw.wait_exit() == exit_codes.BY_REASON["health_check"]
    line = next(x for x in rw.log().splitlines() if "exiting with code 10" in x)
    assert "never passed a check" in line and "--startup-timeout-seconds" in line, line


def test_make_test_says_it_installs_into_the_environment_and_what_it_replaces(
    quickstart: Path,
) -> None:
    """`make test` from the quick start's environment (runwarden installed, no pytest): it
    installs this checkout there, editable; it says so before, names the runwarden it
    replaces, and how to test in a venv of its own. (PIP_INSTALL=true: nothing installed.)"""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        ["make", "-s", "install-test", f"PYTHON={quickstart / 'python'}", "PIP_INSTALL=true"],
        cwd=root, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert f"into the environment of {quickstart.parent}" in out, out
    assert "this replaces the runwarden installed there from " in out, out
    assert "site-packages/runwarden" in out, out
    assert "python3 -m venv .venv" in out, out
