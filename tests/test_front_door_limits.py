"""The front door's limits (SPEC S1, S3, S5, S6, H9): seven holes found in the old data plane,
each closed by a guarantee shown here black box, through `runwarden serve` and raw sockets.

Each test is named after its hole (`hole_N`); nginx's behaviour is the reference. Every
wait is on a condition (`poll`) or a deadline with a wide margin, so a busy machine makes a
test slower, not wrong.
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
import httpx
import psutil
import pytest
from conftest import HERE, AppServer, free_port, poll
from runwarden import exit_codes
from runwarden.testing.raw import exchange as raw_exchange

MB = 1024 * 1024


def _small_window(port: int, timeout: float = 5.0) -> socket.socket:
    """A client connection whose receive buffer is tiny (SO_RCVBUF 4096, set before connect
    so the window is small from the handshake on): a client that reads slowly, or never."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def _read_to_end(sock: socket.socket, timeout: float) -> tuple[bytes, str]:
    """Everything until the peer closes (`eof`) or resets (`reset`), or `timeout` passes
    with the connection still open (`open`)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        return b"".join(chunks), "reset"
    except TimeoutError:
        return b"".join(chunks), "open"
    return b"".join(chunks), "eof"


def _app_connections(app_pid: int, app_port: int) -> int:
    """Established connections the app holds on its listening port (all from runwarden)."""
    return len(
        [
            c
            for c in psutil.Process(app_pid).net_connections(kind="tcp")
            if c.laddr and c.laddr.port == app_port and c.status == psutil.CONN_ESTABLISHED
        ]
    )


def _passes_since(rw, check_id: int) -> tuple[int, list[object]]:  # type: ignore[no-untyped-def]
    """Checks run after `check_id`: how many passed, and the ones that did not."""
    later = [c for c in rw.status()["checks"] if c["id"] > check_id]
    return len([c for c in later if c["passed"]]), [c for c in later if not c["passed"]]


# --- hole 1: a client that pipelines and never reads ----------------------------------------

PIPELINED_DOWNLOAD = b"GET /counted/download?size=200000&length=1 HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.timeout(60)
def test_S1_S6_hole_1_a_pipelining_client_that_never_reads_holds_bounded_memory(
    app_server: AppServer, runwarden
):
    """S1/S6 (hole 1): a client pipelines GETs of 200 KB answers, 20 per write every 50 ms
    for 3 s (1,200 requests), with a 4 KiB receive buffer, and reads nothing. The next
    pipelined request starts only once the previous answer has drained to the client, so
    runwarden's memory stays flat (the old data plane grew ~75 MB/s) and the app runs only
    the few requests whose answers fit in the socket buffers, not all that were sent."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    process = psutil.Process(rw.proc.pid)
    assert httpx.get(f"{rw.url}/counted/download", params={"size": "200000"}).status_code == 200
    rss_before = process.memory_info().rss
    sent = 0
    peak = rss_before
    with _small_window(rw.port) as sock:
        sock.setblocking(False)
        pending = b""
        started = time.monotonic()
        batches = 0
        while (elapsed := time.monotonic() - started) < 3.0:
            # 20 requests per 50 ms by the clock, however slowly this loop runs.
            due = min(60, int(elapsed / 0.05) + 1)
            pending += PIPELINED_DOWNLOAD * 20 * (due - batches)
            batches = due
            with contextlib.suppress(BlockingIOError):
                while pending:
                    written = sock.send(pending)
                    sent += written
                    pending = pending[written:]
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)
        requests_sent = sent // len(PIPELINED_DOWNLOAD)
        ran = int(app_server.state()["downloads"]) - 1  # type: ignore[call-overload]
        peak = max(peak, process.memory_info().rss)
        # Another client is served at once meanwhile.
        other = time.monotonic()
        assert httpx.get(f"{rw.url}/echo/other", timeout=5).status_code == 200
        assert time.monotonic() - other < 2
    assert requests_sent >= 1000, f"only {requests_sent} requests written: the attack did not run"
    grown = (peak - rss_before) / MB
    assert grown < 40, f"runwarden's RSS grew {grown:.1f} MB under the attack"
    # About what 4 MB of socket buffers hold (20 answers), with a wide margin: far fewer
    # than the 1,200 sent.
    assert 1 <= ran <= 150, f"the app ran {ran} of {requests_sent} pipelined requests"
    assert rw.proc.poll() is None
    poll(lambda: rw.status()["in_flight"] == 0, timeout=10)


