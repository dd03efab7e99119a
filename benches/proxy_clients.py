"""Which upstream client should the proxy use? Measures aiohttp and httpx behind the same
proxy code, and the raw ASGI app against the same app mounted in Starlette.

    python benches/proxy_clients.py [--seconds 8] [--concurrency 32]

Starts the test app (tests/app_server.py), then for each variant a proxy process in
front of it, and drives it from a separate load process (aiohttp client, keep-alive):
small GETs (requests/s, p50/p99 latency) and a 256 MiB streamed download (MiB/s).
Prints a Markdown table for benches/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.cookiejar
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["aiohttp", "httpx", "aiohttp+starlette"]


# --- the httpx candidate, shaped like runwarden.upstream.AiohttpUpstream ---------------


class _HttpxResponse:
    def __init__(self, resp: object) -> None:
        self._resp = resp
        self.status = resp.status_code  # type: ignore[attr-defined]
        self.raw_headers = resp.headers.raw  # type: ignore[attr-defined]

    def chunks(self) -> AsyncIterator[bytes]:
        return self._resp.aiter_raw()  # type: ignore[attr-defined, no-any-return]

    async def aclose(self) -> None:
        await self._resp.aclose()  # type: ignore[attr-defined]


class HttpxUpstream:
    def __init__(self, app_url: str) -> None:
        import httpx

        self._base = app_url.rstrip("/")
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=1000),
            timeout=httpx.Timeout(None, connect=5.0),
            follow_redirects=False,
            trust_env=False,
            cookies=http.cookiejar.CookieJar(
                policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
            ),
        )
        self._client.headers.clear()  # no User-Agent/Accept/Accept-Encoding of its own

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: AsyncIterable[bytes] | None,
    ) -> _HttpxResponse:
        request = self._client.build_request(
            method, self._base + target, headers=headers, content=body
        )
        return _HttpxResponse(await self._client.send(request, stream=True))

    async def close(self) -> None:
        await self._client.aclose()


def serve(variant: str, port: int, app_port: int) -> None:
    """A proxy process: runwarden's Runner with the variant's client patched in."""
    import httpx
    from runwarden import runner
    from runwarden.cli import _run, parse
    from runwarden.proxy import Proxy

    if variant.startswith("httpx"):
        import runwarden.proxy

        runner.AiohttpUpstream = HttpxUpstream  # type: ignore[assignment, misc]
        runwarden.proxy.UpstreamError = (*runwarden.proxy.UpstreamError, httpx.TransportError)  # type: ignore[misc]
    if variant.endswith("+starlette"):
        from starlette.applications import Starlette
        from starlette.routing import Mount

        original = runner.Proxy

        def mounted(*args: object, **kwargs: object) -> object:
            return Starlette(routes=[Mount("/", app=original(*args, **kwargs))])  # type: ignore[arg-type]

        runner.Proxy = mounted  # type: ignore[assignment, misc]
    _ = Proxy
    settings = parse(
        ["serve", "--app-url", f"http://127.0.0.1:{app_port}", "--port", str(port),
         "--admin-port", str(free_port()), "--log-level", "warning", "--period-seconds", "5"],
        {},
    )  # fmt: skip
    sys.exit(_run(runner.Runner(settings).run()))


# --- the load process -------------------------------------------------------------------


async def load(url: str, seconds: float, concurrency: int) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                async with session.get(url) as resp:
                    await resp.read()
                    assert resp.status == 200, resp.status
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    return {
        "rps": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
    }


async def download(url: str) -> float:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        total = 0
        async with session.get(url) as resp:
            async for chunk in resp.content.iter_chunked(1 << 20):
                total += len(chunk)
        return total / (1 << 20) / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--app-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.app_port)
        return
    if args.load:
        small = asyncio.run(load(args.load + "/predict", args.seconds, args.concurrency))
        small["download_mib_s"] = asyncio.run(download(args.load + "/download?size=268435456"))
        print(json.dumps(small))
        return

    app_port = free_port()
    app = subprocess.Popen([sys.executable, str(ROOT / "tests" / "app_server.py"), str(app_port)])
    rows = []
    try:
        wait_listening(app_port)
        targets = [("direct (no proxy)", None), *((v, v) for v in VARIANTS)]
        for name, variant in targets:
            proxy = None
            url = f"http://127.0.0.1:{app_port}"
            if variant is not None:
                port = free_port()
                proxy = subprocess.Popen(
                    [sys.executable, __file__, "--serve", variant, "--port", str(port),
                     "--app-port", str(app_port)],
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )  # fmt: skip
                wait_listening(port)
                url = f"http://127.0.0.1:{port}"
            try:
                out = subprocess.run(
                    [sys.executable, __file__, "--load", url, "--seconds", str(args.seconds),
                     "--concurrency", str(args.concurrency)],
                    check=True, capture_output=True, text=True,
                )  # fmt: skip
                result = json.loads(out.stdout)
                rows.append((name, result))
                print(name, result, file=sys.stderr)
            finally:
                if proxy is not None:
                    proxy.terminate()
                    proxy.wait(timeout=30)
    finally:
        app.terminate()
        app.wait(timeout=10)
    print("| variant | small GET req/s | p50 ms | p99 ms | 256 MiB download MiB/s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['download_mib_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
