"""A model server for the door's tests (SPEC Q): it records every request and check it serves,
when each started and ended, how many were at it at once, and which were aborted by their
client (runwarden) before they ended. Raw ASGI on uvicorn, so that an abort is seen the
moment the connection closes.

Routes:
- `GET /work?ms=N&tag=T`: N ms of work, then 200 with the tag.
- `GET /stream?ms=N&tag=T`: a chunk at once, another after N ms.
- any health path (`/health`, `/health_generate`, `/v2/health/ready`): a check, taking
  `check_ms` (set through `/_control`), 200.
- `POST /_control?check_ms=N`: set the check's duration; `GET /_control/state`: the record.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import parse_qs

import uvicorn

HEALTH_PATHS = {"/health", "/health_generate", "/v2/health/ready"}

state: dict[str, Any] = {"check_ms": 0, "active": 0, "max_active": 0, "events": []}
"""`active` and `max_active` count requests, not checks (they never pass the door)."""


async def _body(send: Any, status: int, payload: object) -> None:
    data = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _work(receive: Any, seconds: float) -> bool:
    """Sleep `seconds`; False if the client went away first."""

    async def gone() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    sleeper = asyncio.ensure_future(asyncio.sleep(seconds))
    watcher = asyncio.ensure_future(gone())
    done, _ = await asyncio.wait({sleeper, watcher}, return_when=asyncio.FIRST_COMPLETED)
    for task in (sleeper, watcher):
        task.cancel()
    return sleeper in done


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/_control/state":
        await _body(send, 200, {k: v for k, v in state.items()})
        return
    if path == "/_control":
        state["check_ms"] = int(query.get("check_ms", state["check_ms"]))
        if "reset" in query:
            state.update(active=0, max_active=0, events=[])
        await _body(send, 200, {"ok": True})
        return
    kind = "check" if path in HEALTH_PATHS else "request"
    seconds = (state["check_ms"] if kind == "check" else int(query.get("ms", "0"))) / 1000
    event: dict[str, Any] = {
        "kind": kind,
        "path": path,
        "tag": query.get("tag", ""),
        "start": time.monotonic(),
        "end": None,
        "aborted": False,
    }
    state["events"].append(event)
    counted = kind == "request"
    state["active"] += counted
    state["max_active"] = max(state["max_active"], state["active"])
    try:
        if path == "/stream":
            headers = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"first\n", "more_body": True})
            if not await _work(receive, seconds):
                event["aborted"] = True
                return
            await send({"type": "http.response.body", "body": b"last\n"})
            return
        if not await _work(receive, seconds):
            event["aborted"] = True
            return
        await _body(send, 200, {"tag": event["tag"]})
    finally:
        event["end"] = time.monotonic()
        state["active"] -= counted


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
