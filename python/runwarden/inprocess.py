"""runwarden inside the app's own process (SPEC E): the core started on the server's loop,
the checks it asks answered by calling the app's health route on that loop (E4), and the
process's end (E5): a replacement drains, then the server stops and the process exits with
the reason's code, one log line saying why, and the termination message (K1).

The core decides everything (`rust/embedded/`); this module owns only what a process has:
its loop, its server, its exit. The ASGI middleware (`runwarden.asgi`) is its front door.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, MutableMapping
from typing import Any

from runwarden import exit_codes, termination
from runwarden._core import AppCheck, Entered, Front, Ticket, Verdict
from runwarden.logs import fields
from runwarden.runner import Exit, say_draining, say_outcome
from runwarden.settings import Settings
from runwarden.warden import Warden

log = logging.getLogger("runwarden")
ASGIApp = Callable[..., Any]
STOP_GRACE_SECONDS = 30.0
"""How long the server gets to stop once a replacement has drained, before the process
exits anyway."""


class InProcess:
    """One runner inside the app's process: the core, the checks through the app, the exit."""

    def __init__(
        self, app: ASGIApp, settings: Settings, method: str, state: Any, fronts: tuple[Any, ...]
    ) -> None:
        self.app = app
        """The app below the middleware: checks call it."""
        self.settings = settings
        self.method = method
        self.state = state
        """The lifespan's state, which every request's scope carries a copy of."""
        self.warden = Warden(
            settings.health, "http://127.0.0.1", settings.gpu, settings.proxy, embedded=True
        )
        self.fronts = fronts
        """The code of the middleware's frames that hold a request at the app (`at_app`)."""
        self.waits: dict[int, asyncio.Future[None]] = {}
        self.cutting = False
        """Set when the drain's deadline cancels the requests still in flight."""
        self.exit: Exit | None = None
        self._watch: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[None]] = set()

    async def start(self) -> Front:
        """Start the core (the admin port is bound now: OSError if it cannot be had)."""
        self.warden.on_embedded(self._on_event)
        self.warden.on_outcome(say_outcome)
        self.warden.on_verdict(self._on_verdict)
        await self.warden.start()
        settings = self.settings
        self.warden.set_info("settings", json.dumps(settings.to_dict()))
        self.warden.set_info("gpu_selection", json.dumps(settings.gpu_selection))
        self.warden.set_info("setting_sources", json.dumps(settings.sources))
        self.warden.set_info("app", json.dumps({"mode": "embedded", "pid": os.getpid()}))
        log.info(
            "runwarden inside the app (pid %d): checks %s %s through the app's loop; admin on "
            "http://%s:%d", os.getpid(), self.method, settings.health_path,
            settings.admin_host, settings.admin_port,
        )  # fmt: skip
        self._watch = asyncio.ensure_future(self._until_drained())
        return self.warden.front()

    # -- what the core asks of the loop

    def _on_event(self, event: AppCheck | Entered) -> None:
        if isinstance(event, Entered):
            wait = self.waits.pop(event.call, None)
            if wait is not None and not wait.done():
                wait.set_result(None)
            return
        # A loop that was blocked finds the checks that timed out meanwhile: skip them.
        if self.warden.check_wanted(event.call):
            task = asyncio.ensure_future(self._check(event.call))
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)

    async def _check(self, call: int) -> None:
        status, error = await call_route(
            self.app, self.settings.health_path, self.method, self.state
        )
        self.warden.answer_check(call, status, error)

    # -- the end

    def _on_verdict(self, verdict: Verdict) -> None:
        say_draining(verdict, self.warden.in_flight(), self.settings.drain_timeout_seconds)

    async def _until_drained(self) -> None:
        """D2, D6, E5: once the runner drains and its requests in flight are done (or the
        drain's deadline came), a replacement stops the process with the reason's code."""
        verdict = await self.warden.decided()
        drained = await self.warden.drained()
        if drained.in_flight:
            # Each answers 503 with Retry-After if its response had not begun, or is cut.
            self.cutting = True
            for task in at_app(self.fronts):
                task.cancel()
            log.warning(
                "drain ended with %d request(s) still in flight: cancelled at the app",
                drained.in_flight,
            )
        code = self.warden.finish()
        if code is None or not verdict.replacing:
            return  # a clean stop: the server is stopping already (`shutdown`)
        self.exit = Exit(code, verdict.reason, verdict.detail)
        self._say_exit()
        stop_process(code, self.settings.app_stop_timeout_seconds)

    async def shutdown(self, detail: str) -> None:
        """The server stops (lifespan shutdown, after its requests finished): a clean stop,
        unless a replacement came first; the core's threads end."""
        verdict = self.warden.shutdown(detail)
        watch = self._watch
        if verdict is not None and verdict.replacing and watch is not None:
            await asyncio.shield(watch)  # the replacement's own end: its code, its line
        elif verdict is not None:
            if watch is not None:
                watch.cancel()
            await self.warden.drained()
            code = self.warden.finish()
            self.exit = Exit(code or exit_codes.CLEAN, verdict.reason, verdict.detail)
            self._say_exit()
        await self.warden.stop(timeout_seconds=1.0)

    def _say_exit(self) -> None:
        exit_ = self.exit
        if exit_ is None:
            return
        (log.info if exit_.code == exit_codes.CLEAN else log.error)(
            "%s", exit_.line, extra=fields(exit_.reason, exit_.detail, exit_.code)
        )
        path = termination.resolve(self.settings.termination_message_path)
        termination.write(path, exit_.line)