# --- hole 2: stalled request bodies and the app's fds ----------------------------------------

STALLED_UPLOAD = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx"


@pytest.mark.timeout(60)
def test_S6_hole_2_stalled_bodies_cannot_exhaust_the_apps_fds(runwarden):
    """S6/Q4 (hole 2): a supervised app started with a soft fd limit of 1,024 (runwarden's
    hard limit is higher, as in a default container) and 1,100 clients that each send a head
    with Content-Length: 100 and one byte of body, then stall. runwarden opens at most
    --max-app-connections (auto: 1024 / 4 = 256) connections to the app, the rest wait, so
    the app keeps its fds: checks (0.2 s period, 0.3 s timeout, threshold 3) keep passing,
    runwarden stays ready and never exits (the old data plane held 1,005 requests open at
    the app, which ran out of fds and was replaced with code 10)."""
    port = free_port()
    app = [sys.executable, str(HERE / "app_server.py"), str(port)]
    soft_1024 = ["prlimit", "--nofile=1024:", "--"]  # the soft limit only; the hard one stays
    # A start period covers the app's own start on a busy machine; the attack comes after it,
    # where every failure counts.
    rw = runwarden(f"http://127.0.0.1:{port}", "--start-period-seconds", "2", app_command=app,
                   wrapper=soft_1024, wait_ready=True)  # fmt: skip
    poll(lambda: rw.status()["health"]["age_seconds"] > 2.2)  # type: ignore[index]
    app_pid = int(rw.status()["app"]["pid"])  # type: ignore[index]
    assert psutil.Process(app_pid).rlimit(psutil.RLIMIT_NOFILE)[0] == 1024
    assert rw.status()["connections"]["max"] > 1100  # type: ignore[index]
    bound = 256
    last_check = rw.status()["checks"][-1]["id"]  # type: ignore[index]
    socks = []
    most = 0
    try:
        for _ in range(1100):
            sock = socket.create_connection(("127.0.0.1", rw.port), timeout=5)
            sock.sendall(STALLED_UPLOAD)
            socks.append(sock)
        # The attack holds: the app fills up to the bound, and no further; the rest wait.
        most = int(poll(lambda: (n := _app_connections(app_pid, port)) >= bound - 16 and n, 15))  # type: ignore[call-overload]
        poll(lambda: rw.status()["in_flight"] == 1100)
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            held = _app_connections(app_pid, port)
            most = max(most, held)
            assert held <= bound + 4, f"{held} connections at the app, bound {bound}"
            status = rw.status()
            assert status["state"] == "ready", (status["reason"], status["detail"])
            assert rw.proc.poll() is None, rw.log()[-3000:]
            time.sleep(0.1)
        passed, failed = _passes_since(rw, last_check)
        assert failed == [], failed
        assert passed >= 5, f"only {passed} checks passed in the attack's 3.5 s"
        closed_at = rw.status()["checks"][-1]["id"]  # type: ignore[index]
    finally:
        # The last to come, waiting for a connection to the app, leave first.
        for sock in reversed(socks):
            sock.close()
    assert most <= bound + 4

    # The clients gone: the requests they held at the app are aborted, those still waiting
    # for a connection never reach it, and the runner stays: the app's burst of 256 aborted
    # uploads may hold one 0.3 s check up, never a replacement's three.
    def settled() -> bool:
        try:
            status = rw.status()
        except httpx.TransportError:
            return rw.proc.poll() is not None
        return status["in_flight"] == 0 and status["checks"][-1]["id"] >= closed_at + 8  # type: ignore[index]

    poll(settled, timeout=20)
    exits = [line for line in rw.log().splitlines() if "runwarden:" in line][-3:]
    assert rw.proc.poll() is None, exits
    received = int(httpx.get(f"http://127.0.0.1:{port}/_control/state").json()["received"])
    assert received <= bound + 16, f"{received} requests reached the app, {bound} at most"
    passed, failed = _passes_since(rw, closed_at)
    assert len(failed) <= 1 and passed >= 6, (passed, failed)
    assert not [c for c in rw.status()["checks"] if c["consecutive_failures"] > 1]  # type: ignore[union-attr]
    assert rw.status()["state"] == "ready"
    assert httpx.get(f"{rw.url}/predict", timeout=5).status_code == 200


