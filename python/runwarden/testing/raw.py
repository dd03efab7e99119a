"""Raw HTTP/1 over a socket, for probing a front door byte by byte: what a hostile or broken
client sends, read back exactly as the server wrote it (no client library normalises either
side). Used by runwarden's tests and its front-door benchmark alike."""

from __future__ import annotations

import contextlib
import socket


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
