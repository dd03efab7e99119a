"""What every section of the runner shares: processes started in their own group and always
stopped, free loopback ports, the fake NVML driver, and small statistics."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
GPUS = 8
"""Every GPU figure is for a runner with eight GPUs, as on an 8x H100 host."""


@dataclass
class Profile:
    """How long and how often to measure. `smoke` runs every path in seconds."""

    smoke: bool
    reps: int = 8
    phase_seconds: float = 1.5
    samples: int = 300
    wrk_seconds: float = 4.0
    wrk_rounds: int = 2
    stream_bytes: int = 1 << 30
    sse_events: int = 400
    messages: int = 20_000
    """WebSocket messages per run over one connection."""
    calls: int = 4_000
    """gRPC unary calls per run."""
    attack_frames: int = 1_000_000
    """Frames a flood sends (SETTINGS, PING): enough that their unread answers outgrow the
    sockets' buffers. The rapid reset opens a tenth as many streams."""
    footprint_seconds: float = 60.0
    notes: list[str] = field(default_factory=list)

    @classmethod
    def make(cls, smoke: bool) -> Profile:
        if not smoke:
            return cls(smoke=False)
        return cls(
            smoke=True,
            reps=1,
            phase_seconds=0.5,
            samples=20,
            wrk_seconds=1.0,
            wrk_rounds=1,
            stream_bytes=16 << 20,
            sse_events=20,
            messages=300,
            calls=100,
            attack_frames=20_000,
            footprint_seconds=2.0,
        )


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(
    port: int, proc: subprocess.Popen[bytes] | None = None, limit: float = 20.0
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {limit}s")


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, limit: float = 20.0) -> None:
    """Until `url` answers 200."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} before {url}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.02)
    raise TimeoutError(f"{url} did not answer 200 within {limit}s")


def http(url: str, data: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def start(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    quiet: bool = True,
    log_to: Path | None = None,
) -> subprocess.Popen[bytes]:
    """A process in its own session, so `stop` reaches its children too."""
    out: int | object = subprocess.DEVNULL if quiet else None
    if log_to is not None:
        out = log_to.open("ab")
    return subprocess.Popen(
        list(args),
        env={**os.environ, **(env or {})},
        stdout=out,  # type: ignore[arg-type]
        stderr=out,  # type: ignore[arg-type]
        start_new_session=True,
        cwd=ROOT,
    )


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int | None:
    """SIGTERM the process group, SIGKILL it after `grace`; returns the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Children left in the group (an app the process supervised) go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


@contextlib.contextmanager
def running(
    args: Sequence[str],
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_url: str | None = None,
    log_to: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    proc = start(args, env, log_to=log_to)
    try:
        if port is not None:
            wait_listening(port, proc)
        if ready_url is not None:
            wait_http(ready_url, proc)
        yield proc
    finally:
        stop(proc)


def fake_nvml_library() -> Path:
    """The fake `libnvidia-ml.so.1`, built if missing (cargo, once per checkout)."""
    from runwarden.testing import LIBRARY_NAME, fake_nvml_dir

    return fake_nvml_dir() / LIBRARY_NAME


def write_gpus(path: Path, gpus: int = GPUS) -> dict[str, str]:
    """A state file with `gpus` busy, healthy GPUs; returns the env naming it."""
    from runwarden.testing import FakeNvml

    fake = FakeNvml(path)
    fake.reset(gpus=gpus)
    for i in range(gpus):
        fake.set_gpu(i, temperature=60 + i, gpu_util=95, memory_util=40, power_mw=650_000)
    return fake.env


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def rss_mib(pid: int) -> float:
    """Resident set size of one process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (nginx's workers under its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


class RssWatch:
    """Peak RSS of a process while something runs against it, polled every 20 ms."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.before = rss_mib(pid) if pid else 0.0
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):  # the process may be gone: the peak stands
                self.peak = max(self.peak, rss_mib(self.pid))  # type: ignore[arg-type]

    def __enter__(self) -> RssWatch:
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self.pid:
            self._thread.join()

    @property
    def growth(self) -> float:
        return self.peak - self.before


def runwarden_serve(*options: str) -> list[str]:
    return [PYTHON, "-m", "runwarden", "serve", *options]
