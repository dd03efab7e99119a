"""Sections 3 and 4: the proxy's cost against nginx and against no proxy at all.

One app (`benches.app`) is reached three ways: directly (the limit), through nginx
`proxy_pass` with a keep-alive upstream, and through `runwarden serve` (GPU monitoring of 8
fake GPUs on, at its default 5 s). Small requests are driven by wrk at concurrency 1, 16
and 64 in interleaved rounds; 1 GiB is downloaded and uploaded by curl; server-sent events
carry their send time so each event's delay through a proxy can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benches.common import (
    PYTHON,
    Profile,
    fake_nvml_library,
    free_port,
    log,
    median,
    percentile,
    rss_mib,
    running,
    wait_http,
    write_gpus,
)
from benches.tools import nginx, wrk

CONCURRENCY = (1, 16, 64)
CLIENTS = ("aiohttp", "httpx")
"""The other upstream clients runwarden is measured with (`benches/proxy_clients.py`)."""


def client_row(client: str) -> str:
    return f"runwarden, {client} client"


@contextlib.contextmanager
def runwarden(app_port: int, tmp: Path, client: str | None = None) -> Iterator[tuple[int, int]]:
    """`runwarden serve` in front of the app; yields (its port, its pid). `client` swaps in
    one of `CLIENTS` for runwarden's own upstream client."""
    port, admin = free_port(), free_port()
    name = client or "own"
    env = write_gpus(tmp / f"proxy-gpus-{name}.json")
    module = ["runwarden"] if client is None else ["benches.proxy_clients", client]
    args = [
        PYTHON, "-m", *module, "serve",
        "--app-url", f"http://127.0.0.1:{app_port}", "--host", "127.0.0.1",
        "--port", str(port), "--admin-host", "127.0.0.1",
        "--admin-port", str(admin), "--log-level", "warning",
        "--nvml-library", str(fake_nvml_library()),
    ]  # fmt: skip
    with running(args, port=port, env=env, log_to=tmp / f"runwarden-{name}.log") as proc:
        wait_http(f"http://127.0.0.1:{port}/json", proc)
        yield port, proc.pid


@contextlib.contextmanager
def targets(profile: Profile, tmp: Path) -> Iterator[dict[str, tuple[int, int | None]]]:
    """The app and the proxies: name -> (port, pid of the proxy process, if any)."""
    app_port = free_port()
    with contextlib.ExitStack() as stack:
        stack.enter_context(running([PYTHON, "-m", "benches.app", str(app_port)], port=app_port))
        where: dict[str, tuple[int, int | None]] = {"direct": (app_port, None)}
        where["nginx"] = (stack.enter_context(nginx(app_port, tmp / "nginx")), None)
        where["runwarden"] = stack.enter_context(runwarden(app_port, tmp))
        for client in CLIENTS if not profile.smoke else ():
            where[client_row(client)] = stack.enter_context(runwarden(app_port, tmp, client))
        yield where


def small_requests(profile: Profile, where: dict[str, tuple[int, int | None]]) -> dict[str, Any]:
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(profile.wrk_rounds):
        for c in CONCURRENCY:
            for name, (port, _) in where.items():
                url = f"http://127.0.0.1:{port}/json"
                result = wrk(url, c, profile.wrk_seconds)
                runs.setdefault((name, c), []).append(result)
                log(
                    f"proxy round {round_ + 1} c={c} {name}: {result['rps']:.0f} req/s, "
                    f"p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms"
                )
    table: dict[str, Any] = {}
    for (name, c), results in runs.items():
        table.setdefault(name, {})[c] = {
            key: median([r[key] for r in results]) for key in results[0]
        }
    return table


class RssWatch:
    """Peak RSS of a process while a transfer runs, polled every 20 ms."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.before = rss_mib(pid) if pid else 0.0
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
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


def curl(args: list[str], timeout: float) -> dict[str, float]:
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "-H", "Expect:", "-w",
         "%{http_code} %{speed_download} %{speed_upload} %{size_download} %{size_upload}",
         *args],
        capture_output=True, text=True, check=True, timeout=timeout,
    ).stdout.split()  # fmt: skip
    code, down, up, size_down, size_up = out
    if code != "200":
        raise RuntimeError(f"curl {args}: status {code}")
    return {"down_mb_s": float(down) / 1e6, "up_mb_s": float(up) / 1e6,
            "size_down": float(size_down), "size_up": float(size_up)}  # fmt: skip


def streaming(profile: Profile, where: dict[str, tuple[int, int | None]], tmp: Path) -> Any:
    size = profile.stream_bytes
    body = tmp / "upload.bin"
    with body.open("wb") as f:  # sparse: reading it costs no disk
        f.truncate(size)
    out: dict[str, dict[str, float]] = {}
    for name, (port, pid) in where.items():
        base = f"http://127.0.0.1:{port}"
        with RssWatch(pid) as down_rss:
            down = curl([f"{base}/download?size={size}"], timeout=120)
        with RssWatch(pid) as up_rss:
            up = curl(["-X", "POST", "-H", "content-type: application/octet-stream",
                       "-T", str(body), f"{base}/upload"], timeout=120)  # fmt: skip
        assert down["size_down"] == size and up["size_up"] == size, (down, up)
        out[name] = {
            "download_mb_s": down["down_mb_s"],
            "upload_mb_s": up["up_mb_s"],
            "rss_growth_mib": max(down_rss.growth, up_rss.growth),
        }
        log(f"stream {name}: down {down['down_mb_s']:.0f} MB/s, up {up['up_mb_s']:.0f} MB/s")
    body.unlink()
    return out


async def sse_delays(port: int, events: int, start_after: float) -> list[float]:
    """Seconds from each event's send (in the app) to its arrival here, over one stream."""
    await asyncio.sleep(start_after)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /sse?n={events}&interval=0.01 HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    delays: list[float] = []
    pending = b""
    try:
        while len(delays) < events:
            data = await asyncio.wait_for(reader.read(65536), 10)
            now = time.monotonic_ns()
            if not data:
                break
            pending += data
            # Each event is one small chunk; a chunk-size line never splits one in practice.
            found = list(re.finditer(rb"data: (\d+)\n\n", pending))
            delays += [(now - int(m.group(1))) / 1e9 for m in found]
            if found:
                pending = pending[found[-1].end() :]
    finally:
        writer.close()
    return delays


def sse(profile: Profile, where: dict[str, tuple[int, int | None]]) -> dict[str, Any]:
    """Every target's stream at once (offset by a few ms so their events do not coincide),
    so the machine's noise falls on all of them alike."""

    async def all_streams() -> list[list[float]]:
        return await asyncio.gather(
            *(sse_delays(port, profile.sse_events, 0.002 * i)
              for i, (port, _) in enumerate(where.values()))
        )  # fmt: skip

    out = {}
    for name, delays in zip(where, asyncio.run(all_streams()), strict=True):
        if len(delays) < 0.95 * profile.sse_events:
            raise RuntimeError(f"{name}: {len(delays)} of {profile.sse_events} events arrived")
        out[name] = {"p50_ms": 1000 * percentile(delays, 50),
                     "p99_ms": 1000 * percentile(delays, 99)}  # fmt: skip
        log(f"sse {name}: p50 {out[name]['p50_ms']:.3f} ms, p99 {out[name]['p99_ms']:.3f} ms")
    return out


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    with targets(profile, tmp) as where:
        return {
            "small": small_requests(profile, where),
            "streaming": streaming(profile, where, tmp),
            "sse": sse(profile, where),
        }
