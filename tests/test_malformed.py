"""Malformed requests get 4xx and never reach the app (SPEC S3)."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from conftest import AppServer, poll
from runwarden.testing.raw import exchange as raw_exchange

CASES = {
    "bad request line": b"THIS IS NOT HTTP\r\n\r\n",
    "bad method chars": b"GE(T /echo/x HTTP/1.1\r\nHost: x\r\n\r\n",
    "oversized headers": b"GET /echo/x HTTP/1.1\r\nHost: x\r\n"
    + b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(100))
    + b"\r\n",
    "oversized single header": b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Big: "
    + b"b" * (200 * 1024)
    + b"\r\n\r\n",
    "invalid content-length": b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n"
    b"\r\nhello",
    "negative content-length": b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n"
    b"\r\nhello",
    "conflicting content-lengths": b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "content-length with transfer-encoding": b"POST /echo/x HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "header without colon": b"GET /echo/x HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
}


@pytest.mark.parametrize("case", list(CASES))
def test_S3_malformed_request_gets_4xx_and_never_reaches_the_app(
    case: str, app_server: AppServer, runwarden
):
    """S3: a malformed request is refused with a 4xx; the app receives nothing, and
    runwarden keeps serving."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    response = raw_exchange(rw.port, CASES[case])
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 4"), (case, response[:200])
    assert app_server.state()["received"] == 0
    assert httpx.get(f"{rw.url}/echo/ok").status_code == 200
    assert rw.proc.poll() is None


def test_S3_broken_chunked_body_is_refused_and_never_completes_at_the_app(
    app_server: AppServer, runwarden
):
    """S3/S1: a body error can only show once streaming has begun: the client gets 400 and
    the app's request is aborted, never seen as a complete body."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    request = (
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\nzz\r\nbroken\r\n0\r\n\r\n"
    )
    assert raw_exchange(rw.port, request).startswith(b"HTTP/1.1 400")
    assert app_server.state()["uploaded"] == 0
    assert httpx.get(f"{rw.url}/echo/ok").status_code == 200


def test_S3_asterisk_target_gets_400_not_a_server_error(app_server: AppServer, runwarden):
    """S3: `OPTIONS *` names no path of the app: 400, never forwarded, no traceback."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    response = raw_exchange(rw.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400"), response[:200]
    assert app_server.state()["received"] == 0
    assert "Traceback" not in rw.log()


def test_S4_header_value_that_is_not_utf8_reaches_the_app_byte_for_byte(
    app_server: AppServer, runwarden
):
    """S4: what reaches the app is what the client sent, also bytes that are not UTF-8
    (obs-text, RFC 9110 5.5): nothing re-encodes header values on the way."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    response = raw_exchange(rw.port, b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Name: caf\xe9\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    received = json.loads(response.partition(b"\r\n\r\n")[2])
    assert dict(received["headers"])["x-name"].encode("latin-1") == b"caf\xe9"


def test_S3_aborted_chunked_upload_is_aborted_at_the_app_not_ended(
    app_server: AppServer, runwarden
):
    """S3/S1: a client that leaves in the middle of a chunked upload, after its first chunks
    reached the app, aborts the app's request: the app never sees a complete body."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            sock.sendall(b"5\r\nhello\r\n")
        poll(lambda: app_server.state()["received"] == 1)
    state = poll(lambda: (s := app_server.state()).get("upload_aborted") and s)
    assert state["uploaded"] == 0, "the app took a truncated body as complete"  # type: ignore[index]
