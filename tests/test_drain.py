"""Draining and exit (SPEC D1, D2, D4, A)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import httpx
from conftest import AppServer
from runwarden import exit_codes


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` (a quick blocking call) without starving the test's own requests."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_D1_D2_D4_drain_under_load_on_503(app_server: AppServer, runwarden):
    """D1/D2/D4/R1: 50 slow requests in flight when the app answers one request 503: all 50
    complete with the app's answer; every request after the verdict gets 503 + Retry-After +
    the reason header and never reaches the app; the exit code is app_503's."""
    rw = runwarden(app_server.url, "--drain-timeout-seconds", "20", wait_ready=True)

    async def scenario() -> tuple[list[httpx.Response], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=rw.url, limits=limits, timeout=30) as client:
            slow = [
                asyncio.ensure_future(client.get("/predict", params={"latency": "3"}))
                for _ in range(50)
            ]
            await until(lambda: app_server.state()["received"] == 50)
            verdict = await client.get("/predict", params={"status": "503"})
            assert verdict.status_code == 503
            assert verdict.json() == {"ok": False, "latency": 0.0}  # the app's own answer
            after = [await client.get("/predict") for _ in range(10)]
            after += await asyncio.gather(*(client.post("/predict") for _ in range(10)))
            # Readiness failed at once, liveness too (replacement, not a clean stop).
            assert (await client.get(f"{rw.admin_url}/readyz")).status_code == 503
            assert (await client.get(f"{rw.admin_url}/livez")).status_code == 503
            assert rw.status()["state"] == "replacing"
            return list(await asyncio.gather(*slow)), after

    slow, after = asyncio.run(scenario())
    assert [r.status_code for r in slow] == [200] * 50
    assert all(r.json() == {"ok": True, "latency": 3.0} for r in slow)
    for response in after:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-runwarden-draining"] == "app_503"
        assert response.json()["reason"] == "app_503"
    assert rw.wait_exit() == exit_codes.BY_REASON["app_503"]


def test_D2_streams_keep_streaming_while_draining(app_server: AppServer, runwarden):
    """D2: a server-sent-events stream in flight when replacement starts runs to its end."""
    rw = runwarden(app_server.url, wait_ready=True)
    events = []
    with httpx.stream("GET", f"{rw.url}/sse", params={"events": "8", "interval": "0.1"}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(line)
                if len(events) == 2:
                    assert (
                        httpx.get(f"{rw.url}/predict", params={"status": "503"}).status_code == 503
                    )
    assert events == [f"data: {i}" for i in range(8)]
    assert rw.wait_exit() == exit_codes.BY_REASON["app_503"]


def test_D2_drain_timeout_bounds_the_wait(app_server: AppServer, runwarden):
    """D2: a request that outlives drain_timeout_seconds does not hold the exit."""
    rw = runwarden(app_server.url, "--drain-timeout-seconds", "0.5", wait_ready=True)

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=rw.url, timeout=30) as client:
            slow = asyncio.ensure_future(client.get("/predict", params={"latency": "30"}))
            await until(lambda: app_server.state()["received"] == 1)
            started = time.monotonic()
            assert (await client.get("/predict", params={"status": "503"})).status_code == 503
            code = await asyncio.to_thread(rw.wait_exit, 10)
            assert code == exit_codes.BY_REASON["app_503"]
            assert time.monotonic() - started < 5
            slow.cancel()

    asyncio.run(scenario())
    assert "drain ended with 1 request(s) still in flight" in rw.log()


def test_D4_sigterm_is_a_clean_stop_after_in_flight_requests_finish(
    app_server: AppServer, runwarden
):
    """D4/D1: SIGTERM drains (new requests 503 with the reason `shutdown`), lets the
    in-flight request finish, and exits 0 with one log line saying why."""
    rw = runwarden(app_server.url, wait_ready=True)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=rw.url, timeout=30) as client:
            slow = asyncio.ensure_future(client.get("/predict", params={"latency": "1.5"}))
            await until(lambda: app_server.state()["received"] == 1)
            rw.proc.send_signal(signal.SIGTERM)
            await until(lambda: httpx.get(f"{rw.admin_url}/readyz").status_code == 503)
            refused = await client.get("/predict")
            return await slow, refused

    done, refused = asyncio.run(scenario())
    assert done.status_code == 200
    assert refused.status_code == 503
    assert refused.headers["x-runwarden-draining"] == "shutdown"
    assert rw.wait_exit() == exit_codes.CLEAN
    assert app_server.state()["received"] == 1
    assert "exiting with code 0 (shutdown): received SIGTERM" in rw.log()