# --- hole 3: a body that stalls, a client that does not read, the cap and readiness ---------


@pytest.mark.timeout(60)
def test_S6_hole_3_a_stalled_request_body_gets_408_and_aborts_the_apps_request(
    app_server: AppServer, runwarden
):
    """S6 (hole 3, nginx's client_body_timeout): with --client-body-timeout-seconds 1, a body
    that stops after 10 of its 100 bytes is answered 408 within a few seconds, and the
    app's request is aborted (it never takes the 10 bytes as the whole body)."""
    rw = runwarden(app_server.url, "--no-call-regularly", "--client-body-timeout-seconds", "1")
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        started = time.monotonic()
        poll(lambda: app_server.state()["received"] == 1)
        answer, _ = _read_to_end(sock, timeout=10)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 0.5 < took < 6, f"408 after {took:.1f} s, timeout 1 s"
    poll(lambda: app_server.state().get("upload_aborted") == 1, timeout=5)
    assert app_server.state()["uploaded"] == 0  # no upload ended as complete
    poll(lambda: rw.status()["in_flight"] == 0, timeout=5)


@pytest.mark.timeout(60)
def test_S6_hole_3_a_client_that_does_not_read_is_disconnected_at_the_send_timeout(
    app_server: AppServer, runwarden
):
    """S6 (hole 3, nginx's send_timeout): with --send-timeout-seconds 1, a client that asks
    for 50 MB and reads nothing is disconnected: runwarden's in-flight count goes back to 0,
    and reading the socket afterwards finds what was buffered, then the end (EOF or reset),
    not the rest of the 50 MB."""
    rw = runwarden(app_server.url, "--no-call-regularly", "--send-timeout-seconds", "1")
    size = 50_000_000
    with _small_window(rw.port) as sock:
        sock.sendall(b"GET /download?size=%d&length=1 HTTP/1.1\r\nHost: x\r\n\r\n" % size)
        poll(lambda: rw.status()["in_flight"] == 1)
        started = time.monotonic()
        poll(lambda: rw.status()["in_flight"] == 0, timeout=15)
        took = time.monotonic() - started
        data, end = _read_to_end(sock, timeout=10)
    assert end in ("eof", "reset"), f"the connection is still open after {len(data)} bytes"
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert len(data) < size // 2, f"{len(data)} bytes read: runwarden did not cut the client"
    assert took < 10, f"disconnected {took:.1f} s after the request, send timeout 1 s"
    assert rw.proc.poll() is None
    assert httpx.get(f"{rw.url}/echo/after", timeout=5).status_code == 200


