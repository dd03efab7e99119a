"""The command line (SPEC C): `runwarden serve [OPTIONS] [-- APP COMMAND ...]`,
`runwarden run MODULE:APP [OPTIONS]` (SPEC E7) and `runwarden demo`. Exit codes:
`runwarden.exit_codes`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from runwarden import __version__, exit_codes, logs, run, termination
from runwarden.settings import RULE_IDS, ConfigError, Settings, add_options, resolve, suggest

DEMO_DEFAULTS = {
    # A first look on a developer's machine: reachable from this machine only.
    "host": "127.0.0.1",
    "admin_host": "127.0.0.1",
    "start_period_seconds": 0,
    "timeout_seconds": 1.0,
    "period_seconds": 2.0,
    "drain_timeout_seconds": 5.0,
    "app_stop_timeout_seconds": 5.0,
}


SERVE_DESCRIPTION = """\
Proxy to the app at --app-url and guard it. With an app command after `--`, also start and
supervise the app. Every option can come from the environment as RUNWARDEN_<NAME>; the
command line wins.

examples:
  # start and supervise the app (the app's command and its own options after --)
  runwarden serve --app-profile vllm -- vllm serve MODEL --port 8000
  # guard mode: an app that is already running (a replacement stops only runwarden)
  runwarden serve --app-url http://127.0.0.1:8000 --health-path /health
"""


def _epilog() -> str:
    rows = "\n".join(
        f"  {code:>3}  {name:<15} {RULE_IDS.sub('', meaning)}"
        for code, name, meaning in exit_codes.TABLE
    )
    return f"exit codes:\n{rows}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runwarden",
        description="Health sidecar for GPU inference runners.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"runwarden {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="proxy to an app, health-check it, drain and exit when it breaks",
        usage="runwarden serve [OPTIONS] [-- APP COMMAND ...]",
        description=SERVE_DESCRIPTION,
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(serve)
    run.add_parser(commands, _epilog())
    demo = commands.add_parser(
        "demo",
        help="start a small bundled model server behind runwarden, for a first look",
        description="Start the bundled CPU-only demo model server, supervised, behind runwarden.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--app-port", type=int, default=8000, help="the demo model server's port (default: 8000)"
    )
    add_options(demo, DEMO_DEFAULTS, defaults_source="demo")
    return parser


def parse(argv: Sequence[str], env: Mapping[str, str]) -> Settings:
    """Settings from the command line and environment; raises ConfigError or SystemExit(2)."""
    argv = list(argv)
    app_command: list[str] = []
    if "--" in argv:
        split = argv.index("--")
        argv, app_command = argv[:split], argv[split + 1 :]
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:  # options but no command, such as `runwarden -v`
        parser.error("a command is needed: serve, run or demo")
    if unknown and args.command == "run":
        run.unknown_options(_command_parser(parser, "run"), unknown)
    if unknown and args.command == "serve":
        _app_command_without_dashes(_command_parser(parser, "serve"), argv, unknown)
    if unknown:  # said with the command's own usage, not the top level's
        sub = _command_parser(parser, args.command)
        options = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
        hint = next((suggest(u.split("=")[0], options) for u in unknown if u.startswith("--")), "")
        sub.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    if args.command == "serve":
        return resolve(args, env, app_command)
    if args.command == "run":
        if app_command:
            raise ConfigError("runwarden run takes the app as MODULE:APP, not a command after --")
        return run.settings(args, env)
    if app_command:
        raise ConfigError("runwarden demo takes no app command (it runs its own)")
    if not 1 <= args.app_port <= 65535:
        raise ConfigError(f"--app-port must be a TCP port 1-65535, got {args.app_port}")
    args.app_url = f"http://127.0.0.1:{args.app_port}"
    command = [sys.executable, "-m", "runwarden.demo", "--port", str(args.app_port)]
    return resolve(args, env, command)


def _app_command_without_dashes(
    serve: argparse.ArgumentParser, argv: Sequence[str], unknown: Sequence[str]
) -> None:
    """`runwarden serve uvicorn my_server:app --port 8000`: an app command given without
    `--` before it. argparse would take the app's `--port 8000` as runwarden's own, so say
    where the command goes, and refuse an option given both before and after the app's name
    (whichever was meant, one of them would be silently lost)."""
    # The app's name comes first; a word after an unknown option is that option's value.
    word = unknown[0] if unknown else ""
    if not word or word.startswith("-") or word not in argv[1:]:
        return
    start = argv.index(word, 1)
    ours, app = list(argv[1:start]), list(argv[start:])
    options = {o for a in serve._actions for o in a.option_strings if o.startswith("--")}

    def named(args: Sequence[str]) -> set[str]:
        return {a.split("=")[0] for a in args if a.split("=")[0] in options}

    twice = sorted(named(ours) & named(app))
    fixed = " ".join(["runwarden serve", *ours, "--", *app])
    message = f"unrecognized arguments: {' '.join(unknown)}: put the app's command after `--`"
    if twice:
        message += (
            f"; {', '.join(twice)} given both before and after the app's name {word!r} "
            "(after it, it is the app's own option)"
        )
    serve.error(f"{message}, as in: {fixed}")


def _command_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[name]  # type: ignore[no-any-return]
    return parser


def _print_demo_urls(settings: Settings) -> None:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    proxy = f"http://{host}:{settings.port}"
    admin = f"http://{settings.admin_host}:{settings.admin_port}"
    code = exit_codes.BY_REASON["app_503"]
    print(
        f"""
