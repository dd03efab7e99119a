"""A Starlette model server with runwarden inside it (SPEC E), for the embedded tests.

`app` carries `Runwarden` (added as vLLM adds middleware: `add_middleware`, settings from
RUNWARDEN_*); `bare` is the same app without it (for `runwarden run`). Its health route is
marked with `@runwarden.health_check(...)`; `/_control/*` lets a test steer and read it.
With EMBEDDED_TWO_MARKS=1 a second route is marked too (start-up must fail, E3).
"""

from __future__ import annotations

import asyncio
import os
import time

import runwarden
from runwarden.asgi import Runwarden
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

STATE = {"health": "ok", "health_calls": 0, "at_app": 0, "most_at_app": 0, "served": 0}


@runwarden.health_check(runwarden.HealthCheck(failure_threshold=2))
async def health(request: Request) -> Response:
    STATE["health_calls"] += 1
    if STATE["health"] == "fail":
        return PlainTextResponse("sick", status_code=500)
    return PlainTextResponse("ok")


@runwarden.health_check(runwarden.HealthCheck())
async def other_health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def work(request: Request) -> Response:
    """`?status=503`, `?delay=0.5`, `?ask_check=1` (H6: the response carries the header)."""
    STATE["at_app"] += 1
    STATE["most_at_app"] = max(STATE["most_at_app"], STATE["at_app"])
    try:
        body = await request.body()
        await asyncio.sleep(float(request.query_params.get("delay", "0")))
        headers = {}
        if request.query_params.get("ask_check"):
            headers["x-fal-runner-health-check"] = "1"
        status = int(request.query_params.get("status", "200"))
        STATE["served"] += 1
        return JSONResponse({"ok": True, "got": len(body),
                             "headers": [k for k, _ in request.headers.items()]},
                            status_code=status, headers=headers)  # fmt: skip
    finally:
        STATE["at_app"] -= 1


async def crash(request: Request) -> Response:
    """The app raises: the server answers 500."""
    raise RuntimeError("the model fell over")


async def block(request: Request) -> Response:
    """Synchronous code on the loop: nothing else runs meanwhile."""
    time.sleep(float(request.query_params.get("seconds", "3")))  # noqa: ASYNC251 - the point
    return PlainTextResponse("unblocked")


async def control_health(request: Request) -> Response:
    STATE["health"] = (await request.json())["mode"]
    return JSONResponse(STATE)


async def control_state(request: Request) -> Response:
    return JSONResponse(STATE)


routes = [
    Route("/health", health),
    Route("/work", work, methods=["GET", "POST"]),
    Route("/block", block),
    Route("/crash", crash),
    Route("/_control/health", control_health, methods=["POST"]),
    Route("/_control/state", control_state),
]
if os.environ.get("EMBEDDED_TWO_MARKS"):
    routes.append(Route("/ready", other_health))

bare = Starlette(routes=routes)
app = Starlette(routes=routes)
app.add_middleware(Runwarden)