def sibling_holds(port: int) -> bool:
    """Whether `port` is held by another worker of this process's server: a process with the
    same parent (uvicorn --workers, gunicorn), found as `ss -lptn` would."""
    from runwarden import sidecar

    found, _ = sidecar.holders(sidecar.listening_inodes(port))
    parent = os.getppid()
    return any(ppid == parent and pid != os.getpid() for pid, ppid in found.items())


def at_app(fronts: tuple[Any, ...]) -> list[asyncio.Task[Any]]:
    """D6: the tasks of requests still at the app: those whose chain of awaits passes a
    `Ticket` (the core's call of the app), or a middleware frame (code in `fronts`) holding
    one. Found this way once, at the drain's deadline, rather than kept in a registry every
    request would pay for."""
    found = []
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        while coro is not None:
            if isinstance(coro, Ticket):
                found.append(task)
                break
            frame = getattr(coro, "cr_frame", None)
            if frame is not None and frame.f_code in fronts:
                if any(isinstance(v, Ticket) for v in frame.f_locals.values()):
                    found.append(task)
                    break
            coro = getattr(coro, "cr_await", None)
    return found


async def call_route(
    app: ASGIApp, path: str, method: str, state: Any
) -> tuple[int | None, str | None]:
    """Call the app's health route as a request would reach it, on this loop (E4): its
    status, or why it gave none."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost"), (b"user-agent", b"runwarden-check")],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    if state is not None:
        scope["state"] = dict(state)
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    asked = False
    status: int | None = None

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await ended
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            if not ended.done():
                ended.set_result(None)

    try:
        await app(scope, receive, send)
    except Exception as exc:
        return status, f"the health route raised {type(exc).__name__}: {exc}"
    finally:
        if not ended.done():
            ended.set_result(None)
    if status is None:
        return None, "the health route returned without a response"
    return status, None


def uvicorn_server() -> Any:
    """The uvicorn `Server` serving this process, found through the stop handler it installs
    while it serves (its public `handle_exit`); None under another server."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        server = getattr(signal.getsignal(sig), "__self__", None)
        if server is not None and hasattr(server, "should_exit"):
            return server
    return None


def stop_process(code: int, grace_seconds: float) -> None:
    """E5: end the process with `code` once the server has stopped. Under uvicorn, its own
    stop (what SIGTERM does, without the signal) and then the exit code at interpreter exit;
    under a server runwarden cannot stop, or one that does not stop in time, at once."""
    atexit.register(_exit_now, code)
    server = uvicorn_server()
    if server is None:
        log.warning("cannot ask this server to stop; the process exits now with code %d", code)
        _exit_now(code)
        return
    server.should_exit = True
    deadline = max(grace_seconds, STOP_GRACE_SECONDS)
    timer = threading.Timer(deadline, _exit_now, (code,))
    timer.daemon = True
    timer.start()


def clean_stop_on_sigterm() -> None:
    """E5: SIGTERM is a clean stop with exit 0. uvicorn stops on it, then sends itself the
    signal again once stopped, which ends the process by the signal (143): so runwarden's
    handler asks uvicorn to stop as its own does, and the signal ends nothing after."""
    server = uvicorn_server()
    if server is None or threading.current_thread() is not threading.main_thread():
        return

    def stop(signum: int, frame: Any) -> None:
        if server.should_exit:
            server.force_exit = True  # a second SIGTERM: stop waiting, as uvicorn's does
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)
