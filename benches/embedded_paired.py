"""The embedded mode's throughput against the bare app, paired and pinned (SPEC E, issue 21):
section 9's figure with less of a shared VM's noise in it.

    python -m benches.embedded_paired [--pairs 60] [--seconds 1] [--anchors] [--one-process]

The servers (`benches.embedded_app`: bare, and with `Runwarden` inside; with `--anchors`
also the least a Python middleware can be: `passthrough`, and `observer`, which only reads
each response's status from a wrapped `send`) are pinned to CPU 1 and wrk to CPU 0; each
concurrency (64, then 1) runs `pairs` rounds of one window each, the order turning each
round, and reports for each against the bare app of the same round the means of the
requests/s ratios and of the CPU-per-request ratios, each with its 95% interval, and the
p50s. With `--one-process`, all are served by one server (`benches.embedded_app:together`),
each at a path of its own, behind one small dispatcher all pay alike: two processes running
the same code can differ by a few percent for their places in memory alone, and one
process cannot. Needs two CPUs, `taskset` and wrk (`benches.tools.ensure_tools`).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import subprocess

from benches.common import cpu_seconds, free_port, running, wait_http
from benches.embedded import uvicorn

PIN_SERVER, PIN_CLIENT = "1", "0"


def _wrk(port: int, path: str, connections: int, seconds: int) -> tuple[float, int, float]:
    """(requests/s, requests, p50 ms) of one pinned wrk run."""
    out = subprocess.run(
        ["taskset", "-c", PIN_CLIENT, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "--latency", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"^\s*(\d+) requests in ", out, re.M).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)", out, re.M)
    assert p50 is not None, out
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    return rps, done, float(p50.group(1)) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--seconds", type=int, default=1)
    parser.add_argument("--anchors", action="store_true",
                        help="also time the passthrough and observer middlewares")  # fmt: skip
    parser.add_argument("--one-process", action="store_true",
                        help="serve every target from one server, a path each")  # fmt: skip
    args = parser.parse_args()
    apps = {"bare": ("bare", "/json"), "embedded": ("guarded", "/g/json")}
    if args.anchors:
        apps |= {"passthrough": ("passthrough", "/p/json"), "observer": ("observer", "/o/json")}
    env = {"RUNWARDEN_ADMIN_HOST": "127.0.0.1", "RUNWARDEN_ADMIN_PORT": str(free_port()),
           "RUNWARDEN_GPU_MONITORING": "false"}  # fmt: skip
    pinned = ["taskset", "-c", PIN_SERVER]
    with contextlib.ExitStack() as stack:
        targets: dict[str, tuple[int, int, str]] = {}
        for name, (app, path) in apps.items():
            if args.one_process and targets:
                port, pid, _ = targets["bare"]
                targets[name] = (port, pid, path)
                continue
            port = free_port()
            module_app = "together" if args.one_process else app
            command = [*pinned, *uvicorn(f"benches.embedded_app:{module_app}", port)]
            proc = stack.enter_context(running(command, port=port, env=env))
            path = path if args.one_process else "/json"
            wait_http(f"http://127.0.0.1:{port}{path}", proc)
            targets[name] = (port, proc.pid, path)
        names = list(targets)
        for connections in (64, 1):
            runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
            for name in names:  # warm-up
                _wrk(targets[name][0], targets[name][2], connections, 1)
            for i in range(args.pairs):
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    port, pid, path = targets[name]
                    before = cpu_seconds(pid)
                    rps, done, p50 = _wrk(port, path, connections, args.seconds)
                    runs[name].append((rps, (cpu_seconds(pid) - before) * 1e6 / done, p50))
            bare_p50 = statistics.median(r[2] for r in runs["bare"])
            for name in names[1:]:
                pairs = list(zip(runs["bare"], runs[name], strict=True))
                share = [e[0] / b[0] for b, e in pairs]
                spread = 1.96 * statistics.stdev(share) / len(share) ** 0.5
                cpus = [b[1] / e[1] for b, e in pairs]
                cpu = statistics.mean(cpus)
                cpu_spread = 1.96 * statistics.stdev(cpus) / len(cpus) ** 0.5
                p50 = statistics.median(r[2] for r in runs[name])
                print(f"c={connections}: {name} / bare requests/s {statistics.mean(share):.1%} "
                      f"± {spread:.1%} (95%, {len(pairs)} pairs); CPU per request, bare / "
                      f"{name} {cpu:.3f} ± {cpu_spread:.3f}; p50 {p50:.3f} vs {bare_p50:.3f} ms "
                      f"({p50 / bare_p50 - 1:+.1%})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
