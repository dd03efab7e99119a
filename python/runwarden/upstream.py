"""The pooled keep-alive client the proxy forwards through (aiohttp's, chosen by measurement:
benches/RESULTS.md, "Proxy upstream client").

It is configured to be transparent (SPEC S4): no cookie jar, no redirects, no
decompression, no header of its own (aiohttp would add User-Agent, Accept,
Accept-Encoding and Content-Type), and the upstream address fixed at construction (S2).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

import aiohttp
from yarl import URL

# Errors that mean "the app could not be reached or broke the exchange" (R3).
UpstreamError: tuple[type[BaseException], ...] = (aiohttp.ClientError, OSError)


class UpstreamResponse(Protocol):
    status: int

    @property
    def raw_headers(self) -> tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]]: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse: ...

    async def close(self) -> None: ...


class _AiohttpResponse:
    __slots__ = ("_resp", "raw_headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.raw_headers = resp.raw_headers

    def chunks(self) -> AsyncIterator[bytes]:
        # iter_any yields whatever has arrived: SSE events go out as they come, big
        # bodies in buffer-sized pieces; the reader's buffer bounds memory (S1).
        return self._resp.content.iter_any()

    async def aclose(self) -> None:
        # Closing (not releasing) a response not read to its end drops its connection,
        # so a cancelled exchange also ends at the app (S3).
        self._resp.close()


class AiohttpUpstream:
    """Requests to one app over a keep-alive pool."""

    def __init__(self, app_url: str, connect_timeout_seconds: float = 5.0) -> None:
        self._base = app_url.rstrip("/")
        self._session = aiohttp.ClientSession(
            # Idle connections are dropped before uvicorn's 5 s keep-alive closes them from
            # the app's side: a POST on a connection the app just closed would fail (502).
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=4),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            # Inference can take minutes: only connecting is bounded.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_seconds),
            read_bufsize=2**16,
        )

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: AsyncIterable[bytes] | None,
    ) -> UpstreamResponse:
        # `target` is the request's path and query as received: only ever appended to the
        # configured base, never parsed for a host (S2); encoded=True keeps it byte-exact.
        resp = await self._session.request(
            method,
            URL(self._base + target, encoded=True),
            headers=headers,
            data=body,
            allow_redirects=False,
            compress=None,
            chunked=None,
        )
        return _AiohttpResponse(resp)

    async def close(self) -> None:
        await self._session.close()
