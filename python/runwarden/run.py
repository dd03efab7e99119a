"""`runwarden run MODULE:APP [OPTIONS]` (SPEC E7): serve an ASGI app on uvicorn (uvloop and
httptools where installed) with runwarden inside it, the one-line Python way. The options are
`serve`'s where they apply in-process (health checks, the door, the drain, the admin port,
GPU monitoring); `--host` and `--port` are the app's own. Exit codes as `serve`'s (E5).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from runwarden import exit_codes, termination
from runwarden.settings import (
    PROXY_ONLY,
    SPECS,
    ConfigError,
    Settings,
    add_options,
    resolve_embedded,
    suggest,
)

RUN_SPECS = tuple(s for s in SPECS if s.name not in PROXY_ONLY)
"""The options that apply inside the app's process."""


def add_parser(commands: Any, epilog: str) -> argparse.ArgumentParser:
    """`run`'s options, under `runwarden`'s commands."""
    run: argparse.ArgumentParser = commands.add_parser(
        "run",
        help="serve a Python ASGI app (MODULE:APP) on uvicorn with runwarden inside it",
        usage="runwarden run MODULE:APP [OPTIONS]",
        description=(
            "Serve the ASGI app MODULE:APP (a FastAPI or Starlette app, say) on uvicorn, "
            "with runwarden inside the process: no second hop, no second port for traffic. "
            "The app's health check is the route marked @runwarden.health_check, else "
            "--health-path. Every option can come from the environment as RUNWARDEN_<NAME>; "
            "the command line wins.\n\nexample:\n  runwarden run my_server:app --port 8000 "
            "--start-period-seconds 600"
        ),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("target", metavar="MODULE:APP", help="the ASGI app, as uvicorn names it")
    app = run.add_argument_group("the app's server")
    app.add_argument("--host", default="0.0.0.0", help="the app's listen address (default: "
                     "0.0.0.0)")  # fmt: skip
    app.add_argument("--port", type=int, default=8000, help="the app's port (default: 8000)")
    app.add_argument("--app-dir", default=".", help="a folder to import MODULE from (default: .)")
    add_options(run, specs=RUN_SPECS)
    return run


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The options set on the command line, by name."""
    return {s.name: getattr(args, s.name) for s in RUN_SPECS if getattr(args, s.name) is not None}


def settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """`run`'s settings: the embedded ones (SPEC E2), with the app's own host, port and
    target."""
    if not 1 <= args.port <= 65535:
        raise ConfigError(f"--port must be a TCP port 1-65535, got {args.port}", "port")
    resolved = resolve_embedded(given(args), env)
    resolved.override(host=args.host, port=args.port)
    resolved.sources.update(host="option", port="option")
    resolved.serve_app = (args.target, args.host, args.port, args.app_dir, given(args))
    return resolved


def main(settings: Settings) -> int:
    """Serve until the runner is replaced or stopped; the exit code (D4, E5)."""
    if importlib.util.find_spec("uvicorn") is None:
        print("runwarden: error: runwarden run needs uvicorn: pip install 'uvicorn[standard]'",
              file=sys.stderr)  # fmt: skip
        return exit_codes.BAD_CONFIG
    assert settings.serve_app is not None, "run.settings() first"
    target, host, port, app_dir, options = settings.serve_app

    import uvicorn
    from uvicorn.importer import ImportFromStringError, import_from_string

    from runwarden.asgi import Runwarden

    sys.path.insert(0, app_dir)
    try:
        app = import_from_string(target)
    except ImportFromStringError as exc:
        raise ConfigError(f"cannot load the app {target!r}: {exc}") from None
    guarded = Runwarden(app, **options)
    config = uvicorn.Config(
        guarded,
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        # D2: in-flight requests finish within the drain timeout, on a stop as in a drain.
        timeout_graceful_shutdown=math.ceil(settings.drain_timeout_seconds),
        log_config=None,  # runwarden's logging, set up already, carries uvicorn's lines too
    )
    server = uvicorn.Server(config)
    server.run()
    code = guarded.exit_code
    if code is None:
        code = exit_codes.CLEAN if server.started else exit_codes.STARTUP_FAILED
        if not server.started:
            line = f"exiting with code {code} (startup_failed): the app did not start"
            logging.getLogger("runwarden").error("%s", line)
            termination.write(termination.resolve(settings.termination_message_path), line)
    return code


def unknown_options(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> None:
    """Refuse options `run` does not know, with the nearest one it does."""
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    first = next((u for u in unknown if u.startswith("--")), unknown[0])
    hint = suggest(first.split("=")[0], options)
    proxy = first.split("=")[0][2:].replace("-", "_")
    if proxy in PROXY_ONLY:
        hint = " (a proxy option: runwarden serve takes it; the app's own server does this here)"
    parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
