"""`python -m runwarden.demo --port 8000`: run the demo model server."""

from __future__ import annotations

import argparse

import uvicorn

from runwarden.demo.server import app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m runwarden.demo")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    args = parser.parse_args()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


main()
