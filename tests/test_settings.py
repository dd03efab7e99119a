"""Each setting is declared once (SPEC C, H7): the command line, the environment, the Python
keyword defaults, the stub, the README and docs/settings.md all agree with the table, and
errors name their setting as data."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import clean_env
from runwarden import GpuSettings, HealthSettings, ProxySettings, SettingsError
from runwarden.cli import parse
from runwarden.settings import GPU, HEALTH, PROXY, SIDECAR, SPECS, ConfigError, Spec, markdown

ROOT = Path(__file__).resolve().parent.parent

# A valid value other than the default for every setting of the process and the data plane,
# as text: setting it through the environment must change what `parse` returns. A new
# setting without a row here fails.
OTHER = {
    "app_url": ("http://127.0.0.1:9000/v1", "http://127.0.0.1:9000/v1"),
    "host": ("127.0.0.2", "127.0.0.2"),
    "port": ("9090", 9090),
    "admin_host": ("127.0.0.1", "127.0.0.1"),
    "admin_port": ("9091", 9091),
    "app_protocol": ("h2c", "h2c"),
    "check_header": ("X-Check", "x-check"),
    "check_trusted_sources": ("10.0.0.1", ["10.0.0.1/32"]),
    "header_timeout_seconds": ("2.5", 2.5),
    "keep_alive_seconds": ("30", 30.0),
    "client_body_timeout_seconds": ("20", 20.0),
    "send_timeout_seconds": ("21", 21.0),
    "tunnel_idle_timeout_seconds": ("22", 22.0),
    "max_connections": ("100", 100),
    "max_app_connections": ("64", 64),
    "drain_timeout_seconds": ("12", 12.0),
    "max_concurrency": ("8", 8),
    "max_queue": ("3", 3),
    "queue_timeout_seconds": ("2.5", 2.5),
    "request_timeout_seconds": ("120", 120.0),
    "app_profile": ("vllm", "vllm"),
    "proxy_threads": ("2", 2),
    "app_stop_timeout_seconds": ("4", 4.0),
    "gpu_monitoring": ("false", False),
    "log_level": ("debug", "DEBUG"),
    "log_format": ("json", "json"),
    "access_log": ("true", True),
    "sidecar": ("true", True),
    "termination_message_path": ("/tmp/why", "/tmp/why"),
}


def _other(spec: Spec) -> tuple[str, Any]:
    if spec.name in OTHER:
        return OTHER[spec.name]
    default = spec.default
    if isinstance(default, bool):
        return ("false" if default else "true"), not default
    if isinstance(default, int):
        return str(default + 1), default + 1
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    if isinstance(default, list):
        return "1,2", [1, 2]
    if isinstance(default, dict):
        return "temperature=5", {"temperature": 5.0}
    if spec.name == "health_method":
        return "POST", "POST"
    if spec.name == "check_protocol":
        return "grpc", "grpc"
    if spec.name == "grpc_health_service":
        return "inference", "inference"
    if spec.name == "gpu_metrics":
        return "runwarden", "runwarden"
    if spec.name == "health_path":
        return "/healthz", "/healthz"
    if spec.name == "stall_seconds":
        return "7.5", 7.5
    if spec.name == "exclusive_checks":
        return "true", True
    if spec.name == "cuda_library":
        return "/opt/cuda/libcuda.so.1", "/opt/cuda/libcuda.so.1"
    if spec.name == "gpus":
        return "0,GPU-1", ["0", "GPU-1"]
    if spec.name == "nvml_library":
        return "/opt/nvml/libnvidia-ml.so.1", "/opt/nvml/libnvidia-ml.so.1"
    raise AssertionError(f"no other value for {spec.name}: add one to this test")


def _value(settings: Any, spec: Spec) -> Any:
    if spec.group == "health":
        return getattr(settings.health, spec.name)
    if spec.group == "proxy":
        return getattr(settings.proxy, spec.name)
    if spec.group == "gpu":
        return getattr(settings.gpu, spec.name)
    return getattr(settings, spec.name)


def test_C_every_setting_is_an_option_with_its_default_and_env_name_in_help() -> None:
    """C: `serve --help` shows every setting with its default and its variable."""
    result = subprocess.run(
        [sys.executable, "-m", "runwarden", "serve", "--help"],
        capture_output=True, text=True, timeout=30, env=clean_env(),
    )  # fmt: skip
    text = "".join(result.stdout.split())  # argparse wraps lines, also at hyphens
    for spec in SPECS:
        assert spec.cli in text, spec.cli
        shown = f"(default: {spec.default_text}; env {spec.env})"
        assert "".join(shown.split()) in text, spec.name


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_C_every_setting_is_read_from_its_environment_variable(spec: Spec) -> None:
    """C: RUNWARDEN_<NAME> sets the setting of that name, wherever it lives."""
    default = _value(parse(["serve"], {}), spec)
    text, expected = _other(spec)
    assert expected != default, spec.name
    env = {spec.env: text}
    if spec.group == "gpu":
        env["RUNWARDEN_GPU_MONITORING"] = "true"
    assert _value(parse(["serve"], env), spec) == expected


def test_H7_the_python_keyword_defaults_are_the_tables() -> None:
    """H7: HealthSettings(), ProxySettings() and GpuSettings() hold exactly the table's
    defaults."""
    assert HealthSettings().to_dict() == {s.name: s.default for s in HEALTH}
    assert ProxySettings().to_dict() == {s.name: s.default for s in PROXY}
    assert GpuSettings().to_dict() == {s.name: s.default for s in GPU}


def _stub_defaults(cls: str) -> dict[str, Any]:
    tree = ast.parse((ROOT / "python/runwarden/_core.pyi").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    new = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__new__")
    args = new.args
    defaults = zip(args.kwonlyargs, args.kw_defaults, strict=True)
    return {a.arg: ast.literal_eval(d) for a, d in defaults}  # type: ignore[arg-type]


def test_H7_the_stub_signatures_are_the_tables() -> None:
    """H7: _core.pyi's keyword defaults (a copy a type checker needs) equal the table."""
    assert _stub_defaults("HealthSettings") == {s.name: s.default for s in HEALTH}
    assert _stub_defaults("ProxySettings") == {s.name: s.default for s in PROXY}
    assert _stub_defaults("GpuSettings") == {s.name: s.default for s in GPU}


