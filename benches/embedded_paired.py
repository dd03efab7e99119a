"""The embedded mode's throughput against the bare app, paired and pinned (SPEC E, issue 21):
section 9's figure with less of a shared VM's noise in it.

    python -m benches.embedded_paired [--pairs 60] [--seconds 1]

Both servers (`benches.embedded_app`: bare, and with `Runwarden` inside) are pinned to CPU 1
and wrk to CPU 0; each concurrency (64, then 1) runs `pairs` windows of each, alternating
which goes first, and reports the mean of the paired requests/s ratios with its 95%
interval, the median of the paired CPU-per-request ratios and the p50s. Needs two CPUs,
`taskset` and wrk (`benches.tools.ensure_tools`).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess

from benches.common import cpu_seconds, free_port, running, wait_http
from benches.embedded import uvicorn

PIN_SERVER, PIN_CLIENT = "1", "0"


def _wrk(port: int, connections: int, seconds: int) -> tuple[float, int, float]:
    """(requests/s, requests, p50 ms) of one pinned wrk run."""
    out = subprocess.run(
        ["taskset", "-c", PIN_CLIENT, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
         "--latency", f"http://127.0.0.1:{port}/json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
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
    args = parser.parse_args()
    bare_port, guarded_port, admin = free_port(), free_port(), free_port()
    env = {"RUNWARDEN_ADMIN_HOST": "127.0.0.1", "RUNWARDEN_ADMIN_PORT": str(admin),
           "RUNWARDEN_GPU_MONITORING": "false"}  # fmt: skip
    pinned = ["taskset", "-c", PIN_SERVER]
    with (
        running([*pinned, *uvicorn("benches.embedded_app:bare", bare_port)],
                port=bare_port) as bare,
        running([*pinned, *uvicorn("benches.embedded_app:guarded", guarded_port)],
                port=guarded_port, env=env) as guarded,
    ):  # fmt: skip
        wait_http(f"http://127.0.0.1:{guarded_port}/json", guarded)
        targets = {"bare": (bare_port, bare.pid), "embedded": (guarded_port, guarded.pid)}
        for connections in (64, 1):
            runs: dict[str, list[tuple[float, float, float]]] = {"bare": [], "embedded": []}
            for name in targets:  # warm-up
                _wrk(targets[name][0], connections, 1)
            for i in range(args.pairs):
                for name in ("bare", "embedded") if i % 2 == 0 else ("embedded", "bare"):
                    port, pid = targets[name]
                    before = cpu_seconds(pid)
                    rps, done, p50 = _wrk(port, connections, args.seconds)
                    runs[name].append((rps, (cpu_seconds(pid) - before) * 1e6 / done, p50))
            pairs = list(zip(runs["bare"], runs["embedded"], strict=True))
            share = [e[0] / b[0] for b, e in pairs]
            spread = 1.96 * statistics.stdev(share) / len(share) ** 0.5
            cpu = statistics.median(b[1] / e[1] for b, e in pairs)
            bare_p50, embedded_p50 = (statistics.median(r[2] for r in runs[n])
                                      for n in ("bare", "embedded"))  # fmt: skip
            print(f"c={connections}: embedded / bare requests/s {statistics.mean(share):.1%} "
                  f"± {spread:.1%} (95%, {len(pairs)} pairs); CPU per request, bare / "
                  f"embedded {cpu:.3f}; p50 {embedded_p50:.3f} vs {bare_p50:.3f} ms "
                  f"({embedded_p50 / bare_p50 - 1:+.1%})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
