"""Nothing a client sent is lost or changed on its way to the app (issue 22): bodies on GET
and HEAD, HTTP/2's cookie crumbs, the refusals on a pipelined head, the Host values nginx
refuses, and hyper's own refusals counted and logged.

Black box through `runwarden serve` in front of `byte_logger.py`, an HTTP/1.1 app that keeps
every byte it receives, so what reached the app is read back exactly; raw sockets and the
`h2` library on the client side, so no client library normalises what is sent.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import AppServer, free_port, parse_metrics, poll, serving, wait_until_listening
from runwarden.testing.raw import exchange as raw_exchange
from runwarden.testing.raw import h2_exchange

HERE = Path(__file__).resolve().parent
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n"  # the end of a head whose body is chunked


@pytest.fixture
def logger() -> Iterator[AppServer]:
    yield from serving("byte_logger.py")


def _received(app: AppServer) -> list[bytes]:
    """Every connection's bytes the app received, in order (runwarden's health checks left
    out)."""
    connections = httpx.get(f"{app.url}/_log", timeout=5).json()
    return [c.encode("latin-1") for c in connections if not c.startswith("GET /health ")]


def _requests(app: AppServer) -> list[tuple[bytes, bytes]]:
    """Each request the app received: its head, and its body exactly as framed on the wire."""
    found = []
    for stream in _received(app):
        while stream:
            head, _, rest = stream.partition(b"\r\n\r\n")
            lines = head.lower().split(b"\r\n")
            if b"transfer-encoding: chunked" in lines:
                end = _chunked_end(rest)
                body, stream = rest[:end], rest[end:]
            else:
                length = next(
                    (int(ln.split(b":")[1]) for ln in lines if ln.startswith(b"content-length:")),
                    0,
                )
                body, stream = rest[:length], rest[length:]
            found.append((head, body))
    return found


def _statuses(answer: bytes) -> list[bytes]:
    """The status of each response in `answer`, in order (a body is JSON or text)."""
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)


def _chunked_end(body: bytes) -> int:
    """Where a chunked body (with no trailers) ends."""
    at = 0
    while True:
        line_end = body.index(b"\r\n", at)
        size = int(body[at:line_end].split(b";")[0], 16)
        at = line_end + 2 + size + 2
        if size == 0:
            return at


def _dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out, body = out + body[:size], body[size + 2 :]


def _h2_get(path: str, authority: str = "x", extra: list[tuple[str, str]] | None = None):  # type: ignore[no-untyped-def]
    return [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", authority),
            *(extra or [])]  # fmt: skip


# --- 1. bodies on GET and HEAD without Content-Length ---------------------------------------


def test_S1_a_chunked_get_body_reaches_the_app_whole(logger: AppServer, runwarden):
    """Issue 22, item 1: a GET with `Transfer-Encoding: chunked` reaches the app with its body
    (hyper's client would send it bodiless unless told it is chunked), framed chunked."""
    rw = runwarden(logger.url, "--no-call-regularly")
    request = (b"GET /search HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\n{\"q\r\n4\r\n\":1}\r\n0\r\n\r\n")  # fmt: skip
    answer = raw_exchange(rw.port, request)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["body"] == '{"q":1}'
    [(head, body)] = _requests(logger)
    assert head.startswith(b"GET /search HTTP/1.1\r\n")
    assert b"transfer-encoding: chunked" in head.lower().split(b"\r\n")
    assert _dechunk(body) == b'{"q":1}', body


def test_S1_a_head_request_body_reaches_the_app_too(logger: AppServer, runwarden):
    """Issue 22, item 1: HEAD, the other method hyper's client assumes bodiless."""
    rw = runwarden(logger.url, "--no-call-regularly")
    request = (
        b"HEAD /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    answer = raw_exchange(rw.port, request)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    [(_, body)] = _requests(logger)
    assert _dechunk(body) == b"hi"


def test_S1_an_http2_get_body_without_content_length_reaches_the_app(logger: AppServer, runwarden):
    """Issue 22, item 1: an HTTP/2 GET whose DATA frames carry a body and no
    `content-length`: the app gets the body (chunked, as its length is not known ahead)."""
    rw = runwarden(logger.url, "--no-call-regularly")
    status, answer, ended = h2_exchange(rw.port, _h2_get("/search"), body=b"payload")
    assert (status, ended) == (200, "ended")
    assert json.loads(answer)["body"] == "payload"
    [(_, body)] = _requests(logger)
    assert _dechunk(body) == b"payload"


def test_S3_a_malformed_chunked_body_on_a_get_is_refused(logger: AppServer, runwarden):
    """Issue 22, item 1: a GET's chunked body is read, so a malformed one is refused (400)
    and the app's request is aborted, never answered as if complete."""
    rw = runwarden(logger.url, "--no-call-regularly")
    bad = (
        b"GET /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    )
    answer = raw_exchange(rw.port, bad)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


# --- 2. HTTP/2 cookie crumbs ----------------------------------------------------------------


def test_S2_http2_cookie_crumbs_reach_the_app_as_one_cookie_line(logger: AppServer, runwarden):
    """Issue 22, item 2 (RFC 9113 8.2.3): three `cookie` fields on HTTP/2 reach the HTTP/1.1
    app as one `cookie` line joined by "; "."""
    rw = runwarden(logger.url, "--no-call-regularly")
    crumbs = [("cookie", "session=abc123"), ("cookie", "csrf=tok"), ("cookie", "lang=en")]
    status, _, _ = h2_exchange(rw.port, _h2_get("/c", extra=crumbs))
    assert status == 200
    [(head, _)] = _requests(logger)
    cookie_lines = [ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"cookie:")]
    assert cookie_lines == [b"cookie: session=abc123; csrf=tok; lang=en"], head


@pytest.fixture
def flask_on_gunicorn() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--chdir",
            str(HERE),
            "flask_cookies:app",
        ],
    )
    try:
        wait_until_listening(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_S2_flask_on_gunicorn_reads_every_cookie_an_http2_client_split(
    flask_on_gunicorn: str, runwarden
):
    """Issue 22, item 2: Flask on gunicorn behind runwarden reads all three cookies an
    HTTP/2 client (a browser) sent as crumbs; joined by "," it would read one, corrupted."""
    rw = runwarden(flask_on_gunicorn, "--no-call-regularly")
    crumbs = [("cookie", "session=abc123"), ("cookie", "csrf=tok"), ("cookie", "lang=en")]
    status, answer, _ = h2_exchange(rw.port, _h2_get("/cookies", extra=crumbs))
    assert status == 200
    assert json.loads(answer) == {"session": "abc123", "csrf": "tok", "lang": "en"}


# --- 3. the refusals on a pipelined head ----------------------------------------------------

SMUGGLE = b"POST /p2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n" + CHUNKED + b"0\r\n\r\n"


@pytest.mark.parametrize(
    "before",
    [
        b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /p1 HTTP/1.1\r\nHost: x\r\n" + CHUNKED + b"5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["behind-a-get", "behind-a-length", "behind-chunks"],
)
def test_S5_content_length_and_transfer_encoding_are_refused_on_a_pipelined_head(
    before: bytes, logger: AppServer, runwarden
):
    """Issue 22, item 3: a head with both framings pipelined behind another request (in the
    same segment) gets the same 400 as on an idle connection, and never reaches the app."""
    rw = runwarden(logger.url, "--no-call-regularly")
    answer = raw_exchange(rw.port, before + SMUGGLE)
    statuses = _statuses(answer)
    assert statuses == [b"200", b"400"], answer
    assert [head.split(b" ")[1] for head, _ in _requests(logger)] == [b"/p1"]


def test_S5_a_head_arriving_while_the_one_before_is_at_the_app_is_refused_too(
    logger: AppServer, runwarden
):
    """Issue 22, item 3: the smuggling head arrives in a later segment, while /p1 is at the
    app (slow): 400 all the same."""
    rw = runwarden(logger.url, "--no-call-regularly")
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(b"GET /p1?sleep HTTP/1.1\r\nHost: x\r\n\r\n")
        poll(lambda: any(b"/p1?sleep" in c for c in _received(logger)))  # /p1 is at the app
        sock.sendall(SMUGGLE)
        answer = b""
        sock.settimeout(3)
        while chunk := sock.recv(65536):
            answer += chunk
    statuses = _statuses(answer)
    assert statuses == [b"200", b"400"], answer
    assert [head.split(b" ")[1] for head, _ in _requests(logger)] == [b"/p1?sleep"]


def test_S3_a_pipelined_request_line_of_http_2_0_gets_505(logger: AppServer, runwarden):
    """Issue 22, item 3: `HTTP/2.0` on a pipelined request line: 505, as on an idle one."""
    rw = runwarden(logger.url, "--no-call-regularly")
    answer = raw_exchange(
        rw.port, b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/2.0\r\nHost: x\r\n\r\n"
    )
    statuses = _statuses(answer)
    assert statuses == [b"200", b"505"], answer


def test_S6_a_partial_pipelined_head_meets_the_header_timeout(logger: AppServer, runwarden):
    """Issue 22, item 3: a head begun behind a request and never finished is closed at
    `header_timeout_seconds` (counted from its first byte), not kept to the keep-alive."""
    rw = runwarden(
        logger.url, "--no-call-regularly", "--header-timeout-seconds", "1",
        "--keep-alive-seconds", "30",
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", rw.port), timeout=10) as sock:
        sock.sendall(b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p2 HTTP/1.1\r\nHo")
        began = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        took = time.monotonic() - began
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert took < 10, f"the partial head was kept {took:.1f} s"


# --- smaller: Host values, empty Transfer-Encoding, HTTP/2 host vs :authority --------------


@pytest.mark.parametrize("host", [b"a,b", b"a;b", b":80", b"x:", b"x:65536", b"x:99999999"])
def test_S3_host_values_nginx_refuses_are_refused(host: bytes, logger: AppServer, runwarden):
    """Issue 22: a Host that is not host[:port] is refused 400 and reaches neither the app
    nor its `X-Forwarded-Host`."""
    rw = runwarden(logger.url, "--no-call-regularly")
    answer = raw_exchange(rw.port, b"GET /h HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert _received(logger) == []


def test_S3_an_empty_transfer_encoding_beside_chunked_is_refused(logger: AppServer, runwarden):
    """Issue 22: `Transfer-Encoding:` empty beside `Transfer-Encoding: chunked` is two
    framings; refused 501, as nginx refuses a coding it does not know."""
    rw = runwarden(logger.url, "--no-call-regularly")
    answer = raw_exchange(
        rw.port,
        b"POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 501"), answer[:200]
    assert _received(logger) == []


def test_S3_an_http2_host_unlike_its_authority_is_refused(logger: AppServer, runwarden):
    """Issue 22 (RFC 9113 8.3.1): an HTTP/2 `host` naming another entity than `:authority`
    is malformed: 400, and nothing reaches the app."""
    rw = runwarden(logger.url, "--no-call-regularly")
    status, _, _ = h2_exchange(
        rw.port, _h2_get("/h", authority="app.example", extra=[("host", "evil.example")])
    )
    assert status == 400
    status, _, _ = h2_exchange(
        rw.port, _h2_get("/h", authority="app.example", extra=[("host", "app.example")])
    )
    assert status == 200
    assert len(_requests(logger)) == 1


def test_S3_heads_hyper_refuses_itself_are_counted_and_logged(logger: AppServer, runwarden):
    """Issue 22: a head too malformed to parse (hyper's own 400) and one too large (431)
    appear in `runwarden_proxied_requests_total` (source `runwarden`) and the access log."""
    rw = runwarden(logger.url, "--no-call-regularly", "--access-log")
    assert raw_exchange(rw.port, b"THIS IS NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400")
    huge = b"GET /x HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * (200 * 1024) + b"\r\n\r\n"
    assert raw_exchange(rw.port, huge).startswith(b"HTTP/1.1 431")

    def counted() -> dict[str, float]:
        text = httpx.get(f"{rw.admin_url}/metrics", timeout=5).text
        return parse_metrics(text)

    key400 = 'runwarden_proxied_requests_total{source="runwarden",status="400"}'
    key431 = 'runwarden_proxied_requests_total{source="runwarden",status="431"}'
    poll(lambda: counted().get(key400) == 1 and counted().get(key431) == 1)
    poll(lambda: '"- -' in rw.log() or " - - " in rw.log())
    lines = [ln for ln in rw.log().splitlines() if "runwarden.access" in ln or " 400 " in ln]
    assert any("400" in ln for ln in lines) and any("431" in ln for ln in lines), rw.log()
    assert _received(logger) == []
