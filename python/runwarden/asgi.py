"""runwarden as ASGI middleware (SPEC E2): the embedded front, inside a Python model server.

    app = Runwarden(app, health_check=HealthCheck(start_period_seconds=60))
    app.add_middleware(Runwarden, max_concurrency=4)
    vllm serve MODEL --middleware runwarden.asgi.Runwarden   # settings from RUNWARDEN_*

Pure ASGI (no BaseHTTPMiddleware). Every request makes one call into the core, which
answers it as the proxy's layers would: refused while draining (D1), a gateway's check (H5),
admitted through the door (Q) or queued; the `Ticket` it gives holds the `send` the app
is given (`app_send`), which judges the response (R1, R4, H6). A request admitted at once
runs no Python of runwarden's: the class's `__call__` is the core's (`AsgiEntry`), which
calls the app and returns the ticket as the awaitable that drives it; the rest come back
here (`_other`). The lifespan starts the core (the admin port, the checks, GPU monitoring)
and stops it; under a server without a lifespan, the first request does (`_slow`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from runwarden._core import Answer, AsgiEntry, Front, Ticket, Waiting
from runwarden.declaration import HealthCheck, HealthCheckError, choose
from runwarden.inprocess import InProcess, clean_stop_on_sigterm, sibling_holds, stop_process
from runwarden.settings import ConfigError, Settings, resolve_embedded

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("runwarden")
TEXT_FORMAT = "%(levelname)s:     %(name)s: %(message)s"
MAX_WORKERS = 64
"""The most workers of one server that get an admin port each (admin_port, the next, …)."""
"""runwarden's lines beside uvicorn's, when the server set up no logging for them."""

if sys.version_info >= (3, 11):
    timeout = asyncio.timeout
else:  # pragma: no cover - 3.10

    def timeout(seconds: float) -> Any:
        raise NotImplementedError


class Runwarden(AsgiEntry):
    """The app, guarded from inside its own process. Keyword settings are those of
    docs/settings.md that apply in-process; unset ones come from `RUNWARDEN_*`, then
    `app_profile`, then the defaults. A bad one raises `ConfigError` (a `ValueError`) here,
    naming it."""

    def __init__(self, app: ASGIApp, *, health_check: HealthCheck | None = None,
                 **settings: Any) -> None:  # fmt: skip
        if health_check is not None and not isinstance(health_check, HealthCheck):
            raise TypeError(f"health_check must be a HealthCheck, got {health_check!r}")
        self.app = app
        self.health_check = health_check
        twice = sorted(set(settings) & set(health_check.given if health_check else ()))
        if twice:
            raise ConfigError(
                f"{twice[0]} is given twice: in health_check= and as a keyword; give it once",
                twice[0],
            )
        self._given = {**settings, **(health_check.given if health_check else {})}
        self.settings: Settings = resolve_embedded(self._given, os.environ)
        """As resolved now; start-up adds what the marked health route declares."""
        self.runner: InProcess | None = None
        self._front: Front | None = None
        self._timeout = self.settings.request_timeout_seconds
        self._starting: asyncio.Lock | None = None

        # A server tells ASGI 3 from ASGI 2 by `app.__call__` (uvicorn, hypercorn): this
        # instance's is a coroutine function, the same call. The server's call of the app
        # itself takes the type's `__call__`, the core's (AsgiEntry), with no Python frame.
        async def asgi3(scope: Scope, receive: Receive, send: Send) -> None:
            await AsgiEntry.__call__(self, scope, receive, send)

        self.__dict__["__call__"] = asgi3

    @property
    def exit_code(self) -> int | None:
        """How the process should end, once runwarden knows (E5)."""
        runner = self.runner
        return runner.exit.code if runner is not None and runner.exit is not None else None

    async def _slow(self, scope: Scope, receive: Receive, send: Send) -> None:
        """What the core does not take (`AsgiEntry`): the lifespan, a server's first request
        when it has none, and every request under `request_timeout_seconds` (Q3)."""
        front = self._front
        if front is None:  # the lifespan comes first, and once
            if scope["type"] == "lifespan":
                return await self._lifespan(scope, receive, send)
            front = await self._start_lazily()
        await self._other(front.enter(scope, send), scope, receive, send)

    async def _cancelled(self, ticket: Ticket, send: Send, cancelled: BaseException) -> None:
        """The drain's deadline cancelled a request the core called the app for (D6): 503,
        or cut (the cancellation goes on)."""
        if not await self._cut(ticket, send):
            ticket.done()
            raise cancelled

    # -- the rarer answers

    async def _other(self, entry: object, scope: Scope, receive: Receive, send: Send) -> None:
        if isinstance(entry, Ticket):
            return await self._visit(entry, scope, receive, send)
        if isinstance(entry, Answer):
            return await self._answer(entry, scope, send)
        if isinstance(entry, Waiting):
            return await self._wait(entry, scope, receive, send)
        # H5: a trusted gateway asks for a check; it is answered here, never forwarded.
        assert self.runner is not None and self._front is not None
        outcome = await self.runner.warden.check("gateway")
        await self._answer(self._front.check_answer(outcome), scope, send)

    async def _visit(self, ticket: Ticket, scope: Scope, receive: Receive, send: Send) -> None:
        """A request at the app, under `request_timeout_seconds` when set (Q3)."""
        try:
            if self._timeout is None:
                await self.app(scope, receive, ticket.app_send)
            else:
                await self._timed(ticket, scope, receive, send, self._timeout)
        except asyncio.CancelledError:
            if not await self._cut(ticket, send):
                raise
        except Exception:
            ticket.raised()  # R4: the server answers it 500
            raise
        finally:
            ticket.done()

    async def _timed(self, ticket: Ticket, scope: Scope, receive: Receive, send: Send,
                     seconds: float) -> None:  # fmt: skip
        try:
            if sys.version_info >= (3, 11):
                async with timeout(seconds):
                    await self.app(scope, receive, ticket.app_send)
            else:  # pragma: no cover - 3.10
                await asyncio.wait_for(self.app(scope, receive, ticket.app_send), seconds)
        except (TimeoutError, asyncio.TimeoutError):
            answer = ticket.timed_out()
            if answer is None:
                log.warning("%s %s outlived request_timeout_seconds mid-response: cut",
                            scope.get("method"), scope.get("path"))  # fmt: skip
                return
            await self._answer(answer, scope, send)

    async def _cut(self, ticket: Ticket, send: Send) -> bool:
        """D6: the drain's deadline cancelled a request still at the app: a 503 to retry
        elsewhere if its response had not begun (True), else it is cut (False)."""
        runner, front = self.runner, self._front
        if runner is None or front is None or not runner.cutting or ticket.responded:
            return False
        answer = front.past_the_drain()
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": answer.headers})  # fmt: skip
        await send({"type": "http.response.body", "body": answer.body})
        ticket.done()
        return True

    async def _answer(self, answer: Answer, scope: Scope, send: Send) -> None:
        """One of runwarden's own answers (it never reached the app)."""
        if scope["type"] == "websocket":
            # Refused before the handshake: as an HTTP answer where the server can (ASGI's
            # websocket.http.response), else a close: 1013, try again later.
            if "websocket.http.response" in scope.get("extensions", {}):
                await send({"type": "websocket.http.response.start", "status": answer.status,
                            "headers": answer.headers})  # fmt: skip
                await send({"type": "websocket.http.response.body", "body": answer.body})
            else:
                await send({"type": "websocket.close", "code": 1013})
            return
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": answer.headers})  # fmt: skip
        await send({"type": "http.response.body", "body": answer.body})

    async def _wait(self, waiting: Waiting, scope: Scope, receive: Receive, send: Send) -> None:
        """Q2: wait for a place at the app. A client that leaves meanwhile gives up its place
        at once (its first message is read to see it; a body's first part is kept)."""
        assert self.runner is not None
        entered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.runner.waits[waiting.call] = entered
        heard = asyncio.ensure_future(receive()) if scope["type"] == "http" else None
        first: Message | None = None
        try:
            if heard is not None:
                either: set[asyncio.Future[Any]] = {entered, heard}
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if not entered.done():
                    first = heard.result()
                    if first["type"] == "http.disconnect":
                        waiting.abandon()
                        return
            await entered
        except BaseException:
            waiting.abandon()
            raise
        finally:
            self.runner.waits.pop(waiting.call, None)
            if heard is not None and not heard.done():
                heard.cancel()
        if heard is not None and first is None and not heard.cancelled():
            first = heard.result() if heard.done() else None
        taken = waiting.take()
        if isinstance(taken, Answer) or taken is None:
            if taken is not None:
                await self._answer(taken, scope, send)
            return
        await self._visit(taken, scope, _replay(first, receive), send)

    # -- start-up and shutdown

    async def _startup(self, state: Any) -> None:
        """Find the declared health check, settle the settings, and start the core.
        HealthCheckError, ConfigError or OSError (the admin port) if it cannot start."""
        _log_somewhere()
        found = choose(self.app, self.health_check)
        settings, method = self.settings, self.settings.health_method
        declared: dict[str, Any] = {}
        if found is not None:
            declared = {"health_path": found.path, **found.check.given}
            for name in ("health_path", "health_method"):
                given = self._given.get(name)
                if given is not None and given != declared.get(name, given):
                    raise HealthCheckError(
                        f"{name} is {given!r} here but the marked health check "
                        f"{found.describe()} says {declared[name]!r}; give one"
                    )
            settings = resolve_embedded({**self._given, **declared}, os.environ)
            method = found.method if "health_method" not in found.check.given else method
        codes = (Runwarden._visit.__code__,)
        for _ in range(MAX_WORKERS):
            self.settings = settings
            self.runner = InProcess(self.app, settings, method, state, codes)
            try:
                self._front = await self.runner.start()
                if self._timeout is None:
                    self.serve_from_core(self._front, self.app)
                break
            except OSError:
                taken = settings.admin_port
                if not await asyncio.to_thread(sibling_holds, taken):
                    raise
                # A multi-worker server: each worker embeds its own runner (E5).
                log.info("admin port %d is another worker's; this worker (pid %d) tries %d",
                         taken, os.getpid(), taken + 1)  # fmt: skip
                settings = resolve_embedded({**self._given, **declared, "admin_port": taken + 1},
                                            os.environ)  # fmt: skip
        else:
            raise OSError(f"no admin port free for this worker from {self.settings.admin_port}")
        clean_stop_on_sigterm()

    async def _start_lazily(self) -> Front:
        """A server with no lifespan: the first request starts runwarden. If it cannot start,
        the process ends (nothing else would say so)."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._front is None:
                try:
                    await self._startup(None)
                except (ConfigError, HealthCheckError, OSError) as exc:
                    log.error("runwarden could not start: %s", exc)
                    stop_process(3, 0)
                    raise
        assert self._front is not None
        return self._front

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start runwarden before the app's start-up, stop it after the app's shutdown. A
        start that fails is said with `lifespan.startup.failed` (never raised: a server with
        `--lifespan auto` would serve on). An app without a lifespan still gets one."""
        message = await receive()
        if message["type"] != "lifespan.startup":
            return await self.app(scope, receive, send)
        try:
            await self._startup(scope.get("state"))
        except (ConfigError, HealthCheckError, OSError) as exc:
            await send({"type": "lifespan.startup.failed", "message": f"runwarden: {exc}"})
            return
        started = False
        replayed = False

        async def app_receive() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            got = await receive()
            if got["type"] == "lifespan.shutdown":
                await self._stop("the server is shutting down")
            return got

        async def app_send(sent: Message) -> None:
            nonlocal started
            if sent["type"] == "lifespan.startup.complete":
                started = True
            elif sent["type"] == "lifespan.startup.failed":
                await self._stop("the app's start-up failed")
            await send(sent)

        try:
            await self.app(scope, app_receive, app_send)
        except Exception:
            if started:
                raise
        if started:
            return
        # The app has no lifespan (it raised, or returned, without starting): runwarden
        # keeps the server's for itself.
        await send({"type": "lifespan.startup.complete"})
        while (await receive())["type"] != "lifespan.shutdown":
            pass
        await self._stop("the server is shutting down")
        await send({"type": "lifespan.shutdown.complete"})

    async def _stop(self, detail: str) -> None:
        if self.runner is not None:
            await self.runner.shutdown(detail)


def _replay(first: Message | None, receive: Receive) -> Receive:
    """`receive`, giving `first` (read while the request waited) before the rest."""
    if first is None:
        return receive
    pending: list[Message] = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


def _log_somewhere() -> None:
    """runwarden's lines reach stderr even where the server configured only its own
    loggers (uvicorn does): a handler of runwarden's own, at info, unless logging was set up
    for it (a root handler, or one of runwarden's)."""
    ours = logging.getLogger("runwarden")
    if ours.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    ours.propagate = False
