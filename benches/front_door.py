"""Section 7, the front door: the HTTP/1 list of issue 9 as black-box probes, and HTTP/2's
known attacks (`benches.h2_attacks`), run against nginx and runwarden side by side in front of
`benches.app`, so that both are judged by the same bytes. Each probe returns (passed, what it
saw). The server-independent items (5, 6, 9, 10: drain, supervision, trust) are runwarden's
own logic and are tested in `tests/`, which also use this module's raw client.

    probe_all(proxy_port, app_port, header_timeout) -> {item: (passed, detail)}
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runwarden.testing.raw import closed_by_peer, exchange

from benches import h2_attacks
from benches.common import PYTHON, Profile, free_port, log, running, runwarden_serve, wait_http
from benches.tools import nginx

Finding = tuple[bool, str]


def _status(response: bytes) -> int:
    try:
        return int(response.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0


def _body(response: bytes) -> dict[str, object]:
    body = response.partition(b"\r\n\r\n")[2]
    if b"\r\n" in body[:8] and body[:1] != b"{":  # chunked: the first chunk is enough here
        body = body.partition(b"\r\n")[2]
    try:
        return dict(json.loads(body.partition(b"\r\n0\r\n")[0] or body))
    except (ValueError, TypeError):
        return {}


def _seen(app_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/control/seen", timeout=5) as r:
        return dict(json.loads(r.read()))


def _upgrade(path: bytes, body: bytes) -> bytes:
    return (
        b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def upgrade_desync(port: int, app_port: int, header_timeout: float) -> Finding:
    """1: a body smuggled in an Upgrade request never runs at the app."""
    path = f"/smuggled-{uuid.uuid4().hex[:8]}".encode()
    smuggled = b"GET " + path + b" HTTP/1.1\r\nHost: internal\r\n\r\n"
    for _ in range(3):
        exchange(port, _upgrade(b"/nowhere", smuggled))
        for _ in range(3):
            exchange(port, b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    ran = _seen(app_port).get(path.decode(), 0)
    return ran == 0, f"the smuggled request ran {ran} time(s) at the app"


def upgrade_answered(port: int, app_port: int, header_timeout: float) -> Finding:
    """2: the same request to a route that reads the body is answered, with its body."""
    started = time.monotonic()
    response = exchange(port, _upgrade(b"/echo", b"hello"), timeout=3)
    took = time.monotonic() - started
    got = _body(response).get("body_bytes")
    ok = _status(response) == 200 and got == 5 and took < 2.5
    return ok, f"status {_status(response) or 'none'}, body {got} of 5 bytes, {took:.1f} s"


def endless_header(port: int, app_port: int, header_timeout: float) -> Finding:
    """3: a header line that never ends is refused within the head limit."""
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        sock.sendall(b"GET /json HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sock.setblocking(False)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and sent < 64 << 20:
            try:
                sent += sock.send(b"a" * 65536)
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
            with contextlib.suppress(BlockingIOError, OSError):
                answer += sock.recv(4096)
            if answer:
                break
    status = _status(answer)
    ok = 400 <= status < 500 and sent < 8 << 20
    return ok, f"{'status ' + str(status) if status else 'no answer'} after {sent >> 10} KiB"


def idle_and_slow(port: int, app_port: int, header_timeout: float) -> Finding:
    """4: connections that never finish a head are closed at the header timeout, and a real
    request is answered meanwhile."""
    socks = []
    for i in range(400):
        try:
            sock = socket.create_connection(("127.0.0.1", port), timeout=3)
        except OSError:
            break
        if i % 2:
            with contextlib.suppress(OSError):
                sock.sendall(b"GET /json HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        socks.append(sock)
    try:
        started = time.monotonic()
        request = b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        answered = _status(exchange(port, request)) == 200
        took = time.monotonic() - started
        time.sleep(header_timeout + 1.5)
        closed = sum(closed_by_peer(sock) for sock in socks)
    finally:
        for sock in socks:
            sock.close()
    ok = answered and took < 1 and closed >= len(socks) * 0.95
    return ok, (
        f"request during the flood {'answered' if answered else 'NOT answered'} in "
        f"{took:.2f} s; {closed} of {len(socks)} closed {header_timeout + 1.5:.1f} s later"
    )


def trailers(port: int, app_port: int, header_timeout: float) -> Finding:
    """7: trailer fields never become request headers."""
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-User-Id: admin\r\n\r\n"
    )
    seen = _body(exchange(port, request))
    names = [str(n).lower() for n, _ in seen.get("headers", [])]  # type: ignore[attr-defined]
    if not names:
        return False, "no echo from the app"
    promoted = "x-user-id" in names
    return not promoted, "the trailer reached the app as a header" if promoted else "dropped"


MALFORMED = {
    "two Host": b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no Host": b"GET /echo HTTP/1.1\r\n\r\n",
    "HTTP/2.0": b"GET /echo HTTP/2.0\r\nHost: x\r\n\r\n",
    "TE gzip, chunked": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked"
    b"\r\n\r\n0\r\n\r\n",
}


def malformed(port: int, app_port: int, header_timeout: float) -> Finding:
    """8: what RFC 9112 refuses is refused; forwarding headers the proxy owns are not passed
    through."""
    forwarded = []
    for name, request in MALFORMED.items():
        if _status(exchange(port, request)) in (200, 502, 503):
            forwarded.append(name)
    request = (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
        b"Forwarded: for=6.6.6.6\r\n\r\n"
    )
    seen = _body(exchange(port, request))
    passed_on = [n for n, v in seen.get("headers", []) if "6.6.6.6" in str(v)]  # type: ignore[attr-defined]
    forwarded += [f"passed on {n}" for n in passed_on]
    return not forwarded, "all refused or dropped" if not forwarded else "; ".join(forwarded)


def get_body(port: int, app_port: int, header_timeout: float) -> Finding:
    """22.1: a GET's chunked body (no Content-Length) reaches the app whole."""
    request = (b"GET /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"7\r\npayload\r\n0\r\n\r\n")  # fmt: skip
    read = _body(exchange(port, request)).get("body_bytes")
    return read == 7, f"the app read {read} of 7 bytes"


PIPELINED = {
    "Content-Length with Transfer-Encoding": b"POST /echo HTTP/1.1\r\nHost: x\r\n"
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "HTTP/2.0": b"GET /echo HTTP/2.0\r\nHost: x\r\n\r\n",
}


def pipelined(port: int, app_port: int, header_timeout: float) -> Finding:
    """22.3: a head refused on an idle connection is refused behind another request too."""
    before = _seen(app_port).get("/echo", 0)
    answered = []
    for name, second in PIPELINED.items():
        answer = exchange(port, b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n" + second)
        statuses = [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3}) ", answer)]
        if len(statuses) > 1 and statuses[1] in (200, 502, 503):
            answered.append(f"{name}: {statuses[1]}")
    reached = _seen(app_port).get("/echo", 0) - before
    if reached:
        answered.append(f"{reached} reached the app")
    return not answered, "; ".join(answered) or "both refused behind GET /json"


HOSTS = [b"a,b", b"a;b", b":80", b"x:", b"x:65536"]


def host_values(port: int, app_port: int, header_timeout: float) -> Finding:
    """22: Host values that are not host[:port], and an empty coding beside chunked."""
    taken = [h.decode() for h in HOSTS
             if _status(exchange(port, b"GET /echo HTTP/1.1\r\nHost: " + h + b"\r\n\r\n"))
             in (200, 502, 503)]  # fmt: skip
    empty_te = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")  # fmt: skip
    if _status(exchange(port, empty_te)) in (200, 502, 503):
        taken.append("an empty Transfer-Encoding")
    return not taken, "taken: " + ", ".join(taken) if taken else "all refused"


PROBES: dict[str, Callable[[int, int, float], Finding]] = {
    "1. Upgrade body smuggled as a request": upgrade_desync,
    "2. Upgrade request with a body answered": upgrade_answered,
    "3. endless header refused": endless_header,
    "4. idle and slow connections closed, no starvation": idle_and_slow,
    "7. trailers never headers": trailers,
    "8. RFC 9112 refusals, owned headers dropped": malformed,
    "22.1 a GET's chunked body reaches the app": get_body,
    "22.3 refusals on a pipelined head": pipelined,
    "22. Host values and an empty coding refused": host_values,
}


def probe_all(port: int, app_port: int, header_timeout: float) -> dict[str, Finding]:
    out = {}
    for item, probe in PROBES.items():
        try:
            out[item] = probe(port, app_port, header_timeout)
        except OSError as exc:
            out[item] = (False, f"probe failed: {exc!r}")
    return out


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    """Both lists against nginx (HTTP/2 on a second port: nginx 1.22 speaks h2c only there)
    and runwarden (both on one port), the header timeout set alike."""
    header_timeout = 1.0 if profile.smoke else 3.0
    app_port, port, admin = free_port(), free_port(), free_port()
    args = runwarden_serve(
        "--app-url", f"http://127.0.0.1:{app_port}", "--host", "127.0.0.1",
        "--port", str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin),
        "--log-level", "warning", "--no-gpu-monitoring",
        "--header-timeout-seconds", str(header_timeout),
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        stack.enter_context(running([PYTHON, "-m", "benches.app", str(app_port)], port=app_port))
        reference = stack.enter_context(
            nginx(app_port, tmp / "nginx-front-door", header_timeout=header_timeout, h2=True)
        )
        proc = stack.enter_context(running(args, port=port, log_to=tmp / "front-door-rw.log"))
        wait_http(f"http://127.0.0.1:{port}/json", proc)
        assert reference.h2_port is not None
        where = {"nginx": (reference.port, reference.h2_port, reference.pid),
                 "runwarden": (port, port, proc.pid)}  # fmt: skip
        http1, http2, h2_bytes = {}, {}, {}
        for name, (h1_port, h2_port, pid) in where.items():
            log(f"front door: the HTTP/1 list against {name}")
            http1[name] = probe_all(h1_port, app_port, header_timeout)
            log(f"front door: HTTP/2's attacks against {name}")
            http2[name] = h2_attacks.probe_all(h2_port, app_port, pid, profile.attack_frames)
            log(f"front door: what HTTP/2 clients send, through {name}")
            h2_bytes[name] = h2_attacks.fidelity_all(h2_port)
            for item, (ok, detail) in http2[name].items():
                log(f"front door {name}, {item}: {'pass' if ok else 'FAILS'}: {detail}")
    return {"http1": http1, "http2": http2, "http2_bytes": h2_bytes,
            "header_timeout": header_timeout}  # fmt: skip
