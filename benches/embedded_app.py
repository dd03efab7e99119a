"""The Starlette model server of the embedded benchmark (SPEC E): one app, served bare and
with runwarden inside it, so the two differ by the middleware alone.

    uvicorn benches.embedded_app:bare      # the app alone
    uvicorn benches.embedded_app:guarded   # the same app, Runwarden(app)

GET /json answers 1 KiB of JSON (the proxy benchmark's payload); GET /health answers 200.
"""

from __future__ import annotations

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


bare = Starlette(routes=[Route("/json", payload), Route("/health", health)])
guarded = Runwarden(bare)
