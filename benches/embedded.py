"""Section 9: the embedded front's cost (SPEC E). One Starlette app (`benches.embedded_app`)
on uvicorn with uvloop and httptools, reached three ways in one run: served bare, with
runwarden inside it (`Runwarden(app)`, settings from RUNWARDEN_*), and bare behind
`runwarden serve` (the proxy front). wrk at concurrency 1 and 64 in alternating rounds; each
run also times the CPU the serving processes spent per request it completed.

Then the middleware's own microseconds, timed in this process: the same raw ASGI app called
directly and through `Runwarden`, and the pieces of the difference (the core's `enter`, the
ticket as `send`, `done`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benches.common import (
    PYTHON,
    Profile,
    cpu_seconds,
    free_port,
    log,
    median,
    running,
    wait_http,
)
from benches.proxy import runwarden as proxy_in_front
from benches.tools import wrk

CONCURRENCY = (1, 16, 64)
TARGETS = ("bare", "embedded", "proxy")
"""In the table's order: the app alone, runwarden inside it, runwarden serve in front."""


@dataclass
class Target:
    port: int
    pids: tuple[int, ...]
    """The processes that serve a request: the app's server, and the proxy's."""


def uvicorn(module_app: str, port: int) -> list[str]:
    return [PYTHON, "-m", "uvicorn", module_app, "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning"]  # fmt: skip


@contextlib.contextmanager
def targets(tmp: Path) -> Iterator[dict[str, Target]]:
    bare_port, guarded_port, admin_port = free_port(), free_port(), free_port()
    env = {"RUNWARDEN_ADMIN_HOST": "127.0.0.1", "RUNWARDEN_ADMIN_PORT": str(admin_port),
           "RUNWARDEN_GPU_MONITORING": "false"}  # fmt: skip
    with contextlib.ExitStack() as stack:
        bare = stack.enter_context(running(uvicorn("benches.embedded_app:bare", bare_port),
                                           port=bare_port))  # fmt: skip
        guarded = stack.enter_context(running(
            uvicorn("benches.embedded_app:guarded", guarded_port), port=guarded_port, env=env,
            ready_url=f"http://127.0.0.1:{admin_port}/readyz"))  # fmt: skip
        proxy = stack.enter_context(proxy_in_front(bare_port, tmp, 1, name="embedded"))
        assert proxy.pid is not None
        yield {
            "bare": Target(bare_port, (bare.pid,)),
            "embedded": Target(guarded_port, (guarded.pid,)),
            "proxy": Target(proxy.port, (bare.pid, proxy.pid)),
        }


def timed(target: Target, c: int, seconds: float) -> dict[str, float]:
    before = [cpu_seconds(pid) for pid in target.pids]
    result = wrk(f"http://127.0.0.1:{target.port}/json", c, seconds)
    spent = sum(cpu_seconds(pid) - was for pid, was in zip(target.pids, before, strict=True))
    result["cpu_us"] = 1e6 * spent / (result["requests"] or float("nan"))
    return result


def load(profile: Profile, where: dict[str, Target]) -> dict[str, Any]:
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    rounds = max(profile.wrk_rounds, 1 if profile.smoke else 8)
    for round_ in range(rounds):
        names = list(where) if round_ % 2 == 0 else list(reversed(where))
        for c in CONCURRENCY:
            for name in names:
                result = timed(where[name], c, profile.wrk_seconds)
                runs.setdefault((name, c), []).append(result)
                log(
                    f"embedded round {round_ + 1} c={c} {name}: {result['rps']:.0f} req/s, "
                    f"p50 {result['p50_ms']:.3f} ms, CPU/request {result['cpu_us']:.1f} µs"
                )
    table: dict[str, Any] = {"rounds": rounds}
    for name in where:
        for c in CONCURRENCY:
            results = runs[(name, c)]
            table.setdefault(name, {})[c] = {k: median([r[k] for r in results])
                                             for k in results[0]}  # fmt: skip
    return table


# --- the middleware's own microseconds, in this process -----------------------------------

START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
}
BODY = {"type": "http.response.body", "body": b"{}"}  # fmt: skip


