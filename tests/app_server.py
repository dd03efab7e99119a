"""A small model server for tests, run by uvicorn in its own process.

Its health answer is switched at run time through `POST /_control/health`
(`{"mode": "pass" | "fail500" | "fail503" | "hang"}`), and it counts every
request it receives so a test can prove a request never reached it.
"""

from __future__ import annotations

import asyncio
import os
import sys

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

STATE: dict[str, object] = {"health": "pass", "received": 0, "health_calls": 0}


async def health(request: Request) -> Response:
    STATE["health_calls"] = int(STATE["health_calls"]) + 1  # type: ignore[call-overload]
    mode = STATE["health"]
    if mode == "hang":
        await asyncio.sleep(3600)
    if mode == "fail500":
        return PlainTextResponse("unhealthy", status_code=500)
    if mode == "fail503":
        return PlainTextResponse("unavailable", status_code=503)
    return JSONResponse({"ok": True, "method": request.method})


async def control_health(request: Request) -> Response:
    body = await request.json()
    STATE["health"] = body["mode"]
    return JSONResponse(STATE)


async def control_state(request: Request) -> Response:
    return JSONResponse({**STATE, "pid": os.getpid()})


async def predict(request: Request) -> Response:
    STATE["received"] = int(STATE["received"]) + 1  # type: ignore[call-overload]
    latency = float(request.query_params.get("latency", "0"))
    if latency:
        await asyncio.sleep(latency)
    status = int(request.query_params.get("status", "200"))
    headers = {}
    if request.query_params.get("check_header"):
        headers["x-fal-runner-health-check"] = "1"
    return JSONResponse(
        {"ok": status < 400, "latency": latency}, status_code=status, headers=headers
    )


routes = [
    Route("/health", health, methods=["GET", "POST"]),
    Route("/_control/health", control_health, methods=["POST"]),
    Route("/_control/state", control_state),
    Route("/predict", predict, methods=["GET", "POST"]),
]

app = Starlette(routes=routes)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
