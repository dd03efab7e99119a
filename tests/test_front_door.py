"""The front door (SPEC S3, S5, H5): what a hostile client sends is refused, or framed
exactly as parsed, and never reaches the app as something runwarden did not parse.

Each test is named after the item of issue 9 it closes (`front_door_N`), black box through
`runwarden serve`, with raw sockets where the bytes matter.
"""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import time

import httpx
import psutil
from conftest import AppServer, poll
from runwarden.testing.raw import closed_by_peer
from runwarden.testing.raw import exchange as raw_exchange


def _head_and_body(response: bytes) -> tuple[bytes, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head, body


def _gateway_checks(rw) -> int:  # type: ignore[no-untyped-def]
    """Checks a request's header triggered (H5), as /status's history shows them."""
    return len([c for c in rw.status()["checks"] if "gateway" in c["triggers"]])


def _upgrade_post(path: bytes, body: bytes) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def test_S5_front_door_1_an_upgrade_request_body_is_never_run_as_a_request(
    app_server: AppServer, runwarden
):
    """S5 (issue 9, item 1): a POST asking to switch protocols with a body, to a route the
    app answers without reading it, keeps its body a body: the request smuggled in that
    body never runs at the app, and the next client's request gets its own answer."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    smuggled = b"GET /echo/smuggled HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    for _ in range(3):
        attack = raw_exchange(rw.port, _upgrade_post(b"/nowhere", smuggled))
        assert attack.startswith(b"HTTP/1.1 404"), attack[:200]
        # Another client, whose request may reuse the app connection the attack used.
        victim = httpx.get(f"{rw.url}/echo/victim")
        assert victim.status_code == 200
        assert victim.json()["path"] == "/echo/victim"
    paths = app_server.state().get("echo_paths", [])
    assert "/echo/smuggled" not in paths, paths
    assert paths == ["/echo/victim"] * 3


def test_S5_front_door_2_an_upgrade_request_with_a_body_is_answered(
    app_server: AppServer, runwarden
):
    """S5 (issue 9, item 2): the same request to a route that reads its body gets the app's
    answer with the whole body, promptly, as nginx gives it; nothing is left in flight."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    started = time.monotonic()
    response = raw_exchange(rw.port, _upgrade_post(b"/echo/up", b"hello"), timeout=5)
    head, body = _head_and_body(response)
    assert head.startswith(b"HTTP/1.1 200"), response[:300]
    assert b"connection: close" in head.lower()  # what follows was meant for another protocol
    seen = json.loads(body)
    assert seen["body"] == "hello"
    assert "upgrade" not in {name for name, _ in seen["headers"]}
    assert time.monotonic() - started < 2
    assert rw.status()["in_flight"] == 0


def test_S6_front_door_3_a_header_that_never_ends_gets_431_with_memory_bounded(
    app_server: AppServer, runwarden
):
    """S6 (issue 9, item 3): a header line that never ends is refused with 431 once the
    head limit is passed, not buffered without bound; memory stays flat and a normal
    request is still answered at once."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    process = psutil.Process(rw.proc.pid)
    rss_before = process.memory_info().rss
    sent = 0
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        answer = b""
        try:
            while sent < 16 * 1024 * 1024:
                sock.sendall(b"a" * 8192)
                sent += 8192
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert sent < 4 * 1024 * 1024, f"runwarden read {sent} bytes of one header"
    assert process.memory_info().rss - rss_before < 20 * 1024 * 1024
    started = time.monotonic()
    assert httpx.get(f"{rw.url}/echo/ok").status_code == 200
    assert time.monotonic() - started < 2.0  # answered at once, with a shared machine's margin
    assert app_server.state().get("echo_paths") == ["/echo/ok"]


TRAILERS = [
    b"X-User-Id: admin",
    b"X-Fal-Runner-Health-Check: 1",
    b"Host: evil.example",
    b"Connection: host",
]


def test_S5_front_door_7_trailers_never_become_headers(app_server: AppServer, runwarden):
    """S5 (issue 9, item 7): fields in a chunked body's trailer section are dropped (as
    nginx drops them): none reaches the app as a header, none triggers a check, none
    adds a Host or strips one."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    for trailer in TRAILERS:
        request = (
            b"POST /echo/t HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n\r\n"
        )
        head, body = _head_and_body(raw_exchange(rw.port, request))
        assert head.startswith(b"HTTP/1.1 200"), (trailer, head)
        seen = json.loads(body)
        names = [name for name, _ in seen["headers"]]
        assert seen["body"] == "hello"
        assert "x-user-id" not in names and "x-fal-runner-health-check" not in names
        assert [v for n, v in seen["headers"] if n == "host"] == ["app.example"], trailer
    assert _gateway_checks(rw) == 0


