"""A WebSocket model server for tests (a realtime endpoint), in its own process.

    python tests/ws_app.py PORT

`/echo` answers each message with itself; `/health` (plain HTTP) answers 200, as runwarden's
checks ask.
"""

from __future__ import annotations

import asyncio
import http
import sys
from typing import Any

from websockets.asyncio.server import ServerConnection, serve


async def echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        await websocket.send(message)


def health(connection: ServerConnection, request: Any) -> Any:
    if request.path == "/health":
        return connection.respond(http.HTTPStatus.OK, "ok\n")
    return None


async def main() -> None:
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), process_request=health) as server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
