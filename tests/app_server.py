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
from starlette.requests import ClientDisconnect, Request
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


# --- routes for the proxy tests (S1-S4): streaming both ways, header echo, disconnects ---
CHUNK = b"x" * 65536
STATE.update({"disconnected": 0, "holding": 0, "uploaded": 0})


async def download(request: Request) -> Response:
    """`size` bytes of b"x", streamed in 64 KiB chunks (S1)."""
    from starlette.responses import StreamingResponse

    size = int(request.query_params.get("size", "0"))

    async def body():  # type: ignore[no-untyped-def]
        left = size
        while left > 0:
            chunk = CHUNK if left >= len(CHUNK) else CHUNK[:left]
            left -= len(chunk)
            yield chunk

    headers = {"content-length": str(size)} if request.query_params.get("length") else {}
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


async def upload(request: Request) -> Response:
    """Counts the bytes of a streamed request body without keeping them (S1)."""
    STATE["received"] = int(STATE["received"]) + 1  # type: ignore[call-overload]
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
    except ClientDisconnect:
        # The body was aborted, not ended: the app never takes a truncated body as whole.
        STATE["upload_aborted"] = int(STATE.get("upload_aborted", 0)) + 1  # type: ignore[call-overload]
        raise
    STATE["uploaded"] = total
    return JSONResponse({"received_bytes": total})


async def sse(request: Request) -> Response:
    """`events` server-sent events, one every `interval` seconds."""
    from starlette.responses import StreamingResponse

    events = int(request.query_params.get("events", "5"))
    interval = float(request.query_params.get("interval", "0.2"))

    async def body():  # type: ignore[no-untyped-def]
        for i in range(events):
            yield f"data: {i}\n\n".encode()
            await asyncio.sleep(interval)

    headers = {"x-fal-runner-health-check": "1"} if request.query_params.get("check_header") else {}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


async def echo(request: Request) -> Response:
    """What reached the app: method, path, query, raw headers, body (S2, S4)."""
    STATE["received"] = int(STATE["received"]) + 1  # type: ignore[call-overload]
    STATE.setdefault("echo_paths", []).append(request.url.path)  # type: ignore[attr-defined]
    body = await request.body()
    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]]
    status = int(request.query_params.get("status", "200"))
    extra = {}
    for pair in request.query_params.getlist("set"):  # set=name:value response headers
        name, _, value = pair.partition(":")
        extra[name] = value
    response = JSONResponse(
        {
            "method": request.method,
            "path": request.url.path,
            "raw_path": request.scope.get("raw_path", b"").decode("latin-1"),
            "query": request.scope["query_string"].decode("latin-1"),
            "headers": headers,
            "body": body.decode("latin-1"),
            "client": request.client.host if request.client else None,
        },
        status_code=status,
    )
    for name, value in extra.items():
        response.headers.append(name, value)
    return response


async def hold(request: Request) -> Response:
    """Holds the request open for `seconds`, counting clients that went away (S3)."""
    STATE["received"] = int(STATE["received"]) + 1  # type: ignore[call-overload]
    STATE["holding"] = int(STATE["holding"]) + 1  # type: ignore[call-overload]
    deadline = asyncio.get_running_loop().time() + float(request.query_params.get("seconds", "5"))
    try:
        while asyncio.get_running_loop().time() < deadline:
            if await request.is_disconnected():
                STATE["disconnected"] = int(STATE["disconnected"]) + 1  # type: ignore[call-overload]
                return Response(status_code=499)
            await asyncio.sleep(0.02)
    finally:
        STATE["holding"] = int(STATE["holding"]) - 1  # type: ignore[call-overload]
    return JSONResponse({"held": True})


async def counted_download(request: Request) -> Response:
    """As /download, counting the requests that reached the app (`downloads`): a client that
    pipelines and never reads must not get every request it sent run (S1, S6)."""
    STATE["downloads"] = int(STATE.get("downloads", 0)) + 1  # type: ignore[call-overload]
    return await download(request)


routes = [
    Route("/health", health, methods=["GET", "POST"]),
    Route("/_control/health", control_health, methods=["POST"]),
    Route("/_control/state", control_state),
    Route("/predict", predict, methods=["GET", "POST"]),
    Route("/download", download, methods=["GET", "HEAD"]),
    Route("/upload", upload, methods=["POST", "PUT"]),
    Route("/sse", sse),
    Route("/echo/{rest:path}", echo, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
    Route("/hold", hold),
    Route("/counted/download", counted_download, methods=["GET"]),
]

app = Starlette(routes=routes)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
