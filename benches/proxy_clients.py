"""The upstream clients runwarden's own (`runwarden.upstream.HttpUpstream`) is measured
against in section 3: aiohttp's and httpx's, each shaped like it and configured to be as
transparent (no cookie jar, no redirects, no decompression, no headers of their own, a
keep-alive pool, no read timeout).

    python -m benches.proxy_clients aiohttp serve --app-url ... # runwarden with that client
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import sys
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

_CLOSING: set[asyncio.Future[None]] = set()


class _Adapted:
    """Another client's streamed response, read through runwarden.upstream's interface."""

    def __init__(
        self,
        status: int,
        raw_headers: Sequence[tuple[bytes, bytes]],
        chunks: AsyncIterator[bytes],
        close: Callable[[], Awaitable[None] | None],
    ) -> None:
        self.status = status
        self.raw_headers = raw_headers
        self._chunks = chunks
        self._close = close
        self.finished = False
        self.on_whole: Any = None

    async def read(self) -> bytes:
        async for chunk in self._chunks:
            if chunk:
                return chunk
        self.finished = True
        return b""

    def close(self) -> None:
        closing = self._close()
        if closing is not None:  # httpx closes asynchronously: keep the task until it ends
            task = asyncio.ensure_future(closing)
            _CLOSING.add(task)
            task.add_done_callback(_CLOSING.discard)


class _Shaped:
    """The two halves runwarden's proxy calls (`start`, `response`) over a client that has
    only `request`: nothing is sent before the proxy's task runs."""

    def start(self, *args: Any) -> None:
        return None

    async def response(self, exchange: None, *args: Any) -> _Adapted:
        return await self.request(*args)  # type: ignore[attr-defined,no-any-return]


def _text(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


class AiohttpUpstream(_Shaped):
    """aiohttp's `ClientSession` (the proxy's client until it was measured against ours)."""

    def __init__(self, app_url: str, connect_timeout_seconds: float = 5.0) -> None:
        import aiohttp

        self._base = app_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_seconds),
            read_bufsize=2**16,
        )

    async def request(
        self,
        method: str,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
        chunked: bool,
    ) -> _Adapted:
        from yarl import URL

        url = URL(self._base + target.decode("latin-1"), encoded=True)
        resp = await self._session.request(
            method, url, headers=_text(headers), data=body, allow_redirects=False, compress=None
        )
        return _Adapted(resp.status, resp.raw_headers, resp.content.iter_any(), resp.close)

    async def close(self) -> None:
        await self._session.close()


class HttpxUpstream(_Shaped):
    """httpx's `AsyncClient`."""

    def __init__(self, app_url: str, connect_timeout_seconds: float = 5.0) -> None:
        import httpx

        self._base = app_url.rstrip("/")
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=1000),
            timeout=httpx.Timeout(None, connect=connect_timeout_seconds),
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
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
        chunked: bool,
    ) -> _Adapted:
        url = self._base + target.decode("latin-1")
        request = self._client.build_request(method, url, headers=_text(headers), content=body)
        resp = await self._client.send(request, stream=True)
        return _Adapted(resp.status_code, resp.headers.raw, resp.aiter_raw(), resp.aclose)

    async def close(self) -> None:
        await self._client.aclose()


CLIENTS: dict[str, Any] = {"aiohttp": AiohttpUpstream, "httpx": HttpxUpstream}


def main() -> None:
    """`python -m benches.proxy_clients CLIENT serve ...`: `runwarden serve` with CLIENT."""
    import aiohttp
    import httpx
    from runwarden import proxy, runner
    from runwarden.cli import run_cli

    runner.HttpUpstream = CLIENTS[sys.argv[1]]  # type: ignore[misc]
    proxy.UpstreamError = (*proxy.UpstreamError, aiohttp.ClientError, httpx.TransportError)  # type: ignore[misc]
    sys.exit(run_cli(sys.argv[2:]))


if __name__ == "__main__":
    main()
