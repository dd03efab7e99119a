"""Fixtures that start real processes on loopback and always stop them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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


def start_app_server(port: int | None = None) -> AppServer:
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "app_server.py"), str(port)],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    wait_until_listening(port, proc)
    return AppServer(port, proc)


@pytest.fixture
def app_server() -> Iterator[AppServer]:
    server = start_app_server()
    try:
        yield server
    finally:
        server.kill()
