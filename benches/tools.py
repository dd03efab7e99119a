"""The reference tools: nginx (a `proxy_pass` with keep-alive upstream, on loopback, with its
own config in a temporary directory; HTTP/1.1, and HTTP/2 in cleartext on a second port when
asked) and wrk, both from Debian's packages, installed when missing."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benches.common import children, free_port, log, running

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_header_timeout {header_timeout}s;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{
        server 127.0.0.1:{app_port};
        keepalive 128;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
{h2_listen}
        client_max_body_size 0;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            # Stream both ways, as runwarden does (S1): no buffering of bodies to disk.
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 8 64k;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def ensure_tools() -> list[str]:
    """Install nginx and wrk from Debian's packages if missing; returns what is still missing."""
    missing = [name for name, found in (("nginx", nginx_binary()), ("wrk", shutil.which("wrk")))
               if not found]  # fmt: skip
    if not missing:
        return []
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        log(f"{' and '.join(missing)} missing and cannot be installed here (needs root apt-get)")
        return missing
    packages = ["nginx-light" if m == "nginx" else m for m in missing]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    log(f"installing {' '.join(packages)} from Debian's packages")
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            log(f"apt-get install failed: {result.stderr.strip()[-500:]}")
    return [name for name, found in (("nginx", nginx_binary()), ("wrk", shutil.which("wrk")))
            if not found]  # fmt: skip


# nginx 1.22: `http2` on a listener without `ssl` is HTTP/2 with prior knowledge only (h2c);
# every other setting (limits, streams, timeouts) is nginx's default.
H2_LISTEN = "        listen 127.0.0.1:{port} http2 backlog=4096;"


@dataclass
class Nginx:
    port: int
    """HTTP/1.1."""
    h2_port: int | None
    """HTTP/2 with prior knowledge, when asked for."""
    pid: int
    """Its one worker: the process that proxies (the master only supervises)."""


@contextlib.contextmanager
def nginx(
    app_port: int, workdir: Path, header_timeout: float = 60, h2: bool = False
) -> Iterator[Nginx]:
    """nginx on loopback in front of the app; stopped after."""
    binary = nginx_binary()
    assert binary is not None
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    h2_port = free_port() if h2 else None
    conf = workdir / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=workdir, port=port, app_port=app_port, header_timeout=max(1, round(header_timeout)),
            h2_listen=H2_LISTEN.format(port=h2_port) if h2_port else "",
        )
    )  # fmt: skip
    with running([binary, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)],
                 port=port) as master:  # fmt: skip
        deadline = time.monotonic() + 5
        while not (workers := children(master.pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        if len(workers) != 1:
            raise RuntimeError(f"nginx should have one worker, has {workers}")
        yield Nginx(port, h2_port, workers[0])


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str | None) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text or "")
    return float(match.group(1)) * _UNITS[match.group(2)] if match else float("nan")


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    """requests/s, requests completed and p50/p99 latency (ms) from one wrk run, one thread.
    A run the target could not serve at all gives NaN latencies and counts as errors, not as
    a crash."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "--timeout", "5s", url],
        capture_output=True, text=True, timeout=seconds + 30,
    )  # fmt: skip
    text = out.stdout
    latency = dict(re.findall(r"^\s*(50|99)(?:\.0+)?%\s+(\S+)\s*$", text, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    done = re.search(r"^\s*(\d+) requests in ", text, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                              r"timeout (\d+)", text)  # fmt: skip
    if rps is None:
        log(f"wrk {url} -c{connections}: no result (exit {out.returncode}):\n{text}{out.stderr}")
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": float(done.group(1)) if done else 0.0,
        "p50_ms": _ms(latency.get("50")),
        "p99_ms": _ms(latency.get("99")),
        "errors": float(errors.group(1)) if errors else 0.0,
        "socket_errors": float(sum(int(g) for g in socket_errors.groups()))
        if socket_errors
        else 0.0,
    }
