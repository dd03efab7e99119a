"""The command line (SPEC C, H7, D4)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import clean_env
from runwarden import exit_codes
from runwarden.cli import build_parser, parse
from runwarden.settings import SPECS, ConfigError, resolve

SPEC_OPTIONS = [
    "--start-period-seconds", "--timeout-seconds", "--failure-threshold", "--call-regularly",
    "--no-call-regularly", "--period-seconds", "--startup-timeout-seconds", "--health-path",
    "--health-method", "--check-header", "--allow-on-busy", "--stall-seconds",
    "--drain-timeout-seconds", "--app-stop-timeout-seconds", "--gpu-sample-seconds",
    "--nvml-watchdog-seconds", "--nvml-library", "--app-url", "--host", "--port",
    "--admin-host", "--admin-port",
]  # fmt: skip


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runwarden", *args],
        capture_output=True, text=True, timeout=30, env=clean_env(**env),
    )  # fmt: skip


def test_C_help_explains_every_option_with_its_default():
    """C: `serve --help` lists every SPEC option, each with its default and env name."""
    result = _run("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in SPEC_OPTIONS:
        assert option in text, option
    for option in SPECS:
        assert option.env in text
    assert "(default: 30; env RUNWARDEN_START_PERIOD_SECONDS)" in text
    assert "http://127.0.0.1:8000" in text and "8080" in text and "8081" in text
    assert "app_503" in text  # the exit code table


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--failure-threshold", "0"], {}, "--failure-threshold"),
        (["--timeout-seconds", "abc"], {}, "--timeout-seconds"),
        (["--period-seconds", "-1"], {}, "--period-seconds"),
        (["--start-period-seconds", "1.5"], {}, "--start-period-seconds"),
        (["--health-method", "PUT"], {}, "--health-method"),
        (["--port", "70000"], {}, "--port"),
        (["--app-url", "ftp://x"], {}, "--app-url"),
        (["--drain-timeout-seconds", "-2"], {}, "--drain-timeout-seconds"),
        (["--gpu-sample-seconds", "0"], {}, "--gpu-sample-seconds"),
        (["--no-such-option"], {}, "--no-such-option"),
        ([], {"RUNWARDEN_FAILURE_THRESHOLD": "zero"}, "RUNWARDEN_FAILURE_THRESHOLD"),
        ([], {"RUNWARDEN_TIMEOUT_SECONDS": "0"}, "--timeout-seconds"),
        ([], {"RUNWARDEN_NO_SUCH_SETTING": "1"}, "RUNWARDEN_NO_SUCH_SETTING"),
        (["--check-header", "Content-Length"], {}, "--check-header"),
        (["--gpu-promote-warnings", "fans=3"], {}, "--gpu-promote-warnings"),
        (["--gpu-fatal-xids", "79,x"], {}, "--gpu-fatal-xids"),
    ],
)
def test_C_H7_bad_options_exit_2_naming_the_option(args, env, named):
    """C/H7/D4: an invalid option or variable stops start-up with exit code 2 and a message
    that names it."""
    result = _run("serve", *args, **env)
    assert result.returncode == exit_codes.BAD_CONFIG == 2
    assert named in result.stderr, result.stderr


def test_C_environment_sets_options_and_command_line_wins():
    """C: RUNWARDEN_<NAME> sets an option; the command line overrides it."""
    env = {
        "RUNWARDEN_PERIOD_SECONDS": "3",
        "RUNWARDEN_FAILURE_THRESHOLD": "5",
        "RUNWARDEN_CALL_REGULARLY": "false",
        "RUNWARDEN_STALL_SECONDS": "7.5",
        "RUNWARDEN_CHECK_HEADER": "X-Check",
    }
    settings = parse(["serve", "--period-seconds", "2", "--", "python", "app.py"], env)
    assert settings.health.period_seconds == 2.0
    assert settings.health.failure_threshold == 5
    assert settings.health.call_regularly is False
    assert settings.health.stall_seconds == 7.5
    assert settings.check_header == "x-check"
    assert settings.app_command == ("python", "app.py")
    assert parse(["serve", "--call-regularly"], env).health.call_regularly is True


def test_C_defaults_match_the_spec():
    """C/H: the defaults are the SPEC's."""
    settings = parse(["serve"], {})
    h = settings.health
    assert (h.start_period_seconds, h.timeout_seconds, h.failure_threshold) == (30, 5.0, 3)
    assert (h.call_regularly, h.period_seconds, h.startup_timeout_seconds) == (True, 15.0, 0.0)
    assert (h.health_path, h.health_method, h.allow_on_busy, h.stall_seconds) == (
        "/health", "GET", False, None,
    )  # fmt: skip
    assert settings.app_url == "http://127.0.0.1:8000"
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    # K: probes and scrapes reach the admin port on the pod IP
    assert (settings.admin_host, settings.admin_port) == ("0.0.0.0", 8081)
    assert settings.check_header == "x-fal-runner-health-check"
    assert (settings.drain_timeout_seconds, settings.app_stop_timeout_seconds) == (30.0, 10.0)
    assert (settings.gpu_sample_seconds, settings.nvml_watchdog_seconds) == (5.0, 10.0)


def test_C_resolve_raises_config_error_naming_the_setting():
    """H7: the core's SettingsError becomes a ConfigError naming the CLI option."""
    args = build_parser().parse_args(["serve", "--timeout-seconds", "0"])
    with pytest.raises(ConfigError, match="--timeout-seconds"):
        resolve(args, {})


def test_D4_exit_codes_are_distinct_and_documented():
    """D4: every reason has its own code, distinct from 0, 2 and the shells' codes."""
    codes = [code for code, _, _ in exit_codes.TABLE]
    assert len(codes) == len(set(codes))
    assert set(exit_codes.BY_REASON) == {
        "health_check", "manual_check", "app_503", "gpu_fault", "stalled", "app_exited",
    }  # fmt: skip
    for code in exit_codes.BY_REASON.values():
        assert 10 <= code < 126


def test_C_startup_failure_when_the_port_is_taken(tmp_path):
    """D4: a port in use is reported in one line, with its own exit code."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _run("serve", "--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == exit_codes.STARTUP_FAILED
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_C_an_app_command_without_dashes_is_told_to_go_after_them():
    """C: `serve uvicorn my_server:app` (no `--`): exit 2 saying to put the app's command
    after `--`, with the command line that would work."""
    result = _run("serve", "--port", "9", "uvicorn", "my_server:app")
    assert result.returncode == exit_codes.BAD_CONFIG
    assert "put the app's command after `--`" in result.stderr, result.stderr
    assert "runwarden serve --port 9 -- uvicorn my_server:app" in result.stderr, result.stderr


def test_C_an_option_before_and_after_the_apps_name_is_refused_naming_it():
    """C: without `--`, the app's own `--port 8000` would silently become runwarden's; given
    both before and after the app's name it is refused, named, with the fixed command."""
    result = _run("serve", "--port", "8080", "uvicorn", "my_server:app", "--port", "8000")
    assert result.returncode == exit_codes.BAD_CONFIG
    err = " ".join(result.stderr.split())
    assert "--port given both before and after the app's name 'uvicorn'" in err, err
    assert "runwarden serve --port 8080 -- uvicorn my_server:app --port 8000" in err, err
