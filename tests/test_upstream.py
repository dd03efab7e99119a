"""The way to the app (SPEC S1-S5, R3), black box: a client's raw bytes through `runwarden
serve` to a scripted app on loopback, whose every request head and connection is recorded.

The HTTP/1.1 cases a general client library handles (keep-alive, HEAD, a connection the app
closes, a stale pooled connection, an early answer, 1xx, trailers) and the framing rule: what
reaches the app is framed as runwarden parsed it, and a connection whose framing is in doubt
is never reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest
from conftest import Runwarden, poll
from runwarden.testing.raw import exchange

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int, bytes], Awaitable[None]]
MAX_HEAD_BYTES = 64 * 1024
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HEALTHY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class ScriptedApp:
    """A TCP server on its own thread answering each request with `handler(reader, writer,
    n, head)`, where n counts requests across connections. Health checks (`/health`) are
    answered and not counted; every other request head and connection is recorded."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.heads: list[bytes] = []
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        ready.set()
        self.loop.run_forever()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def close(self) -> None:
        """Stop listening, end every connection's task, then stop and close the loop: a task
        left pending would be reported ("Task was destroyed but it is pending!") when the
        loop is collected, at the end of the run."""
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counted = False
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.split(b" ", 2)[1].endswith(b"/health"):
                    writer.write(HEALTHY)
                    await writer.drain()
                    writer.close()
                    return
                if not counted:
                    counted = True
                    self.connections += 1
                self.heads.append(head)
                await self.handler(reader, writer, len(self.heads), head)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def test_the_scripted_app_leaves_no_task_pending_when_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The harness itself: a connection still open when the app closes has its task ended,
    so `make test` ends without "Task was destroyed but it is pending!" lines."""

    def open_a_connection_and_close() -> None:
        app = ScriptedApp(answer(OK))
        port = int(app.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
            assert idle.recv(64).startswith(b"HTTP/1.1 200")
            poll(lambda: app.connections == 1)
            app.close()

    open_a_connection_and_close()  # the app and its loop are garbage from here on
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert not [r for r in caplog.records if "pending" in r.getMessage()], caplog.text


@pytest.fixture
def scripted(
    runwarden: Callable[..., Runwarden],
) -> Iterator[Callable[..., tuple[ScriptedApp, Runwarden]]]:
    apps: list[ScriptedApp] = []

    def start(handler: Handler, prefix: str = "") -> tuple[ScriptedApp, Runwarden]:
        app = ScriptedApp(handler)
        apps.append(app)
        rw = runwarden(app.url + prefix, "--no-call-regularly", wait_ready=True)
        return app, rw

    try:
        yield start
    finally:
        for app in apps:
            app.close()


def answer(raw: bytes, close: bool = False) -> Handler:
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, head: bytes
    ) -> None:
        writer.write(raw)
        await writer.drain()
        if close:
            writer.close()

    return handler


def get(rw: Runwarden, target: bytes = b"/", method: bytes = b"GET") -> bytes:
    """One request on a connection of its own; the raw answer."""
    return exchange(rw.port, method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")


def body_of(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2 :]
    return out


def test_S4_request_head_is_sent_byte_for_byte_with_a_host_when_the_client_had_none(scripted):
    """S4: the target under the app's prefix, values byte for byte (obs-text included), and,
    for an HTTP/1.0 client that named no host, the app's own as Host."""
    app, rw = scripted(answer(OK), prefix="/prefix")
    request = b"POST /a%20b?q=1 HTTP/1.0\r\nX-Mixed: Caf\xe9 Value\r\nContent-Length: 0\r\n\r\n"
    assert exchange(rw.port, request).startswith(b"HTTP/1.0 200")
    (head,) = app.heads
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /prefix/a%20b?q=1 HTTP/1.1"
    assert b"x-mixed: Caf\xe9 Value" in lines
    port = app.url.rpartition(":")[2].encode()
    assert b"host: 127.0.0.1:" + port in lines
    assert b"x-forwarded-for: 127.0.0.1" in lines
    assert not [line for line in lines if line.startswith(b"x-forwarded-host")]


def test_keep_alive_reuses_one_connection_and_head_keeps_it(scripted):
    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, head: bytes
    ) -> None:
        # HEAD announces a body it does not send (RFC 9110 9.3.2).
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" if n == 2 else OK)

    app, rw = scripted(handler)
    assert body_of(get(rw)) == b"ok"
    head = get(rw, method=b"HEAD")
    assert head.startswith(b"HTTP/1.1 200") and b"content-length: 1000" in head.lower()
    assert body_of(head) == b""
    assert body_of(get(rw)) == b"ok"
    assert app.connections == 1


def test_a_connection_the_app_closes_after_answering_is_not_reused(scripted):
    app, rw = scripted(answer(OK, close=True))
    for _ in range(3):  # a close that arrives late is met by the retry
        assert body_of(get(rw)) == b"ok"
    assert app.connections == 3


