"""The proxy's upstream client (runwarden.upstream) against a scripted app on loopback: the
HTTP/1.1 cases a general client library handles, and the framing rule (SPEC S1-S5, R3)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvloop
from runwarden.upstream import MAX_HEAD_BYTES, HttpUpstream, UpstreamError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class ScriptedApp:
    """A TCP server answering each request with `handler(reader, writer, n)`, where n counts
    requests across connections; records every request head and connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.heads: list[bytes] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedApp:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                await self.handler(reader, writer, len(self.heads))
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    uvloop.run(asyncio.wait_for(test(), 20))


def answer(raw: bytes, close: bool = False) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()

    return handler


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def read_all(response: Any) -> bytes:
    parts = []
    while chunk := await response.read():
        parts.append(chunk)
    return b"".join(parts)


async def get(upstream: HttpUpstream, target: bytes = b"/", method: str = "GET") -> bytes:
    response = await upstream.request(method, target, [(b"host", b"app")], None, False)
    try:
        return await read_all(response)
    finally:
        response.close()


def test_S4_request_head_is_sent_byte_for_byte_with_a_host_when_the_client_had_none() -> None:
    async def test() -> None:
        async with ScriptedApp(answer(OK)) as app:
            upstream = HttpUpstream(app.url + "/prefix")
            headers = [(b"X-Mixed", b"Caf\xe9 Value"), (b"content-length", b"0")]
            response = await upstream.request("POST", b"/a%20b?q=1", headers, None, False)
            response.close()
            await upstream.close()
            port = app.url.rpartition(":")[2].encode()
        assert app.heads == [
            b"POST /prefix/a%20b?q=1 HTTP/1.1\r\nX-Mixed: Caf\xe9 Value\r\ncontent-length: 0\r\n"
            b"host: 127.0.0.1:" + port + b"\r\n\r\n"
        ]

    run(test)


def test_keep_alive_reuses_one_connection_and_head_keeps_it() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        # HEAD announces a body it does not send (RFC 9110 9.3.2).
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" if n == 2 else OK)

    async def test() -> None:
        async with ScriptedApp(handler) as app:
            upstream = HttpUpstream(app.url)
            assert await get(upstream) == b"ok"
            assert await get(upstream, method="HEAD") == b""
            assert await get(upstream) == b"ok"
            await upstream.close()
        assert app.connections == 1

    run(test)


def test_a_connection_the_app_closes_after_answering_is_not_reused() -> None:
    async def test() -> None:
        async with ScriptedApp(answer(OK, close=True)) as app:
            upstream = HttpUpstream(app.url)
            for _ in range(3):  # a close that arrives late is met by the retry
                assert await get(upstream) == b"ok"
            await upstream.close()
        assert app.connections == 3

    run(test)


