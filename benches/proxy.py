"""Sections 3 and 4: the proxy's cost against nginx and against no proxy at all (SPEC P2).

One app (`benches.app`) is reached three ways: directly (the limit), through nginx
`proxy_pass` with a keep-alive upstream (one worker), and through `runwarden serve` (GPU
monitoring of 8 fake GPUs on, at its default 5 s), with `--proxy-threads 1` (the default) and
2 side by side. Small requests are driven by wrk at concurrency 1, 16 and 64 in interleaved
rounds, each run also timing the CPU the proxy's process and the app's spent on it
(`/proc/PID/stat`, user + system) per request wrk completed: a measure that holds still on a
shared machine where wall-clock ratios do not. 1 GiB is downloaded and uploaded by curl;
server-sent events carry their send time so each event's delay through a proxy can be read.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benches.common import (
    PYTHON,
    Profile,
    RssWatch,
    cpu_seconds,
    fake_nvml_library,
    free_port,
    log,
    median,
    percentile,
    running,
    runwarden_serve,
    wait_http,
    write_gpus,
)
from benches.tools import nginx, wrk

CONCURRENCY = (1, 16, 64)
THREADS = (1, 2)
"""runwarden's `--proxy-threads`, each a target of its own: how its throughput scales."""
DOOR_LIMIT = 8
"""A target with `--max-concurrency 8` (and a queue no run fills): what the door's limit
costs, and, above 8 clients, the wait in its queue (SPEC Q2)."""
DOOR_ROW = f"runwarden, --max-concurrency {DOOR_LIMIT}"
STREAMED = ("direct", "nginx", "runwarden")
"""The targets of the streaming and SSE runs (threads change nothing for one stream)."""


def threads_row(threads: int) -> str:
    return "runwarden" if threads == 1 else f"runwarden, {threads} threads"


@dataclass
class Target:
    port: int
    pid: int | None
    """The process that proxies (nginx's worker, `runwarden serve`); none for direct."""


@contextlib.contextmanager
def runwarden(
    app_port: int, tmp: Path, threads: int = 1, *options: str, name: str = ""
) -> Iterator[Target]:
    """`runwarden serve` in front of the app with `--proxy-threads threads` and `options`."""
    port, admin = free_port(), free_port()
    name = name or f"{threads}"
    env = write_gpus(tmp / f"proxy-gpus-{name}.json")
    args = runwarden_serve(
        "--app-url", f"http://127.0.0.1:{app_port}", "--host", "127.0.0.1",
        "--port", str(port), "--admin-host", "127.0.0.1",
        "--admin-port", str(admin), "--log-level", "warning",
        "--nvml-library", str(fake_nvml_library()), "--proxy-threads", str(threads),
        *options,
    )  # fmt: skip
    log_to = tmp / f"runwarden-proxy-{name}.log"
    with running(args, port=port, env=env, log_to=log_to) as proc:
        wait_http(f"http://127.0.0.1:{port}/json", proc)
        yield Target(port, proc.pid)


@contextlib.contextmanager
def targets(tmp: Path) -> Iterator[tuple[dict[str, Target], int]]:
    """The app and the proxies in front of it: (name -> target, the app's pid)."""
    app_port = free_port()
    with contextlib.ExitStack() as stack:
        app = stack.enter_context(running([PYTHON, "-m", "benches.app", str(app_port)],
                                          port=app_port))  # fmt: skip
        where = {"direct": Target(app_port, None)}
        proxy = stack.enter_context(nginx(app_port, tmp / "nginx"))
        where["nginx"] = Target(proxy.port, proxy.pid)
        for threads in THREADS:
            where[threads_row(threads)] = stack.enter_context(runwarden(app_port, tmp, threads))
        limited = runwarden(app_port, tmp, 1, "--max-concurrency", str(DOOR_LIMIT),
                            "--max-queue", "10000", name="door")  # fmt: skip
        where[DOOR_ROW] = stack.enter_context(limited)
        yield where, app.pid


def timed_wrk(target: Target, app_pid: int, c: int, seconds: float) -> dict[str, float]:
    """One wrk run, and the CPU time the proxy and the app spent per request it completed
    (µs). /proc's clock ticks are 10 ms: over a run of seconds, a percent or so."""
    before = {pid: cpu_seconds(pid) for pid in (target.pid, app_pid) if pid}
    result = wrk(f"http://127.0.0.1:{target.port}/json", c, seconds)
    spent = {pid: cpu_seconds(pid) - was for pid, was in before.items()}
    done = result["requests"] or float("nan")
    result["proxy_cpu_us"] = 1e6 * spent[target.pid] / done if target.pid else float("nan")
    result["app_cpu_us"] = 1e6 * spent[app_pid] / done
    return result


def small_requests(profile: Profile, where: dict[str, Target], app_pid: int) -> dict[str, Any]:
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    for round_ in range(profile.wrk_rounds):
        # Every other round in reverse, so no target always runs right after another.
        names = list(where) if round_ % 2 == 0 else list(reversed(where))
        for c in CONCURRENCY:
            for name in names:
                result = timed_wrk(where[name], app_pid, c, profile.wrk_seconds)
                runs.setdefault((name, c), []).append(result)
                log(
                    f"proxy round {round_ + 1} c={c} {name}: {result['rps']:.0f} req/s, "
                    f"p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms, "
                    f"CPU/request proxy {result['proxy_cpu_us']:.1f} µs, "
                    f"app {result['app_cpu_us']:.1f} µs"
                )
    table: dict[str, Any] = {}
    for name in where:  # the targets' order, not the last round's
        for c in CONCURRENCY:
            results = runs[(name, c)]
            table.setdefault(name, {})[c] = {
                key: median([r[key] for r in results]) for key in results[0]
            }
    return table


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


def streaming(profile: Profile, where: dict[str, Target], tmp: Path) -> Any:
    size = profile.stream_bytes
    body = tmp / "upload.bin"
    with body.open("wb") as f:  # sparse: reading it costs no disk
        f.truncate(size)
    out: dict[str, dict[str, float]] = {}
    for name in STREAMED:
        port, pid = where[name].port, where[name].pid
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


def sse(profile: Profile, where: dict[str, Target]) -> dict[str, Any]:
    """Every target's stream at once (offset by a few ms so their events do not coincide),
    so the machine's noise falls on all of them alike."""

    async def all_streams() -> list[list[float]]:
        return await asyncio.gather(
            *(sse_delays(where[name].port, profile.sse_events, 0.002 * i)
              for i, name in enumerate(STREAMED))
        )  # fmt: skip

    out = {}
    for name, delays in zip(STREAMED, asyncio.run(all_streams()), strict=True):
        if len(delays) < 0.95 * profile.sse_events:
            raise RuntimeError(f"{name}: {len(delays)} of {profile.sse_events} events arrived")
        out[name] = {"p50_ms": 1000 * percentile(delays, 50),
                     "p99_ms": 1000 * percentile(delays, 99)}  # fmt: skip
        log(f"sse {name}: p50 {out[name]['p50_ms']:.3f} ms, p99 {out[name]['p99_ms']:.3f} ms")
    return out


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    with targets(tmp) as (where, app_pid):
        return {
            "small": small_requests(profile, where, app_pid),
            "streaming": streaming(profile, where, tmp),
            "sse": sse(profile, where),
        }
