"""The demo model server: plain Starlette, no GPU, no model weights.

`/predict?prompt=...&latency=0.05&status=200` answers a fake prediction after `latency`
seconds with `status`; `/stream?tokens=20&interval=0.02` sends one server-sent event per
token; `/health` passes until `POST /health/fail` (to watch runwarden replace it).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

WORDS = "the quick brown fox jumps over the lazy dog while runwarden keeps watch".split()
STATE = {"healthy": True}


def _float(request: Request, name: str, default: float, high: float) -> float:
    try:
        value = float(request.query_params.get(name, default))
    except ValueError:
        return default
    return min(max(value, 0.0), high) if math.isfinite(value) else default


async def predict(request: Request) -> Response:
    latency = _float(request, "latency", 0.05, 60.0)
    status = int(_float(request, "status", 200, 599))
    if status < 100:
        status = 200
    prompt = request.query_params.get("prompt", "")
    if request.method == "POST":
        prompt = (await request.body()).decode(errors="replace")[:1000] or prompt
    await asyncio.sleep(latency)
    words = [WORDS[(len(prompt) + i) % len(WORDS)] for i in range(8)]
    return JSONResponse({"prompt": prompt, "completion": " ".join(words)}, status_code=status)


async def stream(request: Request) -> Response:
    tokens = int(_float(request, "tokens", 20, 10_000))
    interval = _float(request, "interval", 0.02, 10.0)

    async def events() -> AsyncIterator[bytes]:
        for i in range(tokens):
            yield f"data: {json.dumps({'index': i, 'token': WORDS[i % len(WORDS)]})}\n\n".encode()
            await asyncio.sleep(interval)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def health(request: Request) -> Response:
    if not STATE["healthy"]:
        return JSONResponse({"ok": False}, status_code=500)
    return JSONResponse({"ok": True})


async def fail_health(request: Request) -> Response:
    STATE["healthy"] = False
    return JSONResponse({"ok": False, "note": "health checks will fail from now on"})


app = Starlette(
    routes=[
        Route("/predict", predict, methods=["GET", "POST"]),
        Route("/stream", stream),
        Route("/health", health, methods=["GET", "POST"]),
        Route("/health/fail", fail_health, methods=["POST"]),
    ]
)
