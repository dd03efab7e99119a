"""Fixtures that start real processes on loopback and always stop them."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listened on {port} within {timeout}s")


@dataclass
class AppServer:
    """The test model server (tests/app_server.py) in its own process."""

    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_health(self, mode: str) -> None:
        httpx.post(f"{self.url}/_control/health", json={"mode": mode}, timeout=5).raise_for_status()

    def state(self) -> dict[str, object]:
        return dict(httpx.get(f"{self.url}/_control/state", timeout=5).json())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_app_server(port: int | None = None, script: str = "app_server.py") -> AppServer:
    """A test app (`script` in tests/, given its port) in its own process, listening."""
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script), str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_until_listening(port, proc)
    return AppServer(port, proc)


def serving(script: str = "app_server.py") -> Iterator[AppServer]:
    """A fixture's body: the test app `script` for one test, always stopped after it."""
    server = start_app_server(script=script)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def app_server() -> Iterator[AppServer]:
    yield from serving()


# --- runwarden itself, as a real process (the sidecar tests) ------------------------------

SHORT_SETTINGS = [
    "--period-seconds", "0.2",
    "--timeout-seconds", "0.3",
    "--start-period-seconds", "0",
    "--trigger-interval-seconds", "0.1",
    "--drain-timeout-seconds", "5",
    "--app-stop-timeout-seconds", "3",
]  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment less any RUNWARDEN_* the caller's shell had."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNWARDEN_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def poll(condition: object, timeout: float = 10.0, interval: float = 0.02) -> object:
    """Call `condition` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = condition()  # type: ignore[operator]
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value {last!r})")


@dataclass
class Runwarden:
    """`python -m runwarden serve ...` in its own process; its log goes to a file."""

    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def status(self) -> dict[str, object]:
        return dict(httpx.get(f"{self.admin_url}/status", timeout=5).json())

    def metrics(self) -> dict[str, float]:
        """/metrics parsed as Prometheus parses it: each sample's value by its name and
        labels, written `name{a="1",b="2"}` with the labels sorted (no braces without)."""
        text = httpx.get(f"{self.admin_url}/metrics", timeout=5).text
        return parse_metrics(text)

    def wait_ready(self, timeout: float = 10.0) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"{self.admin_url}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        poll(ready, timeout)

    def wait_exit(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"runwarden still running after {timeout}s:\n{self.log()}"
            ) from None

    def stop(self) -> None:
        """Stop it as an orchestrator would: SIGTERM (a clean stop, which also stops a
        supervised app), SIGKILL only if that hangs; a SIGKILL alone would orphan the app."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_runwarden(
    tmp_path: Path,
    app_url: str | None,
    *options: str,
    app_command: list[str] | None = None,
    command: str = "serve",
    env: dict[str, str] | None = None,
    wait_ready: bool = False,
    max_fds: int | None = None,
    wrapper: list[str] | None = None,
) -> Runwarden:
    port, admin_port = free_port(), free_port()
    # Loopback only, like every server a test starts.
    args = [sys.executable, "-m", "runwarden", command, "--host", "127.0.0.1",
            "--port", str(port), "--admin-host", "127.0.0.1",
            "--admin-port", str(admin_port)]  # fmt: skip
    if command == "serve":
        args += SHORT_SETTINGS
    if app_url is not None:
        args += ["--app-url", app_url]
    args += list(options)
    if app_command:
        args += ["--", *app_command]
    if wrapper:  # a command runwarden runs under (setpriv, unshare)
        args = [*wrapper, *args]
    log_path = tmp_path / f"runwarden-{port}.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            args,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env or clean_env(),
            preexec_fn=None if max_fds is None else lambda: _limit_fds(max_fds),
        )
    warden = Runwarden(proc, port, admin_port, log_path)
    try:
        wait_until_listening(port, proc)
        wait_until_listening(admin_port, proc)
        if wait_ready:
            warden.wait_ready()
    except BaseException:
        warden.stop()
        raise RuntimeError(f"runwarden did not start:\n{warden.log()}") from None
    return warden


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus' text format, parsed by prometheus_client: `name{labels}` -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _limit_fds(count: int) -> None:
    """As `ulimit -n COUNT` (soft and hard) for the process about to start."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@pytest.fixture
def runwarden(tmp_path: Path) -> Iterator[Callable[..., Runwarden]]:
    """A factory: `runwarden(app_url, *options, app_command=[...])`; all stopped at the end."""
    started: list[Runwarden] = []

    def factory(app_url: str | None, *options: str, **kwargs: object) -> Runwarden:
        warden = start_runwarden(tmp_path, app_url, *options, **kwargs)  # type: ignore[arg-type]
        started.append(warden)
        return warden

    try:
        yield factory
    finally:
        for warden in started:
            warden.stop()


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick start's install: a fresh virtual environment, `pip install '.[demo]'` from
    the checkout (not editable). With the extension already built in target/ (make test's
    `pip install -e`), cargo has nothing to compile: about 10 s; from a cold target/, the
    Rust core's first build (minutes)."""
    venv = tmp_path_factory.mktemp("quickstart") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", ".[demo]"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    return venv / "bin"
