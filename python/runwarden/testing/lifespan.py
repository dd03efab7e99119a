"""An ASGI app's lifespan run on the current event loop, as a server runs it: what the
embedded mode's in-process tests and benchmark start `Runwarden` with, with no server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


@contextlib.asynccontextmanager
async def lifespan(app: Any, timeout: float = 10.0) -> AsyncIterator[None]:
    """Start `app` (its `lifespan.startup` answered `complete`, else RuntimeError naming
    what it said), yield, then shut it down and wait for its lifespan to end."""
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await messages.put({"type": "lifespan.startup"})
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup") and not started.done():
            started.set_result(f"{message['type']} {message.get('message', '')}".strip())

    life = asyncio.ensure_future(app({"type": "lifespan", "state": {}}, messages.get, send))
    said = await asyncio.wait_for(started, timeout)
    if said != "lifespan.startup.complete":
        life.cancel()
        raise RuntimeError(f"the app did not start: {said}")
    try:
        yield
    finally:
        await messages.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(life, timeout)
