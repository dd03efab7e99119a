"""Section 8: WebSocket and gRPC through runwarden against the app direct (SPEC P1).

WebSocket: `benches.ws_app` (an echo on the `websockets` package), runwarden in front as an
HTTP/1.1 proxy that tunnels the upgrade; one connection carries N messages of 1 KiB, either
each waiting for its echo (ping-pong) or all sent while the echoes are read (pipelined).
gRPC: `benches.grpc_app` (grpcio's asyncio server, h2c), runwarden in front with
`--app-protocol h2c --check-protocol grpc`; a grpcio client makes N unary calls of 1 KiB over
one channel (HTTP/2 with prior knowledge), one at a time and 16 at once. Each client runs in
a process of its own (grpcio's threads stay out of the runner, which forks), in interleaved
rounds; runwarden's CPU time per message or call is read from `/proc` as in section 3.

    python -m benches.protocols ws URL MESSAGES pingpong|pipelined   # one client run, as JSON
    python -m benches.protocols grpc HOST:PORT CALLS CONCURRENCY
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benches.common import (
    PYTHON,
    Profile,
    cpu_seconds,
    free_port,
    log,
    median,
    percentile,
    running,
    runwarden_serve,
    wait_http,
)

SIZE = 1024
"""Bytes per WebSocket message and per gRPC request (the echo sends as many back)."""
WS_MODES = ("pingpong", "pipelined")
GRPC_CONCURRENCY = (1, 16)
WARM_UP = 50
"""Messages or calls each client exchanges before it starts timing (counted in the CPU)."""


async def ws_client(url: str, messages: int, mode: str) -> dict[str, float]:
    from websockets.asyncio.client import connect

    payload = b"x" * SIZE
    rtts: list[float] = []
    async with connect(url, compression=None, max_size=None, ping_interval=None) as ws:
        for _ in range(WARM_UP):  # both ends warm up
            await ws.send(payload)
            await ws.recv()
        began = time.perf_counter()
        if mode == "pipelined":

            async def sender() -> None:
                for _ in range(messages):
                    await ws.send(payload)

            task = asyncio.create_task(sender())
            for _ in range(messages):
                if len(await ws.recv()) != SIZE:
                    raise RuntimeError("an echo of the wrong size")
            await task
        else:
            for _ in range(messages):
                sent = time.perf_counter()
                await ws.send(payload)
                if len(await ws.recv()) != SIZE:
                    raise RuntimeError("an echo of the wrong size")
                rtts.append(time.perf_counter() - sent)
        took = time.perf_counter() - began
    return {"per_s": messages / took, "p50_ms": 1000 * percentile(rtts, 50),
            "p99_ms": 1000 * percentile(rtts, 99)}  # fmt: skip


async def grpc_client(target: str, calls: int, concurrency: int) -> dict[str, float]:
    import grpc

    from benches.grpc_app import METHOD

    payload = b"x" * SIZE
    latencies: list[float] = []
    options = [("grpc.enable_http_proxy", 0)]  # straight to the target, whatever the env says
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        echo = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
        for _ in range(WARM_UP):
            await echo(payload, timeout=10)

        async def worker(n: int) -> None:
            for _ in range(n):
                sent = time.perf_counter()
                if len(await echo(payload, timeout=10)) != SIZE:
                    raise RuntimeError("an echo of the wrong size")
                latencies.append(time.perf_counter() - sent)

        began = time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        took = time.perf_counter() - began
    return {"per_s": len(latencies) / took, "p50_ms": 1000 * percentile(latencies, 50),
            "p99_ms": 1000 * percentile(latencies, 99)}  # fmt: skip


def client(args: list[str], pid: int | None, count: int) -> dict[str, float]:
    """One client run in its own process; with `pid`, that process's CPU µs per message
    (the client's warm-up counted: its CPU falls in the same window)."""
    before = cpu_seconds(pid) if pid else 0.0
    out = subprocess.run([PYTHON, "-m", "benches.protocols", *args], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"client {args}: exit {out.returncode}: {out.stderr[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout)
    spent = cpu_seconds(pid) - before if pid else float("nan")
    result["proxy_cpu_us"] = 1e6 * spent / (count + WARM_UP)
    return result


@contextlib.contextmanager
def behind(
    app: list[str], app_port: int, options: list[str], tmp: Path, name: str
) -> Iterator[tuple[int, int]]:
    """The app, and runwarden in front of it once its checks pass: (runwarden's port, pid)."""
    port, admin = free_port(), free_port()
    args = runwarden_serve(
        "--app-url", f"http://127.0.0.1:{app_port}", "--host", "127.0.0.1",
        "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin),
        "--log-level", "warning", "--no-gpu-monitoring", *options,
    )  # fmt: skip
    with (
        running(app, port=app_port),
        running(args, port=port, log_to=tmp / f"protocols-{name}.log") as proc,
    ):
        wait_http(f"http://127.0.0.1:{admin}/readyz", proc)
        yield port, proc.pid


def rounds(
    profile: Profile, cases: list[tuple[str, list[str], int | None]], count: int
) -> dict[str, dict[str, float]]:
    """Each case (name, client args, runwarden's pid or none) once per round; medians."""
    runs: dict[str, list[dict[str, float]]] = {}
    for round_ in range(profile.wrk_rounds):
        for name, args, pid in cases if round_ % 2 == 0 else reversed(cases):
            result = client(args, pid, count)
            runs.setdefault(name, []).append(result)
            log(f"protocols round {round_ + 1} {name}: {result['per_s']:.0f}/s, "
                f"p50 {result['p50_ms']:.3f} ms, runwarden CPU "
                f"{result['proxy_cpu_us']:.1f} µs each")  # fmt: skip
    return {name: {k: median([r[k] for r in rs]) for k in rs[0]} for name, rs in runs.items()}


def websocket(profile: Profile, tmp: Path) -> dict[str, Any]:
    app_port = free_port()
    app = [PYTHON, "-m", "benches.ws_app", str(app_port)]
    with behind(app, app_port, ["--health-path", "/health"], tmp, "ws") as (port, pid):
        cases = [
            (f"{target} {mode}", ["ws", f"ws://127.0.0.1:{p}/echo", str(profile.messages), mode],
             rw_pid)
            for mode in WS_MODES
            for target, p, rw_pid in (("direct", app_port, None), ("runwarden", port, pid))
        ]  # fmt: skip
        return rounds(profile, cases, profile.messages)


def grpc(profile: Profile, tmp: Path) -> dict[str, Any]:
    app_port = free_port()
    app = [PYTHON, "-m", "benches.grpc_app", str(app_port)]
    options = ["--app-protocol", "h2c", "--check-protocol", "grpc"]
    with behind(app, app_port, options, tmp, "grpc") as (port, pid):
        cases = [
            (f"{target} c={c}", ["grpc", f"127.0.0.1:{p}", str(profile.calls), str(c)], rw_pid)
            for c in GRPC_CONCURRENCY
            for target, p, rw_pid in (("direct", app_port, None), ("runwarden", port, pid))
        ]
        return rounds(profile, cases, profile.calls)


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    return {"websocket": websocket(profile, tmp), "grpc": grpc(profile, tmp)}


def main() -> None:
    kind, *args = sys.argv[1:]
    if kind == "ws":
        import uvloop

        result = uvloop.run(ws_client(args[0], int(args[1]), args[2]))
    else:
        result = asyncio.run(grpc_client(args[0], int(args[1]), int(args[2])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
