"""HTTP/2 from clients (SPEC P1, S6): prior knowledge in cleartext on the proxy port, many
streams on one connection, and the rapid-reset attack bounded (CVE-2023-44487)."""

from __future__ import annotations

import asyncio
import socket
import time

import h2.config
import h2.connection
import h2.events
import httpx
import psutil
from conftest import AppServer


def test_P1_http2_prior_knowledge_carries_64_concurrent_streams_on_one_connection(
    app_server: AppServer, runwarden
):
    """P1: an h2c client (prior knowledge) gets 64 concurrent answers over one connection,
    each from the app (HTTP/1.1 behind), in about one request's time."""
    rw = runwarden(app_server.url, wait_ready=True)

    async def scenario() -> tuple[list[httpx.Response], float]:
        async with httpx.AsyncClient(
            http1=False, http2=True, base_url=rw.url, timeout=30,
            limits=httpx.Limits(max_connections=1),
        ) as client:  # fmt: skip
            began = time.monotonic()
            responses = await asyncio.gather(
                *(client.get("/predict", params={"latency": "0.5", "n": i}) for i in range(64))
            )
            return responses, time.monotonic() - began

    responses, took = asyncio.run(scenario())
    assert all(r.status_code == 200 and r.http_version == "HTTP/2" for r in responses)
    assert all(r.json() == {"ok": True, "latency": 0.5} for r in responses)
    assert took < 5, f"64 streams of 0.5 s took {took:.1f} s: they did not run at once"
    assert app_server.state()["received"] == 64


def _rapid_reset(port: int, streams: int) -> str:
    """Open `streams` streams and reset each at once, as CVE-2023-44487's attacker does;
    what the server said at the end (its GOAWAY, or that it closed)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [(":method", "GET"), (":path", "/predict?latency=1"), (":scheme", "http"),
               (":authority", "x")]  # fmt: skip
    ended = "nothing"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        try:
            for i in range(streams):
                stream = 1 + 2 * i
                conn.send_headers(stream, headers, end_stream=True)
                conn.reset_stream(stream)
                sock.sendall(conn.data_to_send())
            sock.settimeout(2)
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        return f"GOAWAY {event.error_code!r}"
        except (OSError, h2.exceptions.ProtocolError) as exc:
            ended = f"closed: {exc!r}"
    return ended


def test_S6_an_http2_rapid_reset_is_bounded_and_replaces_nothing(app_server: AppServer, runwarden):
    """S6 (CVE-2023-44487): a client opening and resetting thousands of streams is cut off
    (GOAWAY) without the app seeing a flood; afterwards a normal request is answered at
    once and the healthy runner is neither replaced nor unready."""
    rw = runwarden(app_server.url, wait_ready=True)
    rss_before = psutil.Process(rw.proc.pid).memory_info().rss
    ended = _rapid_reset(rw.port, 5000)
    assert ended.startswith(("GOAWAY", "closed")), ended
    began = time.monotonic()
    with httpx.Client(http1=False, http2=True, timeout=5) as client:
        response = client.get(f"{rw.url}/predict")
    assert response.status_code == 200 and response.http_version == "HTTP/2"
    assert time.monotonic() - began < 1.0
    assert app_server.state()["received"] < 500, "the resets reached the app as requests"
    status = rw.status()
    assert status["state"] == "ready" and rw.proc.poll() is None
    assert psutil.Process(rw.proc.pid).memory_info().rss - rss_before < 50 * 1024 * 1024
