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


def _ws_frame(payload: bytes) -> bytes:
    """A client's masked text frame (RFC 6455 5.2), for payloads under 126 bytes."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def test_P1_websocket_over_http2_is_tunnelled_to_the_app_as_an_http_1_1_upgrade(
    ws_app: AppServer, runwarden
):
    """Issue 22 (RFC 8441): an HTTP/2 client's extended CONNECT (`:protocol websocket`) on
    a connection whose SETTINGS allow it is answered 200 and tunnelled to the app, which
    sees an HTTP/1.1 WebSocket handshake; messages echo both ways, the tunnel is in flight
    while open, and other streams on the same connection keep working."""
    import socket

    import h2.config
    import h2.connection
    import h2.events
    import h2.settings

    rw = runwarden(ws_app.url, wait_ready=True)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        allowed = None
        while allowed is None:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.RemoteSettingsChanged):
                    setting = event.changed_settings.get(
                        h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL
                    )
                    allowed = bool(setting and setting.new_value)
            sock.sendall(conn.data_to_send())
        assert allowed, "the server's SETTINGS do not allow an extended CONNECT"
        conn.send_headers(1, [(":method", "CONNECT"), (":protocol", "websocket"),
                              (":scheme", "http"), (":path", "/echo"), (":authority", "x"),
                              ("sec-websocket-version", "13")])  # fmt: skip
        sock.sendall(conn.data_to_send())
        status, echoed = None, b""
        messages = [f"message {i}".encode() for i in range(5)]
        while len(echoed) < sum(len(m) + 2 for m in messages):
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                    for message in messages:
                        conn.send_data(1, _ws_frame(message))
                elif isinstance(event, h2.events.DataReceived):
                    echoed += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"the stream was reset: {event.error_code!r}")
            sock.sendall(conn.data_to_send())
        assert status == b"200"
        assert echoed == b"".join(bytes([0x81, len(m)]) + m for m in messages)
        assert rw.status()["in_flight"] == 1, "an open tunnel is in flight"
        conn.end_stream(1)
        sock.sendall(conn.data_to_send())
    poll(lambda: rw.status()["in_flight"] == 0)
    assert rw.proc.poll() is None


def test_S3_a_plain_connect_over_http2_is_still_refused(ws_app: AppServer, runwarden):
    """Issue 22: only `:protocol websocket` opens a tunnel; a plain CONNECT is refused 400."""
    import socket

    import h2.config
    import h2.connection
    import h2.events

    rw = runwarden(ws_app.url, wait_ready=True)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "CONNECT"), (":authority", "app.example:443")])
    status = None
    with socket.create_connection(("127.0.0.1", rw.port), timeout=5) as sock:
        sock.sendall(conn.data_to_send())
        while status is None:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
            sock.sendall(conn.data_to_send())
    assert status == b"400"
