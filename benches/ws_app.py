"""The WebSocket app of the protocols section: an echo server on the `websockets` package's
asyncio server, compression off so the figures are the proxy's and not zlib's.

    python -m benches.ws_app PORT

`/echo` answers each message with itself; `/health` (plain HTTP) answers 200 for runwarden's
checks.
"""

from __future__ import annotations

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
    async with serve(
        echo, "127.0.0.1", int(sys.argv[1]), process_request=health, compression=None,
        ping_interval=None,
    ) as server:  # fmt: skip
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