def test_R3_a_stale_pooled_connection_is_retried_only_for_idempotent_bodiless_requests(scripted):
    """The app closes a kept-alive connection just as a request is written to it (a race
    with its keep-alive timeout): a GET is sent again on a new connection; a POST is not,
    since the app might have acted on it, and the client gets 502."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, head: bytes
    ) -> None:
        if n % 2 == 0:  # every second request: closed without a byte of answer
            writer.close()
        else:
            writer.write(OK)

    app, rw = scripted(handler)
    assert body_of(get(rw)) == b"ok"  # request 1 on connection 1
    assert body_of(get(rw)) == b"ok"  # 2 dropped on connection 1, 3 on a new one
    assert app.connections == 2
    post = exchange(rw.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 502"), post  # 4 dropped, not retried
    assert len(app.heads) == 4


def test_S1_R2_an_early_answer_is_forwarded_and_the_rest_of_the_body_not_sent(scripted):
    """An app may refuse an upload before reading it (413): the client gets that answer,
    not a 502, without sending the whole body. The app is left mid-request, so its
    connection is not reused."""

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, head: bytes
    ) -> None:
        if n > 1:
            writer.write(OK)
            return
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 3\r\n\r\nbig")
        await writer.drain()

    app, rw = scripted(handler)
    size = 10_000 * 1024
    sent = 0
    answer_bytes = b""
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        sock.setblocking(False)
        deadline = time.monotonic() + 10
        while b"\r\n\r\nbig" not in answer_bytes and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                answer_bytes += sock.recv(65536)
            try:
                sent += sock.send(b"x" * 1024)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
    assert answer_bytes.startswith(b"HTTP/1.1 413"), answer_bytes[:200]
    assert sent < size
    assert body_of(get(rw)) == b"ok"
    assert app.connections == 2


def test_S5_a_body_shorter_than_its_length_is_aborted_at_the_app_and_never_reused(scripted):
    """S5: the framing forwarded is the framing parsed. A client that sends four bytes of
    a five-byte body and stops leaves the app a request that never completes: its
    connection is closed, never pooled, or the app would read the next request as the rest
    of this body."""
    bodies: list[bytes] = []

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, head: bytes
    ) -> None:
        if n == 1:
            bodies.append(await reader.read(5))  # what came of the body; waits for 5
            return
        writer.write(OK)

    app, rw = scripted(handler)
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfour")
        poll(lambda: app.heads)
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            sock.recv(4096)
    assert body_of(get(rw)) == b"ok"
    assert app.connections == 2


def test_S5_bytes_past_a_bodys_length_are_never_its_body(scripted):
    """S5: a client that sends six bytes after `Content-Length: 5` gives the app a five-byte
    body; the sixth byte is not the body's, and never reaches the app as anything."""
    bodies: list[bytes] = []

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, head: bytes
    ) -> None:
        bodies.append(await reader.readexactly(5))
        writer.write(OK)

    app, rw = scripted(handler)
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nsixsix"
    assert exchange(rw.port, request).startswith(b"HTTP/1.1 200")
    assert bodies == [b"sixsi"]
    assert len(app.heads) == 1


def test_S1_a_body_delimited_by_the_close_is_complete_and_a_cut_one_is_cut(scripted):
    app, rw = scripted(answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True))
    assert body_of(get(rw)) == b"until the end"
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"
    app.handler = answer(cut, close=True)
    response = get(rw)
    assert response.startswith(b"HTTP/1.1 200") and b"content-length: 100" in response.lower()
    assert body_of(response) == b"only this"  # the client sees 9 of 100: it broke


def test_S4_informational_answers_are_skipped_and_trailers_are_not_headers(scripted):
    raw = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Real: 1\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    app, rw = scripted(answer(raw))
    response = get(rw)
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert b"x-real: 1" in response.lower() and b"x-trailer" not in response.lower()
    assert body_of(response) == b"hello world"
    assert body_of(get(rw)) == b"hello world"  # the connection was clean
    assert app.connections == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"this is not http\r\n\r\n",
        # hyper bounds a head by its read buffer (64 KiB), give or take the last read.
        b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * 2 * MAX_HEAD_BYTES + b"\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    ],
    ids=["garbage", "oversized head", "unasked upgrade"],
)
def test_R3_a_response_that_is_not_acceptable_http_is_a_502(scripted, raw: bytes):
    _, rw = scripted(answer(raw))
    assert get(rw).startswith(b"HTTP/1.1 502")


def test_S3_a_client_that_leaves_closes_its_connection_at_the_app(scripted):
    """S3: a client that leaves ends the app's request: the app sees its connection close."""
    closed = threading.Event()

    async def handler(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int, head: bytes
    ) -> None:
        await reader.read()  # never answers; returns at runwarden's close
        closed.set()
        writer.close()

    app, rw = scripted(handler)
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        poll(lambda: app.heads)
    assert closed.wait(5)