async def raw_app(scope: Any, receive: Any, send: Any) -> None:
    await send(START)
    await send(BODY)


async def _nothing(message: Any) -> None:
    return None


async def _request() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


def scope() -> dict[str, Any]:
    return {"type": "http", "http_version": "1.1", "method": "GET", "path": "/json",
            "raw_path": b"/json", "query_string": b"", "root_path": "", "scheme": "http",
            "headers": [(b"host", b"127.0.0.1"), (b"user-agent", b"wrk"),
                        (b"accept", b"*/*")],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}  # fmt: skip


async def per_request(calls: int) -> dict[str, float]:
    """µs per request: the app alone, through Runwarden, and the middleware's pieces."""
    from runwarden.asgi import Runwarden
    from runwarden.testing.lifespan import lifespan

    guarded = Runwarden(raw_app, admin_host="127.0.0.1", admin_port=free_port(),
                        gpu_monitoring=False)  # fmt: skip
    async with lifespan(guarded):
        return await _pieces(guarded, calls)


async def _pieces(guarded: Any, calls: int) -> dict[str, float]:
    front = guarded._front
    assert front is not None
    request = scope()

    async def app_alone() -> None:
        for _ in range(calls):
            await raw_app(request, _request, _nothing)

    async def through() -> None:
        for _ in range(calls):
            await guarded(request, _request, _nothing)

    async def enter_done() -> None:
        for _ in range(calls):
            front.enter(request, _nothing).done()  # type: ignore[union-attr]

    async def ticket_send() -> None:
        ticket = front.enter(request, _nothing)
        for _ in range(calls):
            await ticket.app_send(START)  # type: ignore[union-attr]
            await ticket.app_send(BODY)  # type: ignore[union-attr]
        ticket.done()  # type: ignore[union-attr]

    out: dict[str, float] = {}
    for name, body in (("app", app_alone), ("through", through), ("enter_done", enter_done),
                       ("ticket_send", ticket_send)):  # fmt: skip
        best = float("inf")
        for _ in range(5):
            began = time.perf_counter()
            await body()
            best = min(best, (time.perf_counter() - began) / calls * 1e6)
        out[name] = best
    out["added"] = out["through"] - out["app"]
    return out


# --- instructions per request, counted by callgrind: the figure the machine's noise moves not


def instructions(module_app: str, tmp: Path, requests: int) -> float:
    """User-space instructions per request of one server (every thread of its process),
    counted by callgrind with instrumentation on only while `requests` keep-alive requests
    are served (after a warm-up of 200)."""
    port, admin = free_port(), free_port()
    out = tmp / f"callgrind-{module_app.replace(':', '-')}.%p"
    args = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            f"--callgrind-out-file={out}", *uvicorn(module_app, port)]  # fmt: skip
    env = {"RUNWARDEN_ADMIN_HOST": "127.0.0.1", "RUNWARDEN_ADMIN_PORT": str(admin),
           "RUNWARDEN_GPU_MONITORING": "false"}  # fmt: skip
    with running(args, env=env) as proc:
        wait_http(f"http://127.0.0.1:{port}/json", proc, limit=300)
        _keep_alive(port, 200)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], capture_output=True)
        _keep_alive(port, requests)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], capture_output=True)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True)
    total = 0
    for dump in tmp.glob(out.name.replace("%p", "*")):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                total += int(line.split()[1])
    return total / requests