REFUSED = {
    "two Host headers": (b"GET /echo/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
    "HTTP/1.1 without Host": (b"GET /echo/x HTTP/1.1\r\n\r\n", b"400"),
    "HTTP/2.0 request line": (b"GET /echo/x HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),
    "a transfer coding runwarden does not decode": (
        b"POST /echo/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"501",
    ),
    "an Expect runwarden does not know": (
        b"POST /echo/x HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: 1\r\n\r\nx",
        b"417",
    ),
}


def test_S3_front_door_8_requests_rfc_9112_refuses_are_refused(app_server: AppServer, runwarden):
    """S3 (issue 9, item 8): two Hosts, HTTP/1.1 without Host, an HTTP/2.0 request line, an
    unknown transfer coding: refused with the status RFC 9112 names, never forwarded, no
    check run."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    for case, (request, status) in REFUSED.items():
        response = raw_exchange(rw.port, request)
        assert response.startswith(b"HTTP/1.1 " + status), (case, response[:200])
    assert app_server.state()["received"] == 0
    assert _gateway_checks(rw) == 0
    assert httpx.get(f"{rw.url}/echo/ok").status_code == 200


def test_S4_front_door_8_forwarding_headers_runwarden_owns_are_never_passed_through(
    app_server: AppServer, runwarden
):
    """S4 (issue 9, item 8): the client's X-Real-IP, Forwarded and names with `_` (which an
    app may read as their `-` twin, X_Forwarded_For) never reach the app; runwarden's own
    X-Forwarded-* are the only ones."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    request = (
        b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
        b"Forwarded: for=6.6.6.6\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    )
    seen = json.loads(_head_and_body(raw_exchange(rw.port, request))[1])
    headers = seen["headers"]
    assert not [v for _, v in headers if "6.6.6.6" in v], headers
    assert [v for n, v in headers if n == "x-forwarded-for"] == ["127.0.0.1"]


def test_S2_front_door_8_an_absolute_form_target_names_the_host(app_server: AppServer, runwarden):
    """S2 (issue 9, item 8): an absolute-form target is served as RFC 9112 3.2.2 says: its
    authority is the Host (the client's Host is ignored), its path goes to the configured
    app, never to the authority."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    request = b"GET http://public.example/echo/abs?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n"
    seen = json.loads(_head_and_body(raw_exchange(rw.port, request))[1])
    assert seen["path"] == "/echo/abs" and seen["query"] == "q=1"
    assert [v for n, v in seen["headers"] if n == "host"] == ["public.example"]
    assert raw_exchange(rw.port, b"GET ftp://x/y HTTP/1.1\r\nHost: x\r\n\r\n").startswith(
        b"HTTP/1.1 400"
    )


def test_H5_front_door_10_only_trusted_peers_trigger_checks(app_server: AppServer, runwarden):
    """H5 (issue 9, item 10): from a peer outside --check-trusted-sources the check header
    is removed and the request forwarded as an ordinary one: no check runs, so no client
    can turn an app's slow moment into a replacement."""
    rw = runwarden(app_server.url, "--no-call-regularly", "--check-trusted-sources", "10.0.0.0/8")
    for _ in range(20):
        response = httpx.get(f"{rw.url}/echo/c", headers={"x-fal-runner-health-check": "1"})
        assert response.status_code == 200
        names = [name for name, _ in response.json()["headers"]]
        assert "x-fal-runner-health-check" not in names
    assert _gateway_checks(rw) == 0
    assert app_server.state()["received"] == 20


def test_H5_front_door_10_loopback_is_trusted_by_default(app_server: AppServer, runwarden):
    """H5: the default trusts loopback only (a gateway in the same pod or host)."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    assert rw.status()["settings"]["check_trusted_sources"] == ["127.0.0.0/8", "::1/128"]  # type: ignore[index]
    response = httpx.get(f"{rw.url}/echo/c", headers={"x-fal-runner-health-check": "1"})
    assert response.json()["passed"] is True
    assert _gateway_checks(rw) == 1
    assert app_server.state()["received"] == 0


def _open_many(port: int, count: int) -> list[socket.socket]:
    """`count` client connections: every other one sends the start of a head and stops,
    the rest send nothing at all."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    socks = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            sock.sendall(b"GET /echo/slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(sock)
    return socks


def test_S6_front_door_4_silent_and_slow_connections_cannot_starve_or_replace(
    app_server: AppServer, runwarden
):
    """S6 (issue 9, item 4): under `ulimit -n 1024`, 1,100 connections that never finish a
    head (half send nothing, half a head that stops; some trickle a byte at a time) neither
    exhaust runwarden's fds nor keep a real request out: requests are answered at once,
    checks keep passing, the healthy runner is never replaced, and every such connection
    is closed at the header timeout."""
    rw = runwarden(app_server.url, "--header-timeout-seconds", "2", max_fds=1024,
                   wait_ready=True)  # fmt: skip
    socks = _open_many(rw.port, 1100)
    try:
        cap = rw.status()["connections"]["max"]  # type: ignore[index]
        assert cap == (1024 - 256) // 2
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            for sock in socks[1:50:2]:  # a byte at a time does not extend the deadline
                with contextlib.suppress(OSError):
                    sock.send(b"a")
            started = time.monotonic()
            assert httpx.get(f"{rw.url}/echo/ok", timeout=5).status_code == 200
            # Not starved: answered well before the flood's connections time out (2 s), with
            # the margin a shared machine needs.
            assert time.monotonic() - started < 1.5
            status = rw.status()
            assert status["state"] == "ready", status["reason"]
            assert status["connections"]["open"] <= cap  # type: ignore[index]
            time.sleep(0.1)
        poll(lambda: all(closed_by_peer(s, b"HTTP/1.1 408") for s in socks), timeout=5)
    finally:
        for sock in socks:
            sock.close()
    counted = [c for c in rw.status()["checks"] if c["counted"] == "counted"]  # type: ignore[union-attr]
    assert counted == []
    assert rw.proc.poll() is None
    assert "Too many open files" not in rw.log()


def test_S6_front_door_4_a_check_runwarden_cannot_send_is_not_the_apps_failure(
    app_server: AppServer, runwarden
):
    """S6 (issue 9, item 4): with the cap set above what the fd limit allows, a flood
    exhausts runwarden's fds; the checks it then cannot send are recorded as `local`,
    never counted, and the healthy runner is not replaced."""
    rw = runwarden(app_server.url, "--header-timeout-seconds", "3", "--max-connections",
                   "2000", max_fds=1024, wait_ready=True)  # fmt: skip
    assert "more than the fd limit allows" in rw.log()
    process = psutil.Process(rw.proc.pid)
    socks = _open_many(rw.port, 1100)
    try:
        poll(lambda: process.num_fds() >= 1020, timeout=5)
        # Exhausted: hold it for eight check periods, more than three counted failures
        # (failure threshold 3, a check every 0.2 s) would take to replace the runner.
        time.sleep(1.6)
        assert rw.proc.poll() is None
    finally:
        for sock in socks:
            sock.close()
    assert httpx.get(f"{rw.url}/echo/ok", timeout=5).status_code == 200
    status = rw.status()
    assert status["state"] == "ready", status["reason"]
    checks = status["checks"]
    assert [c for c in checks if c["counted"] == "local"], checks  # type: ignore[union-attr]
    assert [c for c in checks if c["counted"] == "counted"] == []  # type: ignore[union-attr]