runwarden demo: a small model server at {settings.app_url}, guarded by runwarden.
Try:
  curl '{proxy}/predict?prompt=hello&latency=0.2'      # a prediction through the proxy
  curl -N '{proxy}/stream?tokens=20'                   # server-sent events, token by token
  curl -H '{settings.check_header}: 1' {proxy}/   # ask runwarden for a health check (H5)
  curl {admin}/status                          # state, settings, check history
  curl {admin}/metrics                         # Prometheus metrics
  curl '{proxy}/predict?status=503'                    # the app answers 503: see below
A 503 replaces the runner: runwarden drains and exits with the reason's code
({code}, app_503), and in production the orchestrator (Kubernetes, systemd, ...) starts
a fresh runner. Here nothing restarts it: the demo ends with exit code {code}.
Ctrl-C stops it cleanly (exit 0).
""",
        flush=True,
    )


def _demo_installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("starlette", "uvicorn"))


def _given(argv: Sequence[str], option: str, env: Mapping[str, str]) -> str | None:
    """An option's text as given, read without the parser (for when parsing failed)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return env.get("RUNWARDEN_" + option[2:].replace("-", "_").upper())


def run_cli(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    if not argv:  # `runwarden` alone: what it can do, not a bare error
        build_parser().print_help()
        return exit_codes.BAD_CONFIG
    try:
        settings = parse(argv, env)
    except ConfigError as exc:
        return _bad_config(argv, env, exc)
    logs.setup(settings.log_level, settings.log_format)
    for note in settings.notes:
        logging.getLogger("runwarden").warning("%s", note)
    if argv[0] == "run":
        try:
            return run.main(settings)
        except ConfigError as exc:  # the app cannot be loaded
            return _bad_config(argv, env, exc)
    if argv and argv[0] == "demo":
        if not _demo_installed():
            print(
                "runwarden: error: the demo model server needs Starlette and uvicorn: "
                "pip install 'runwarden[demo]' (from a checkout: pip install '.[demo]')",
                file=sys.stderr,
            )
            return exit_codes.BAD_CONFIG
        _print_demo_urls(settings)

    from runwarden.runner import Runner  # the heavy imports, once settings are valid

    runner = Runner(settings)
    code = asyncio.run(runner.run())
    if runner.exit is not None:
        termination.write(termination.resolve(settings.termination_message_path), runner.exit.line)
    return code


def _bad_config(argv: Sequence[str], env: Mapping[str, str], exc: ConfigError) -> int:
    print(f"runwarden: error: {exc}", file=sys.stderr)
    # K1: said to the orchestrator too; the path's own setting may be what is bad.
    path = _given(argv, "--termination-message-path", env)
    line = f"exiting with code {exit_codes.BAD_CONFIG} (bad_config): {exc}"
    termination.write(termination.resolve(path), line)
    return exit_codes.BAD_CONFIG


def main() -> None:
    sys.exit(run_cli())
