"""WebSockets through the proxy (SPEC P1, D2, D6): an accepted Upgrade becomes a tunnel that
is in flight while open, keeps serving while the runner drains, and is cut at the drain's
deadline. A realtime app (tests/ws_app.py) behind `runwarden serve`."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest
from conftest import AppServer, poll, serving
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


@pytest.fixture
def ws_app() -> Iterator[AppServer]:
    yield from serving("ws_app.py")


def test_P1_a_websocket_echoes_200_messages_through_the_proxy(ws_app: AppServer, runwarden):
    rw = runwarden(ws_app.url, wait_ready=True)
    with connect(f"ws://127.0.0.1:{rw.port}/echo", open_timeout=5) as ws:
        for i in range(200):
            text = f"message {i} " + "x" * (i * 7)
            ws.send(text)
            assert ws.recv(timeout=5) == text
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=5) == b"\x00\x01binary"
        assert rw.status()["in_flight"] == 1, "an open tunnel is in flight"
    poll(lambda: rw.status()["in_flight"] == 0)
    assert rw.proc.poll() is None


def test_D2_D6_a_websocket_is_served_while_draining_and_cut_at_the_deadline(
    ws_app: AppServer, runwarden
):
    """D2: a clean stop waits for the open tunnel, which keeps echoing while the runner
    drains (new requests are refused meanwhile); D6: at the drain's deadline the tunnel is
    closed, the log says so, and runwarden exits 0."""
    rw = runwarden(ws_app.url, "--drain-timeout-seconds", "2", wait_ready=True)
    with connect(f"ws://127.0.0.1:{rw.port}/echo", open_timeout=5) as ws:
        ws.send("before")
        assert ws.recv(timeout=5) == "before"
        began = time.monotonic()
        rw.proc.send_signal(signal.SIGTERM)
        poll(lambda: rw.status()["state"] == "stopping")
        for i in range(5):  # served during the drain
            ws.send(f"draining {i}")
            assert ws.recv(timeout=5) == f"draining {i}"
        with pytest.raises(ConnectionClosed):
            while True:  # until the deadline closes it
                ws.send("more")
                ws.recv(timeout=5)
                time.sleep(0.05)
        cut_after = time.monotonic() - began
    assert 1.5 <= cut_after < 6, cut_after
    assert rw.wait_exit() == 0
    log = rw.log()
    assert (
        "drain ended with 1 request(s) still in flight: 0 answered 503 with Retry-After, "
        "1 cut mid-response" in log
    ), log