def test_D2_a_stop_signal_during_a_replacement_drain_does_not_cut_requests(
    app_server: AppServer, runwarden
):
    """D2/D4: the orchestrator's SIGTERM, arriving while a replacement drains, lets in-flight
    requests finish; the exit code stays the first reason's. Only a second signal hurries."""
    rw = runwarden(app_server.url, "--drain-timeout-seconds", "20", wait_ready=True)

    async def scenario() -> httpx.Response:
        async with httpx.AsyncClient(base_url=rw.url, timeout=30) as client:
            slow = asyncio.ensure_future(client.get("/predict", params={"latency": "2"}))
            await until(lambda: app_server.state()["received"] == 1)
            assert (await client.get("/predict", params={"status": "503"})).status_code == 503
            rw.proc.send_signal(signal.SIGTERM)
            await until(lambda: "received SIGTERM while draining (app_503)" in rw.log())
            return await slow

    slow = asyncio.run(scenario())
    assert slow.status_code == 200 and slow.json() == {"ok": True, "latency": 2.0}
    assert rw.wait_exit() == exit_codes.BY_REASON["app_503"]


def test_the_outcome_that_caused_a_verdict_is_heard_before_the_verdict(
    app_server: AppServer,
) -> None:
    """Listeners (and so the log) hear events in the order they happened: the failed check,
    then the replacement it caused (issue 17). D1 does not depend on it: the core refuses
    new requests from the verdict on by itself (test_drain's black-box tests)."""
    from runwarden import HealthSettings, Warden

    app_server.set_health("fail500")
    order: list[str] = []

    async def scenario() -> None:
        settings = HealthSettings(
            start_period_seconds=0, period_seconds=0.1, timeout_seconds=1, failure_threshold=1
        )
        warden = Warden(settings, app_server.url)
        warden.on_verdict(lambda verdict: order.append(f"replace:{verdict.reason}"))
        warden.on_outcome(lambda outcome: order.append(f"outcome:{outcome.counted}"))
        await warden.start()
        await warden.decided()
        await warden.stop()

    asyncio.run(scenario())
    counted = order.index("outcome:counted")
    assert order.index("replace:health_check") == counted + 1, order


class _Tally:
    """What a load of raw clients saw: requests written, answers by status, and requests
    written that never got an answer (the connection closed or reset first)."""

    def __init__(self) -> None:
        self.written = 0
        self.lost = 0
        self.statuses: dict[int, int] = {}
        self.unmarked_503 = 0


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers


async def _client(port: int, target: bytes, tally: _Tally, until: Callable[[], bool]) -> None:
    """Keep one request in flight; reconnect when an answer says `Connection: close`."""
    request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    writer: asyncio.StreamWriter | None = None
    while not until():
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:  # nothing listens: nothing was sent
                await asyncio.sleep(0.005)
                continue
        try:
            writer.write(request)
            await writer.drain()
        except OSError:
            writer = None
            continue
        tally.written += 1
        try:
            status, headers = await _answer(reader)
        except (OSError, asyncio.IncompleteReadError):
            tally.lost += 1
            writer.close()
            writer = None
            continue
        tally.statuses[status] = tally.statuses.get(status, 0) + 1
        if status == 503 and b"retry-after" not in headers:
            tally.unmarked_503 += 1
        if headers.get(b"connection", b"").lower() == b"close":
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