@pytest.mark.timeout(60)
def test_S6_hole_3_an_http2_client_that_opens_no_window_is_disconnected_at_the_send_timeout(
    app_server: AppServer, runwarden
):
    """S6 (hole 3 on HTTP/2): a client that sets its streams' flow-control window to 0 and
    never opens it writes nothing to block on, yet holds its response, and with it an app
    connection. With --send-timeout-seconds 1 and one app connection at a time, its
    connection is closed at the send timeout and the next client's request is answered."""
    rw = runwarden(
        app_server.url,
        "--no-call-regularly",
        "--send-timeout-seconds",
        "1",
        "--max-app-connections",
        "1",
    )
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    headers = [(":method", "GET"), (":path", "/download?size=1000000&length=1"),
               (":scheme", "http"), (":authority", "x")]  # fmt: skip
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        conn.send_headers(1, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        poll(lambda: rw.status()["in_flight"] == 1)
        started = time.monotonic()
        answer = httpx.get(f"{rw.url}/echo/next", timeout=30)
        took = time.monotonic() - started
        received, end = _read_to_end(sock, timeout=10)
    assert answer.status_code == 200, answer.text
    assert took < 10, f"the next request waited {took:.1f} s, send timeout 1 s"
    assert end in ("eof", "reset"), "the stalled client's connection is still open"
    events = conn.receive_data(received)
    assert not any(isinstance(e, h2.events.DataReceived) for e in events), events
    assert rw.proc.poll() is None


def _fill_the_cap(rw, app_server: AppServer, count: int) -> list[socket.socket]:  # type: ignore[no-untyped-def]
    """`count` connections, each with a request the app holds for 5 s."""
    socks = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", rw.port), timeout=5)
        sock.sendall(b"GET /hold?seconds=5 HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(sock)
    poll(lambda: app_server.state()["holding"] == count)
    return socks


def _refused_at_the_cap(port: int) -> bytes:
    answer = raw_exchange(port, b"GET /echo/over-the-cap HTTP/1.1\r\nHost: x\r\n\r\n")
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 503"), answer[:300]
    assert b"\r\nretry-after: 1" in head, head
    return head


@pytest.mark.timeout(60)
def test_A_hole_3_readyz_stays_200_while_the_cap_refuses_clients(app_server: AppServer, runwarden):
    """A/S6 (hole 3, decided and documented in rust/proxy/admin.rs): while the proxy port
    refuses new clients at its connection cap (503, Retry-After), /readyz stays 200: the app
    is healthy, and failing readiness would let one flood take every runner out at once."""
    rw = runwarden(app_server.url, "--max-connections", "2", wait_ready=True)
    socks = _fill_the_cap(rw, app_server, 2)
    try:
        _refused_at_the_cap(rw.port)
        assert httpx.get(f"{rw.admin_url}/readyz", timeout=5).status_code == 200
        _refused_at_the_cap(rw.port)
        assert httpx.get(f"{rw.admin_url}/readyz", timeout=5).status_code == 200
        assert rw.status()["state"] == "ready"
    finally:
        for sock in socks:
            sock.close()
    assert "/echo/over-the-cap" not in app_server.state().get("echo_paths", [])  # type: ignore[operator]


# --- hole 4: a client that does not read is not the app's stall -----------------------------


@pytest.mark.timeout(60)
def test_H9_hole_4_a_client_that_does_not_read_does_not_stall_the_runner(
    app_server: AppServer, runwarden
):
    """H9 (hole 4): with --stall-seconds 1, a 50 MB download whose client (4 KiB receive
    buffer) reads nothing for 4 s moves no byte, but waits on its client, not on the app:
    the runner stays ready and runwarden does not exit (the old data plane exited 14 as
    `stalled`). An app that stops moving bytes still stalls (test_replace.py)."""
    rw = runwarden(app_server.url, "--stall-seconds", "1", wait_ready=True)
    with _small_window(rw.port) as sock:
        sock.sendall(b"GET /download?size=50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        poll(lambda: rw.status()["in_flight"] == 1)
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            status = rw.status()
            assert status["state"] == "ready", (status["reason"], status["detail"])
            assert status["in_flight"] == 1  # still waiting on its client all along
            assert rw.proc.poll() is None
            time.sleep(0.1)
    assert rw.proc.poll() is None
    assert rw.status()["state"] == "ready"
    assert f"code {exit_codes.BY_REASON['stalled']}" not in rw.log()


# --- hole 5: HTTP/1.0 with a chunked body ----------------------------------------------------


@pytest.mark.timeout(60)
def test_S5_hole_5_http_1_0_with_a_chunked_body_is_refused_and_closed(
    app_server: AppServer, runwarden
):
    """S5 (hole 5): an HTTP/1.0 request with Transfer-Encoding: chunked (which HTTP/1.0 does
    not have) and Connection: keep-alive is refused with 400, as nginx does, and its
    connection closed: the request that follows it on that connection never reaches the
    app, nor does the refused one."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    attack = (
        b"POST /echo/x HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(attack)
        answer, end = _read_to_end(sock, timeout=5)
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:300]
    assert len(re.findall(rb"HTTP/1\.[01] \d{3} ", answer)) == 1, answer
    assert end in ("eof", "reset"), "the connection was kept open after the refusal"
    assert app_server.state().get("echo_paths", []) == []
    assert httpx.get(f"{rw.url}/echo/ok", timeout=5).status_code == 200
    assert app_server.state()["echo_paths"] == ["/echo/ok"]


# --- hole 6: the head limit is one head's, not one read's ------------------------------------

PIPELINED = b"GET /echo/p HTTP/1.1\r\nHost: x\r\n\r\n"
STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) ")


@pytest.mark.timeout(90)
def test_S6_hole_6_ten_thousand_pipelined_requests_in_one_write_are_all_answered(
    app_server: AppServer, runwarden
):
    """S6 (hole 6): 10,000 small pipelined requests in one write (~370 KB, far over the
    64 KiB head limit) are all answered 200: the head limit applies to one head, not to
    what one read brings (the old data plane answered one 200, then 431)."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    count = 10_000
    statuses: dict[bytes, int] = {}
    with socket.create_connection(("127.0.0.1", rw.port), timeout=10) as sock:
        # Written from a thread while this one reads: the answers must not wait on the write.
        writer = threading.Thread(target=sock.sendall, args=(PIPELINED * count,), daemon=True)
        writer.start()
        tail = b""
        answered = 0
        deadline = time.monotonic() + 60
        while answered < count and time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 20)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data = tail + chunk
            # Status lines wholly inside `data`; a line cut at the end is kept for the next read.
            cut = max(0, len(data) - 15)
            for match in STATUS_LINE.finditer(data):
                if match.start() >= cut:
                    break
                statuses[match.group(1)] = statuses.get(match.group(1), 0) + 1
                answered += 1
            tail = data[cut:]
        writer.join(timeout=10)
    assert statuses == {b"200": count}, statuses
    assert len(app_server.state()["echo_paths"]) == count  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_S6_hole_6_a_head_split_after_a_large_body_is_answered(app_server: AppServer, runwarden):
    """S6 (hole 6): a 100 KB body followed, in the same write, by the first half of the
    next request's head, the rest 0.3 s later: both requests are answered 200 (the old data
    plane answered the second 431, counting the body's bytes against the head limit)."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    body = b"b" * 100_000
    first = b"POST /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    second = b"GET /echo/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    half = len(second) // 2
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(first + second[:half])
        time.sleep(0.3)  # the split itself, not a wait for anything
        sock.sendall(second[half:])
        answer, end = _read_to_end(sock, timeout=10)
    assert STATUS_LINE.findall(answer) == [b"200", b"200"], answer[:500]
    assert end == "eof"
    assert app_server.state()["echo_paths"] == ["/echo/a", "/echo/b"]


# --- hole 7: a Host with a space; clients over the cap ---------------------------------------


@pytest.mark.timeout(60)
def test_S3_hole_7_a_host_with_a_space_is_refused(app_server: AppServer, runwarden):
    """S3 (hole 7, RFC 9112 3.2): `Host: good.example evil` is not a host: 400, and the
    request never reaches the app."""
    rw = runwarden(app_server.url, "--no-call-regularly")
    answer = raw_exchange(rw.port, b"GET /echo/h HTTP/1.1\r\nHost: good.example evil\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert app_server.state()["received"] == 0
    control = raw_exchange(rw.port, b"GET /echo/h HTTP/1.1\r\nHost: good.example\r\n\r\n")
    assert control.startswith(b"HTTP/1.1 200"), control[:200]
    assert app_server.state()["echo_paths"] == ["/echo/h"]


@pytest.mark.timeout(60)
def test_S6_hole_7_a_client_over_the_connection_cap_gets_503_with_retry_after(
    app_server: AppServer, runwarden
):
    """S6 (hole 7): with --max-connections 4 and 4 connections each being answered (the app
    holds their requests), a 5th client is told to retry, `HTTP/1.1 503` with
    `Retry-After: 1`, not reset; its request never reaches the app, and once a slot frees a
    new client is served."""
    rw = runwarden(app_server.url, "--no-call-regularly", "--max-connections", "4")
    socks = _fill_the_cap(rw, app_server, 4)
    try:
        _refused_at_the_cap(rw.port)
        assert "/echo/over-the-cap" not in app_server.state().get("echo_paths", [])  # type: ignore[operator]
        for sock in socks:
            sock.close()
        poll(lambda: rw.status()["connections"]["open"] == 0)  # type: ignore[index]
        assert httpx.get(f"{rw.url}/echo/after", timeout=5).status_code == 200
    finally:
        for sock in socks:
            sock.close()
    assert rw.status()["connections"]["refused"] >= 1  # type: ignore[index]
    assert rw.proc.poll() is None