def test_C_the_readme_health_table_and_docs_settings_agree_with_the_table() -> None:
    """C: the README's health-check table shows each setting's default as the table has it,
    and docs/settings.md is what `make docs` generates."""
    readme = (ROOT / "README.md").read_text()
    for spec in HEALTH:
        row = re.search(rf"^\| `{spec.name}` \| [^|]+ \| ([^|]+) \|", readme, re.M)
        assert row, f"no README row for {spec.name}"
        shown = row.group(1).strip().strip("`")
        assert shown == spec.default_text, (spec.name, shown, spec.default_text)
    assert (ROOT / "docs/settings.md").read_text() == markdown(), "run `make docs`"


def test_C_sidecar_settings_are_each_declared_once() -> None:
    names = [s.name for s in SPECS]
    assert len(names) == len(set(names))
    assert set(OTHER) == {s.name for s in SIDECAR + PROXY}


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--gpu-remapped-rows-fatal", "0"], "gpu_remapped_rows_fatal"),
        (["--gpu-retired-pages-fatal", "0"], "gpu_retired_pages_fatal"),
        (["--gpu-ignored-xids", "79"], "gpu_ignored_xids"),
        (["--failure-threshold", "0"], "failure_threshold"),
        (["--health-method", "PUT"], "health_method"),
    ],
)
def test_H7_errors_carry_the_setting_as_data(args: list[str], setting: str) -> None:
    """H7: a bad value's error names its setting as an attribute, and its message names the
    option, the same one (never found by reading the message)."""
    with pytest.raises(ConfigError) as caught:
        parse(["serve", *args], {})
    assert caught.value.setting == setting
    cli = "--" + setting.replace("_", "-")
    assert str(caught.value).startswith(f"{cli} (env RUNWARDEN_{setting.upper()}): {setting}")
    with pytest.raises(SettingsError) as core:
        (GpuSettings if setting.startswith("gpu") else HealthSettings)(**{setting: _bad(setting)})
    assert core.value.setting == setting


def _bad(setting: str) -> Any:
    return {"gpu_ignored_xids": [79], "health_method": "PUT"}.get(setting, 0)


def test_C_an_app_url_with_a_path_prefix_is_proxied_and_checked_under_it(
    app_server: Any, runwarden: Any
) -> None:
    """C (issue 10): `--app-url http://host:port/prefix` is supported end to end: requests
    go to the prefix plus their path, checks to the prefix plus the health path."""
    import httpx

    rw = runwarden(f"{app_server.url}/echo", "--health-path", "/health", wait_ready=True)
    assert rw.status()["health"]["health_url"] == f"{app_server.url}/echo/health"  # type: ignore[index]
    seen = httpx.get(f"{rw.url}/x/y").json()
    assert seen["path"] == "/echo/x/y"


def test_C_kubernetes_service_links_of_a_service_named_runwarden_are_not_options() -> None:
    """C: a Service named `runwarden` makes the kubelet set RUNWARDEN_PORT=tcp://… and
    RUNWARDEN_SERVICE_HOST… in every container of its namespace; they are ignored, said
    once, and never taken for --port or refused as unknown options."""
    links = {
        "RUNWARDEN_SERVICE_HOST": "10.0.0.7",
        "RUNWARDEN_SERVICE_PORT": "8080",
        "RUNWARDEN_SERVICE_PORT_HTTP": "8080",
        "RUNWARDEN_PORT": "tcp://10.0.0.7:8080",
        "RUNWARDEN_PORT_8080_TCP": "tcp://10.0.0.7:8080",
        "RUNWARDEN_PORT_8080_TCP_PROTO": "tcp",
        "RUNWARDEN_PORT_8080_TCP_PORT": "8080",
        "RUNWARDEN_PORT_8080_TCP_ADDR": "10.0.0.7",
    }
    settings = parse(["serve"], links)
    assert settings.port == 8080
    assert len(settings.notes) == 1 and "RUNWARDEN_PORT," in settings.notes[0]
    assert parse(["serve"], {**links, "RUNWARDEN_PORT": "9000"}).port == 9000
    with pytest.raises(ConfigError, match="RUNWARDEN_PORTS"):
        parse(["serve"], {"RUNWARDEN_PORTS": "1"})