def test_D6_front_door_5_no_request_is_lost_in_a_replacement_drain(
    app_server: AppServer, runwarden
):
    """D6 (issue 9, item 5): 32 clients keep a 50 ms request each in flight (keep-alive,
    reconnecting when told to close) when the app answers one request 503. Every request
    a client wrote gets an answer, the app's or the drain's 503 with Retry-After; none is
    written and then reset; runwarden exits with app_503's code once they are done."""
    rw = runwarden(app_server.url, "--drain-timeout-seconds", "10", wait_ready=True)
    tally = _Tally()

    async def scenario() -> None:
        stop_at = time.monotonic() + 30
        done = lambda: rw.proc.poll() is not None or time.monotonic() > stop_at  # noqa: E731
        clients = [
            asyncio.ensure_future(_client(rw.port, b"/predict?latency=0.05", tally, done))
            for _ in range(32)
        ]
        await until(lambda: tally.written > 2000)
        async with httpx.AsyncClient(base_url=rw.url) as client:
            assert (await client.get("/predict", params={"status": "503"})).status_code == 503
        await asyncio.gather(*clients)

    asyncio.run(scenario())
    assert rw.wait_exit() == exit_codes.BY_REASON["app_503"]
    assert tally.lost == 0, f"{tally.lost} of {tally.written} requests got no answer"
    assert set(tally.statuses) <= {200, 503}, tally.statuses
    assert tally.statuses.get(200, 0) >= 2000 and tally.statuses.get(503, 0) > 0
    assert tally.unmarked_503 == 0
    assert tally.written < 50_000, tally.written  # bounded


def test_D6_front_door_9_requests_in_flight_at_the_drain_timeout_get_a_503_to_retry(
    app_server: AppServer, runwarden
):
    """D6 (issue 9, item 9): requests the drain timeout cuts short get a 503 with
    Retry-After and the drain's reason (a gateway retries them elsewhere), not a 500 and
    a traceback; one log line says how many."""
    rw = runwarden(app_server.url, "--drain-timeout-seconds", "0.5", wait_ready=True)

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=rw.url, timeout=30) as client:
            slow = [
                asyncio.ensure_future(client.get("/predict", params={"latency": "30"}))
                for _ in range(3)
            ]
            await until(lambda: app_server.state()["received"] == 3)
            assert (await client.get("/predict", params={"status": "503"})).status_code == 503
            return list(await asyncio.gather(*slow))

    for response in asyncio.run(scenario()):
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-runwarden-draining"] == "app_503"
        assert response.headers["connection"] == "close"
    assert rw.wait_exit() == exit_codes.BY_REASON["app_503"]
    log = rw.log()
    assert "Traceback" not in log
    assert log.count("drain ended with 3 request(s) still in flight: 3 answered 503") == 1


def test_D2_http2_streams_at_the_drain_deadline_are_reset_under_a_goaway(
    app_server: AppServer, runwarden
):
    """D2 (issue 22): an HTTP/2 response still streaming at the drain's deadline is ended
    with `RST_STREAM`, and its connection says `GOAWAY` before it closes: a client sees a
    protocol error it can retry on, not a bare TCP close. The server's frames are read raw
    (type by type), as a client library would stop at the `GOAWAY`."""
    import socket
    import struct

    import h2.config
    import h2.connection

    rw = runwarden(app_server.url, "--drain-timeout-seconds", "1", wait_ready=True)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/sse?events=200&interval=0.05"),
                          (":scheme", "http"), (":authority", "x")], end_stream=True)  # fmt: skip
    received = b""
    with socket.create_connection(("127.0.0.1", rw.port), timeout=10) as sock:
        sock.sendall(conn.data_to_send())
        while b"data: 0" not in received:
            received += sock.recv(65536)
        rw.proc.send_signal(signal.SIGTERM)  # the drain begins mid-stream
        while data := sock.recv(65536):
            received += data
    frames = []  # (type, flags, stream)
    at = 0
    while at + 9 <= len(received):
        length = int.from_bytes(received[at : at + 3], "big")
        kind, flags, stream = struct.unpack(">BBI", received[at + 3 : at + 9])
        frames.append((kind, flags, stream & 0x7FFFFFFF))
        at += 9 + length
    DATA, RST_STREAM, GOAWAY, END_STREAM = 0x0, 0x3, 0x7, 0x1  # RFC 9113 6
    assert (RST_STREAM, 0, 1) in frames, frames
    assert any(kind == GOAWAY for kind, _, _ in frames), frames
    assert not any(k == DATA and f & END_STREAM and s == 1 for k, f, s in frames), (
        "the stream ran to its end: nothing was cut"
    )
    assert rw.wait_exit() == exit_codes.CLEAN
