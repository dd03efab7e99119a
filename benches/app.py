"""The small app every benchmark talks to: a raw ASGI app under uvicorn (uvloop, httptools),
so the direct figures are a fast Python model server's, not a framework's.

    python -m benches.app PORT

GET /json (1 KiB JSON) · GET /health (answer set by POST /control/health?mode=pass|fail) ·
GET /status?code=N · GET /manual (asks runwarden for a manual check, H6) ·
GET /download?size=N (streamed, 1 MiB chunks) · POST /upload (counts the bytes) ·
GET /sse?n=N&interval=S (events carrying the send time, `time.monotonic_ns()`) ·
GET /hold…?seconds=S (answers after S seconds; any path that starts so, each counted apart) ·
ANY /echo (the head and body length as the app saw them) · GET /control/seen (requests
seen, by path: what the front-door probes of `benches.front_door` read).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import parse_qs

Scope = dict[str, Any]

_PAD = "x" * 1024
JSON_1K = json.dumps({"model": "bench", "tokens": [], "pad": ""}).encode()
JSON_1K = json.dumps({"model": "bench", "tokens": [], "pad": _PAD[: 1024 - len(JSON_1K)]}).encode()
assert len(JSON_1K) == 1024
CHUNK = b"\0" * (1 << 20)
STATE: dict[str, Any] = {"health": "pass", "seen": {}}


async def respond(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    STATE["seen"][path] = STATE["seen"].get(path, 0) + 1
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    json_type = [(b"content-type", b"application/json")]
    if path == "/json":
        await respond(send, 200, JSON_1K, json_type)
    elif path == "/health":
        ok = STATE["health"] == "pass"
        await respond(send, 200 if ok else 500, b'{"ok":%s}' % (b"true" if ok else b"false"), [])
    elif path == "/control/health":
        STATE["health"] = query.get("mode", "pass")
        await respond(send, 200, json.dumps(STATE).encode(), json_type)
    elif path == "/status":
        await respond(send, int(query.get("code", "200")), b"{}", json_type)
    elif path == "/manual":
        await respond(send, 200, b"{}", [*json_type, (b"x-fal-runner-health-check", b"1")])
    elif path == "/download":
        await download(send, int(query.get("size", "0")))
    elif path == "/upload":
        total = await body_length(receive)
        await respond(send, 200, json.dumps({"bytes": total}).encode(), json_type)
    elif path == "/echo":
        total = await body_length(receive)
        head = {
            "method": scope["method"],
            "path": path,
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
            "body_bytes": total,
        }
        await respond(send, 200, json.dumps(head).encode(), json_type)
    elif path == "/control/seen":
        await respond(send, 200, json.dumps(STATE["seen"]).encode(), json_type)
    elif path.startswith("/hold"):
        await asyncio.sleep(float(query.get("seconds", "1")))
        await respond(send, 200, b"{}", json_type)
    elif path == "/sse":
        await events(send, int(query.get("n", "100")), float(query.get("interval", "0.01")))
    else:
        await respond(send, 404, b"not found", [])


async def body_length(receive: Any) -> int:
    """Read the request's whole body; its length in bytes."""
    total = 0
    while True:
        message = await receive()
        total += len(message.get("body", b""))
        if not message.get("more_body"):
            return total


async def download(send: Any, size: int) -> None:
    headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % size)]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    left = size
    while left > 0:
        part = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        left -= len(part)
        await send({"type": "http.response.body", "body": part, "more_body": left > 0})
    if size == 0:
        await send({"type": "http.response.body", "body": b""})


async def events(send: Any, count: int, interval: float) -> None:
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    for _ in range(count):
        await asyncio.sleep(interval)
        line = b"data: %d\n\n" % time.monotonic_ns()
        await send({"type": "http.response.body", "body": line, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    import uvicorn

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
