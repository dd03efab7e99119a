"""The proxy forwards faithfully and safely (SPEC S2, S3, S4, R3)."""

from __future__ import annotations

import json
import socket

import httpx
from conftest import AppServer, free_port, poll
from runwarden.testing.raw import exchange as raw_exchange

HOP_BY_HOP = {"connection", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"}


def _echo(response: bytes) -> dict[str, object]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return dict(json.loads(body))


def test_S2_S4_request_reaches_app_as_sent_less_hop_by_hop(app_server: AppServer, runwarden):
    """S2/S4: method, path, query, body and end-to-end headers arrive as sent; hop-by-hop
    headers and those named in Connection are dropped; X-Forwarded-* set, the client's
    X-Forwarded-For replaced; no header of the proxy's own (no User-Agent, Accept...)."""
    rw = runwarden(app_server.url)
    request = (
        b"POST /echo/a%2Fb/c?x=1&y=%20z HTTP/1.1\r\n"
        b"Host: public.example\r\n"
        b"Connection: keep-alive, X-Secret-Hop\r\n"
        b"X-Secret-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Proxy-Authorization: Basic abc\r\n"
        b"X-Forwarded-For: 6.6.6.6\r\n"
        b"X-Custom: Mixed Case Value\r\n"
        b"Cookie: a=1\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
        b"hello"
    )
    seen = _echo(raw_exchange(rw.port, request))
    assert seen["method"] == "POST"
    assert seen["raw_path"] == "/echo/a%2Fb/c"
    assert seen["query"] == "x=1&y=%20z"
    assert seen["body"] == "hello"
    headers = [(k, v) for k, v in seen["headers"]]  # type: ignore[attr-defined]
    names = [k for k, _ in headers]
    assert not HOP_BY_HOP & set(names)
    assert "x-secret-hop" not in names
    assert ("x-custom", "Mixed Case Value") in headers
    assert ("cookie", "a=1") in headers
    assert ("host", "public.example") in headers
    assert ("x-forwarded-for", "127.0.0.1") in headers
    assert ("x-forwarded-proto", "http") in headers
    assert ("x-forwarded-host", "public.example") in headers
    assert names.count("x-forwarded-for") == 1
    assert ("content-length", "5") in headers
    assert not {"user-agent", "accept", "accept-encoding", "content-type"} & set(names)


def test_S2_upstream_address_never_taken_from_request(app_server: AppServer, runwarden):
    """S2: an absolute-form target or a foreign Host still goes to the configured app."""
    rw = runwarden(app_server.url)
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen()
    trap_port = trap.getsockname()[1]
    with trap:
        request = (
            f"GET http://127.0.0.1:{trap_port}/echo/x HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{trap_port}\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        seen = _echo(raw_exchange(rw.port, request))
    assert seen["path"] == "/echo/x"


def test_S4_exactly_one_server_and_date_header(app_server: AppServer, runwarden):
    """S4: the app's Server and Date pass through, once each; nothing is doubled."""
    rw = runwarden(app_server.url)
    response = httpx.get(f"{rw.url}/predict")
    assert response.status_code == 200
    raw = response.headers.raw
    assert [v for k, v in raw if k.lower() == b"server"] == [b"uvicorn"]
    assert len([v for k, v in raw if k.lower() == b"date"]) == 1


def test_S4_no_cookie_jar_no_redirects_no_decompression(app_server: AppServer, runwarden):
    """S4: a Set-Cookie never comes back on another request; a redirect is forwarded, not
    followed; an encoded body passes byte for byte with its Content-Encoding."""
    rw = runwarden(app_server.url)
    with httpx.Client(base_url=rw.url) as client:
        first = client.get("/echo/c", params={"set": "set-cookie:session=secret"})
        assert first.headers["set-cookie"] == "session=secret"
    second = httpx.get(f"{rw.url}/echo/c")
    assert not [k for k, _ in second.json()["headers"] if k == "cookie"]

    redirect = httpx.get(
        f"{rw.url}/echo/r", params={"status": "302", "set": "location:/echo/elsewhere"}
    )
    assert redirect.status_code == 302
    assert redirect.headers["location"] == "/echo/elsewhere"

    encoded = httpx.get(f"{rw.url}/echo/z", params={"set": "content-encoding:identity-test"})
    assert encoded.headers["content-encoding"] == "identity-test"


def test_S3_client_disconnect_cancels_upstream_request(app_server: AppServer, runwarden):
    """S3: a client that goes away mid-request cancels the app's side of it."""
    rw = runwarden(app_server.url)
    sock = socket.create_connection(("127.0.0.1", rw.port))
    sock.sendall(b"GET /hold?seconds=20 HTTP/1.1\r\nHost: x\r\n\r\n")
    poll(lambda: app_server.state()["holding"] == 1)
    sock.close()
    poll(lambda: app_server.state()["disconnected"] == 1)
    assert rw.status()["in_flight"] == 0


def test_R3_unreachable_app_gets_502_json(runwarden):
    """R3: no app at the configured address: 502 with a short JSON body."""
    rw = runwarden(f"http://127.0.0.1:{free_port()}", "--no-call-regularly")
    response = httpx.get(f"{rw.url}/predict")
    assert response.status_code == 502
    assert response.json()["error"] == "app unreachable"
    assert rw.proc.poll() is None


def test_S2_every_method_and_status_forwarded(app_server: AppServer, runwarden):
    """S2/R2: methods, statuses and bodies pass through unchanged."""
    rw = runwarden(app_server.url)
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        response = httpx.request(method, f"{rw.url}/echo/m", params={"status": "418"})
        assert response.status_code == 418
        assert response.json()["method"] == method


def test_S4_utf8_header_values_reach_the_app_byte_for_byte(app_server: AppServer, runwarden):
    """S4: a header value outside ASCII reaches the app as the client sent it."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    sent = "café ☕".encode()
    request = (
        b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Name: " + sent + b"\r\nConnection: close\r\n\r\n"
    )
    response = raw_exchange(rw.port, request)
    echoed = json.loads(response.split(b"\r\n\r\n", 1)[1])
    received = {k: v for k, v in echoed["headers"]}
    assert received["x-name"].encode("latin-1") == sent
