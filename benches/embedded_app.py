"""The Starlette model server of the embedded benchmark (SPEC E): one app, served bare and
with runwarden inside it, so the two differ by the middleware alone.

    uvicorn benches.embedded_app:bare      # the app alone
    uvicorn benches.embedded_app:guarded   # the same app, Runwarden(app)

and two anchors, the least a Python middleware can be: one that only passes the call on
(`passthrough`), and one that also sees each response's status, as every middleware that
judges answers must, by wrapping `send` (`observer`). `together` serves all four in one
process, each under a path of its own (`/json`, `/g/json`, `/p/json`, `/o/json`), so that a
timed comparison is not also one of two processes' places in memory and on the CPU.

GET /json answers 1 KiB of JSON (the proxy benchmark's payload); GET /health answers 200.
"""

from __future__ import annotations

from typing import Any

from runwarden.asgi import Runwarden
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from benches.app import JSON_1K


async def payload(request: Request) -> Response:
    return Response(JSON_1K, media_type="application/json")


async def health(request: Request) -> Response:
    return PlainTextResponse("ok")


class PassThrough:
    """A pure ASGI middleware that does nothing."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class Observer:
    """A pure ASGI middleware that only reads each response's status from `send`."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.statuses: dict[int, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def observed(message: Any) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                self.statuses[status] = self.statuses.get(status, 0) + 1
            await send(message)

        await self.app(scope, receive, observed)


def starlette(prefix: str = "") -> Starlette:
    """The app, its payload at `prefix`/json."""
    return Starlette(routes=[Route(f"{prefix}/json", payload), Route("/health", health)])


class Together:
    """The four targets in one process, by the first three characters of the path; the
    lifespan goes to the one with runwarden inside."""

    def __init__(self) -> None:
        self.guarded = Runwarden(starlette("/g"))
        self.apps: dict[str, Any] = {
            "/g/": self.guarded,
            "/p/": PassThrough(starlette("/p")),
            "/o/": Observer(starlette("/o")),
        }
        self.bare = starlette()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self.guarded(scope, receive, send)
        await self.apps.get(scope["path"][:3], self.bare)(scope, receive, send)


bare = starlette()
guarded = Runwarden(bare)
passthrough = PassThrough(bare)
observer = Observer(bare)
together = Together()