def _keep_alive(port: int, requests: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(requests):
        connection.request("GET", "/json")
        connection.getresponse().read()
    connection.close()


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    with targets(tmp) as where:
        results = load(profile, where)
    results["micro"] = asyncio.run(per_request(2_000 if profile.smoke else 100_000))
    log(f"embedded per request: {results['micro']}")
    if shutil.which("valgrind") and not profile.smoke:
        results["instructions"] = {
            name: instructions(f"benches.embedded_app:{name}", tmp, 2_000)
            for name in ("bare", "guarded", "passthrough", "observer")
        }
        log(f"embedded instructions per request: {results['instructions']}")
    return results


def _f(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def targets_rows(results: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """The SPEC E targets for the summary table."""
    bare, embedded = results["bare"], results["embedded"]
    share = 100 * embedded[64]["rps"] / bare[64]["rps"]
    p50 = 100 * (embedded[1]["p50_ms"] / bare[1]["p50_ms"] - 1)
    counted = results.get("instructions")
    rows: list[tuple[str, str, str, bool | None]] = []
    if counted:
        added = 100 * (counted["guarded"] / counted["bare"] - 1)
        # Informative: what the count alone predicts for a CPU-bound server (its requests/s
        # fall as its instructions per request rise, at the same instructions per cycle).
        rows.append(("9. embedded instructions per request added (callgrind), and the "
                     "requests/s share they predict", "(≥ 97%)",
                     f"+{_f(added, 1)}% ({_f(counted['guarded'])} vs {_f(counted['bare'])}): "
                     f"{_f(100 * counted['bare'] / counted['guarded'], 1)}%", None))  # fmt: skip
    return [
        *rows,
        ("9. embedded requests/s at c=64, share of the bare app's", "≥ 97%",
         f"{_f(share, 1)}% ({_f(embedded[64]['rps'])} vs {_f(bare[64]['rps'])})", share >= 97),
        ("9. embedded p50 added at c=1", "≤ 5%",
         f"{_f(p50, 1)}% ({_f(embedded[1]['p50_ms'], 3)} vs {_f(bare[1]['p50_ms'], 3)} ms)",
         p50 <= 5),
    ]  # fmt: skip


def tables(results: dict[str, Any]) -> list[str]:
    lines = [
        "### 9. Embedded: the app alone, with runwarden inside, behind runwarden serve", "",
        f"One Starlette app on uvicorn (uvloop, httptools), GET /json (1 KiB); wrk, one "
        f"thread; the median of {results['rounds']} alternating rounds. CPU µs per request: "
        "user + system time of the processes that serve it (the app's server; for the "
        "proxy, the app's and runwarden's).", "",
        "| target | concurrency | requests/s | share of bare | p50 ms | p99 ms | CPU µs/request |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for name in TARGETS:
        for c in CONCURRENCY:
            r = results[name][c]
            share = 100 * r["rps"] / results["bare"][c]["rps"]
            lines.append(f"| {name} | {c} | {_f(r['rps'])} | {_f(share, 1)}% "
                         f"| {_f(r['p50_ms'], 3)} | {_f(r['p99_ms'], 3)} "
                         f"| {_f(r['cpu_us'], 1)} |")  # fmt: skip
    counted = results.get("instructions")
    if counted:
        added = 100 * (counted["guarded"] / counted["bare"] - 1)
        lines += [
            "",
            f"Instructions per request (callgrind, the server's process, 2,000 keep-alive "
            f"requests): bare {_f(counted['bare'])}, embedded {_f(counted['guarded'])} "
            f"(+{_f(added, 1)}%). Counted, not timed: the figure this shared machine's noise "
            "does not move.",
        ]
        if "observer" in counted:
            anchor = {name: 100 * (counted[name] / counted["bare"] - 1)
                      for name in ("passthrough", "observer")}  # fmt: skip
            lines += [
                "",
                f"The anchors, the least a Python middleware can be: one that only passes the "
                f"call on, {_f(counted['passthrough'])} (+{_f(anchor['passthrough'], 1)}%); "
                f"one that also reads each response's status from a wrapped `send`, as any "
                f"middleware that judges answers must, {_f(counted['observer'])} "
                f"(+{_f(anchor['observer'], 1)}%).",
            ]
    m = results["micro"]
    lines += [
        "",
        "Where the embedded front's microseconds go (in-process, a raw ASGI app, best of 5 "
        "runs of many calls):", "",
        "| call | µs per request |", "|---|---:|",
        f"| the app alone | {_f(m['app'], 2)} |",
        f"| the app through `Runwarden` | {_f(m['through'], 2)} |",
        f"| added by the middleware | {_f(m['added'], 2)} |",
        f"| of which `Front.enter` + `Ticket.done` (the core's rules) | {_f(m['enter_done'], 2)} |",
        f"| of which the ticket as `send`, start + body | {_f(m['ticket_send'], 2)} |",
        "",
    ]  # fmt: skip
    return lines
