"""Raw HTTP/1 over a socket, for probing a front door byte by byte: what a hostile or broken
client sends, read back exactly as the server wrote it (no client library normalises either
side); and one HTTP/2 request sent exactly as given (the `h2` package, from the test extra).
Used by runwarden's tests and its front-door benchmark alike."""

from __future__ import annotations

import contextlib
import socket
from typing import Any


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes to 127.0.0.1:`port` and read until the peer closes, or goes quiet for
    0.3 s once a head has arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks: list[bytes] = []
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if sock.gettimeout() != 0.3 and b"\r\n\r\n" in b"".join(chunks):
                    sock.settimeout(0.3)  # the head is in: what follows comes at once
    return b"".join(chunks)


def closed_by_peer(sock: socket.socket, answer: bytes = b"HTTP/1.1 4") -> bool:
    """The server has closed `sock` (or reset it, or answered it with `answer`, a status
    line's start, before closing): a connection that never finished a request."""
    sock.setblocking(False)
    try:
        data = sock.recv(4096)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return data == b"" or data.startswith(answer)


def h2_exchange(
    port: int, headers: list[tuple[str, str]], body: bytes | None = None, timeout: float = 5.0
) -> tuple[int, bytes, str]:
    """One HTTP/2 request (prior knowledge) to 127.0.0.1:`port`, its fields sent as given
    (none checked, joined or normalised): (status, or 0 if none came; the body; how the
    stream ended: "ended", "reset <code>" or "closed")."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    conn: Any = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    )
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=body is None)
    if body is not None:
        conn.send_data(1, body, end_stream=True)
    status, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(conn.data_to_send())
        with contextlib.suppress(OSError, h2.exceptions.ProtocolError):
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    elif isinstance(event, h2.events.DataReceived):
                        answer += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length, 1)
                    elif isinstance(event, h2.events.StreamEnded):
                        return status, answer, "ended"
                    elif isinstance(event, h2.events.StreamReset):
                        return status, answer, f"reset {event.error_code!r}"
                sock.sendall(conn.data_to_send())
    return status, answer, "closed"
