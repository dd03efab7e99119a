"""A server that runs uvicorn itself, the way vLLM's `serve_http` does
(vllm/entrypoints/launcher.py): `uvicorn.Config(...).load()`, `uvicorn.Server`, the serve
task on the running loop, and the loop's own SIGINT/SIGTERM handlers that cancel it. The app
is `embedded_app.app` (Runwarden added with `add_middleware`, settings from RUNWARDEN_*).

    python embedded_vllm_style.py PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvicorn
from embedded_app import app


async def serve_http(port: int) -> None:
    config = uvicorn.Config(app, host="127.0.0.1", port=port)
    config.load()
    server = uvicorn.Server(config)
    loop = asyncio.get_running_loop()
    server_task = loop.create_task(server.serve())

    def signal_handler() -> None:
        server_task.cancel()

    loop.add_signal_handler(signal.SIGINT, signal_handler)
    loop.add_signal_handler(signal.SIGTERM, signal_handler)
    try:
        await server_task
    except asyncio.CancelledError:
        await server.shutdown()


if __name__ == "__main__":
    asyncio.run(serve_http(int(sys.argv[1])))
