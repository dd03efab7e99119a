"""The admin port (SPEC A): /livez, /readyz, /status, /metrics.

It listens on its own address (loopback by default); the proxy port never routes here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

if TYPE_CHECKING:
    from runwarden.runner import Runner


def runner_state(runner: Runner) -> str:
    """starting (no check passed yet), ready, replacing, or stopping (clean stop)."""
    if runner.drain.replacing:
        return "replacing"
    if runner.drain.reason is not None:
        return "stopping"
    return "ready" if runner.warden.ready else "starting"


def status(runner: Runner) -> dict[str, object]:
    """Everything an operator asks first: state and why, age, settings, recent checks."""
    drain = runner.drain
    supervisor = runner.supervisor
    return {
        "state": runner_state(runner),
        "reason": drain.reason,
        "detail": drain.detail or None,
        "uptime_seconds": round(time.monotonic() - runner.started_at, 3),
        "draining_for_seconds": (
            round(time.monotonic() - drain.started_at, 3) if drain.started_at else None
        ),
        "in_flight": drain.in_flight,
        "app": {
            "url": runner.settings.app_url,
            "supervised": supervisor is not None,
            "command": list(runner.settings.app_command),
            "pid": supervisor.pid if supervisor else None,
            "returncode": supervisor.returncode if supervisor else None,
        },
        "core": runner.warden.core.state(),
        "settings": runner.settings.to_dict(),
        "checks": [outcome.to_dict() for outcome in runner.warden.core.history()],
        "gpu": runner.gpu_status(),
    }


def make_admin_app(runner: Runner) -> Starlette:
    async def livez(request: Request) -> Response:
        if runner.drain.replacing:
            return PlainTextResponse(f"replacing: {runner.drain.reason}\n", status_code=503)
        return PlainTextResponse("ok\n")

    async def readyz(request: Request) -> Response:
        state = runner_state(runner)
        if state == "ready":
            return PlainTextResponse("ready\n")
        reason = runner.drain.reason or "no health check has passed yet"
        return PlainTextResponse(f"{state}: {reason}\n", status_code=503)

    async def status_route(request: Request) -> Response:
        return JSONResponse(status(runner))

    async def metrics(request: Request) -> Response:
        return Response(runner.metrics.render(), media_type=runner.metrics.content_type)

    return Starlette(
        routes=[
            Route("/livez", livez),
            Route("/readyz", readyz),
            Route("/status", status_route),
            Route("/metrics", metrics),
        ]
    )