def test_R3_a_stale_pooled_connection_is_retried_only_for_idempotent_bodiless_requests() -> None:
    """The app closes a kept-alive connection just as a request is written to it (a race
    with its keep-alive timeout): a GET is sent again on a new connection; a POST is not,
    since the app might have acted on it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n % 2 == 0:  # every second request: closed without a byte of answer
            writer.close()
        else:
            writer.write(OK)

    async def test() -> None:
        async with ScriptedApp(handler) as app:
            upstream = HttpUpstream(app.url)
            assert await get(upstream) == b"ok"  # request 1 on connection 1
            assert await get(upstream) == b"ok"  # 2 dropped on connection 1, 3 on a new one
            assert app.connections == 2
            with pytest.raises(UpstreamError):  # 4 dropped, not retried
                await upstream.request("POST", b"/", [(b"content-length", b"0")], None, False)
            await upstream.close()
        assert len(app.heads) == 4

    run(test)


def test_S1_R2_an_early_answer_is_forwarded_and_the_rest_of_the_body_not_sent() -> None:
    """An app may refuse an upload before reading it (413): that answer, not a 502. The app
    is left mid-request, so the connection is not reused."""
    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(10_000):
            sent.append(i)
            yield b"x" * 1024
            await asyncio.sleep(0)  # a turn of the loop per chunk, as a client's body takes

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n > 1:
            writer.write(OK)
            return
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()

    async def test() -> None:
        async with ScriptedApp(handler) as app:
            upstream = HttpUpstream(app.url)
            headers = [(b"content-length", b"%d" % (10_000 * 1024))]
            response = await upstream.request("POST", b"/upload", headers, body(), False)
            assert response.status == 413
            assert await read_all(response) == b"big"
            response.close()
            assert await get(upstream) == b"ok"
            await upstream.close()
            assert app.connections == 2
        assert len(sent) < 10_000

    run(test)


@pytest.mark.parametrize("sent", [b"four", b"sixsix"])
def test_S5_a_body_that_is_not_the_length_its_head_announced_never_reuses_the_connection(
    sent: bytes,
) -> None:
    """S5: the framing forwarded is the framing parsed. A body shorter or longer than its
    Content-Length breaks the exchange and its connection is closed, never pooled: the app
    would otherwise read the next request as the rest of this body."""

    async def body() -> AsyncIterator[bytes]:
        yield sent

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            await reader.read(5)  # reads what came of the body; answers only once it has 5
            return
        writer.write(OK)

    async def test() -> None:
        async with ScriptedApp(handler) as app:
            upstream = HttpUpstream(app.url)
            headers = [(b"content-length", b"5")]
            with pytest.raises(UpstreamError, match="request body was"):
                await upstream.request("POST", b"/", headers, body(), False)
            assert await get(upstream) == b"ok"
            assert app.connections == 2

    run(test)


def test_S1_a_body_delimited_by_the_close_is_complete_and_a_cut_one_is_an_error() -> None:
    async def test() -> None:
        async with ScriptedApp(answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", True)) as app:
            assert await get(HttpUpstream(app.url)) == b"until the end"
        cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
        async with ScriptedApp(answer(cut, close=True)) as app:
            response = await HttpUpstream(app.url).request("GET", b"/", [], None, False)
            assert await response.read() == b"only this"
            with pytest.raises(UpstreamError, match="before its response ended"):
                await response.read()

    run(test)


def test_S4_informational_answers_are_skipped_and_trailers_are_not_headers() -> None:
    raw = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Real: 1\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )

    async def test() -> None:
        async with ScriptedApp(answer(raw)) as app:
            upstream = HttpUpstream(app.url)
            response = await upstream.request("GET", b"/", [], None, False)
            assert response.status == 200
            names = [name.lower() for name, _ in response.raw_headers]
            assert names == [b"transfer-encoding", b"x-real"]
            assert await read_all(response) == b"hello world"
            response.close()
            assert await get(upstream) == b"hello world"  # the connection was clean
            await upstream.close()
        assert app.connections == 1

    run(test)


@pytest.mark.parametrize(
    "raw",
    [
        b"this is not http\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * MAX_HEAD_BYTES + b"\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["garbage", "oversized head", "unasked upgrade"],
)
def test_R3_a_response_that_is_not_acceptable_http_is_an_error(raw: bytes) -> None:
    async def test() -> None:
        async with ScriptedApp(answer(raw)) as app:
            with pytest.raises(UpstreamError):
                await get(HttpUpstream(app.url))

    run(test)


def test_R3_an_unreachable_app_is_an_error() -> None:
    async def test() -> None:
        async with ScriptedApp(answer(OK)) as app:
            url = app.url
        with pytest.raises(UpstreamError):
            await get(HttpUpstream(url))

    run(test)


def test_S3_a_cancelled_request_closes_its_connection_at_the_app() -> None:
    """S3: a client that leaves ends the app's request: the app sees its connection close."""
    received = asyncio.Event()
    closed = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        received.set()
        await reader.read()  # never answers; returns at the client's close
        closed.set()
        writer.close()

    async def test() -> None:
        async with ScriptedApp(handler) as app:
            request = asyncio.ensure_future(get(HttpUpstream(app.url)))
            await asyncio.wait_for(received.wait(), 5)
            request.cancel()
            await asyncio.wait_for(closed.wait(), 5)

    run(test)
