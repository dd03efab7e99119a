"""One runner's life (SPEC D): start the core, the app and the two ports; wait for a
replacement verdict or a signal; drain; stop the app; exit with the reason's code.

Named "runner" because "app" is the model server in the SPEC's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine
from typing import Any

from runwarden import exit_codes
from runwarden._core import CheckOutcome, Verdict
from runwarden.admin import Admin
from runwarden.drain import Drain
from runwarden.metrics import Metrics
from runwarden.proxy import Proxy, TrustedSources
from runwarden.server import LINGER_SECONDS, Limits, Server, fd_limit, max_proxy_connections
from runwarden.settings import Settings
from runwarden.supervisor import Supervisor, describe_exit
from runwarden.upstream import HttpUpstream
from runwarden.warden import Warden

log = logging.getLogger("runwarden")
# SIGHUP too: a dropped terminal must not kill runwarden and orphan the app (its own group).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
ADMIN_CONNECTIONS = 64
"""The admin port's connection cap: probes and scrapes, not traffic."""


class Runner:
    """Wires the proxy, admin port, core and supervisor; `run()` returns the exit code."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.monotonic()
        self.warden = Warden(settings.health, settings.app_url, settings.gpu)
        self.drain = Drain(self.warden.in_flight)
        self.metrics = Metrics(settings.gpu_metrics)
        self.supervisor = (
            Supervisor(settings.app_command, settings.app_stop_timeout_seconds)
            if settings.app_command
            else None
        )
        self._hurry = asyncio.Event()
        self._signals = 0
        self._tasks: list[asyncio.Task[object]] = []
        self._exit_line: str | None = None

    def gpu_status(self) -> dict[str, object]:
        """/status's GPU section (G4): the latest sample and the fault history."""
        status = self.warden.gpu_status()
        if status is None:
            return {"enabled": False, "detail": "GPU monitoring is off (--no-gpu-monitoring)"}
        return {**status, "selected_by": self.settings.gpu_selection}

    async def run(self) -> int:
        settings = self.settings
        loop = asyncio.get_running_loop()
        fds = fd_limit()
        upstream = HttpUpstream(settings.app_url)
        self.proxy = proxy = Proxy(
            self.warden, upstream, self.drain, self.metrics, settings.check_header,
            TrustedSources(settings.check_trusted_sources),
        )  # fmt: skip
        safe = max_proxy_connections(fds)
        if settings.max_connections is not None and settings.max_connections > safe:
            log.warning(
                "--max-connections %d is more than the fd limit allows (%d fds: %d "
                "connections); a flood can exhaust runwarden's fds",
                settings.max_connections, fds, safe,
            )  # fmt: skip
        limits = Limits(
            header_timeout_seconds=settings.header_timeout_seconds,
            keep_alive_seconds=settings.keep_alive_seconds,
            max_connections=settings.max_connections or safe,
        )
        refused = self.metrics.record_refusal
        self.proxy_server = Server(proxy, limits, on_refused=refused)
        admin_limits = Limits(
            header_timeout_seconds=settings.header_timeout_seconds,
            max_connections=ADMIN_CONNECTIONS,
        )
        self.admin_server = Server(Admin(self), admin_limits)
        self.metrics.watch(self.warden)
        self.warden.on_outcome(self._on_outcome)
        self.warden.on_gpu(self.metrics.gpu.record)
        # D1: the verdict (H4, H6, H9, R1, G2, a signal) starts the drain in the loop turn
        # it arrives.
        self.warden.on_verdict(self._on_verdict)
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.warden.start()
            try:
                code = await self._start(limits)
                if code is None:
                    code = await self._serve_until_drained()
            finally:
                await self._stop()
                await upstream.close()
                # The process ends next, and with it the core's threads: waiting for them
                # (the XID thread sits in an NVML event wait of up to 0.25 s) would only
                # delay the exit that brings the fresh runner.
                await self.warden.stop(timeout_seconds=0)
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
        return code

    def connections(self) -> dict[str, int]:
        """/status: open client connections on the proxy port, and the cap (S6)."""
        server = getattr(self, "proxy_server", None)
        if server is None:
            return {"open": 0, "max": 0}
        return {"open": len(server.connections), "max": server.limits.max_connections}

    async def _start(self, limits: Limits) -> int | None:
        """Start the app and both ports; an exit code if one of them could not start."""
        settings = self.settings
        if settings.gpu is not None:
            code = await self._gpu_gate(settings.gpu.nvml_watchdog_seconds)
            if code is not None:
                return code
        if self.supervisor is not None:
            try:
                await self.supervisor.start()
            except OSError as exc:
                log.error(
                    "exiting with code %d: cannot start the app %r: %s",
                    exit_codes.STARTUP_FAILED, " ".join(settings.app_command), exc,
                )  # fmt: skip
                return exit_codes.STARTUP_FAILED
            self.warden.app_started()
            self._spawn(self._watch_app(self.supervisor))
        for server, host, port in (
            (self.proxy_server, settings.host, settings.port),
            (self.admin_server, settings.admin_host, settings.admin_port),
        ):
            try:
                await server.listen(host, port)
            except OSError as exc:
                log.error(
                    "exiting with code %d: cannot listen on %s:%d: %s",
                    exit_codes.STARTUP_FAILED, host, port, exc.strerror or exc,
                )  # fmt: skip
                return exit_codes.STARTUP_FAILED
        log.info(
            "proxy on http://%s:%d -> %s; admin on http://%s:%d; at most %d client "
            "connections",
            settings.host, settings.port, settings.app_url,
            settings.admin_host, settings.admin_port, limits.max_connections,
        )  # fmt: skip
        return None

    async def _gpu_gate(self, watchdog_seconds: float) -> int | None:
        """G6: before the app starts, GPU monitoring has loaded NVML, chosen its GPUs and taken
        one sample. A GPU already in a fatal state, or (with --gpu-required) NVML missing or a
        GPU not found, stops start-up here with gpu_fault's code: not after the app has spent
        minutes loading weights. A hung NVML call is a fault at the watchdog's deadline."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.warden.gpu_started(), watchdog_seconds + 2)
        verdict = self.warden.verdict
        if verdict is None:
            return None
        code = self.warden.finish()
        line = f"exiting with code {code} ({verdict.reason}): {verdict.detail}"
        self._exit_line = f"{line}; the app was not started"
        return code

    def _on_verdict(self, verdict: Verdict) -> None:
        self.drain.begin(verdict)
        self.proxy_server.drain()

    async def _serve_until_drained(self) -> int:
        drain = self.drain
        verdict = await self.warden.decided()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_seconds
        (log.warning if verdict.replacing else log.info)(
            "draining (%s: %s): refusing new requests, %d in flight may finish within %.1f s",
            verdict.reason, verdict.detail, self.warden.in_flight(),
            self.settings.drain_timeout_seconds,
        )  # fmt: skip
        idle = asyncio.ensure_future(drain.wait_idle(self.settings.drain_timeout_seconds))
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait([idle, hurry], return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        if not (idle.done() and idle.result()):
            idle.cancel()
            self._abandon_in_flight()
            deadline = loop.time()
        # D6: stop listening, answer what had arrived, and wait for the clients to close.
        left = await self.proxy_server.close(max(deadline, loop.time() + LINGER_SECONDS))
        if left:
            log.warning("closed %d client connection(s) still open at the drain's end", left)
        code = self.warden.finish()
        assert code == verdict.exit_code
        self._exit_line = f"exiting with code {code} ({verdict.reason}): {verdict.detail}"
        return code

    def _abandon_in_flight(self) -> None:
        """D6: requests still in flight when the drain ends get a 503 the gateway retries
        (or, with their response under way, are cut); one line says how many."""
        requests = self.proxy_server.active_requests()
        answered = 0
        for request in requests:
            if self.proxy.drain_timed_out(request):
                answered += 1
        if requests:
            log.warning(
                "drain ended with %d request(s) still in flight: %d answered 503 with "
                "Retry-After, %d cut mid-response",
                len(requests), answered, len(requests) - answered,
            )  # fmt: skip

    async def _stop(self) -> None:
        """Close the ports, then stop the app (D3) and the background tasks."""
        self.proxy_server.abort()
        self.admin_server.abort()
        if self.supervisor is not None:
            await self.supervisor.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._exit_line is not None:  # D4: the one line that says why
            clean = self.warden.verdict is not None and not self.warden.verdict.replacing
            (log.info if clean else log.error)("%s", self._exit_line)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        return task

    async def _watch_app(self, supervisor: Supervisor) -> None:
        """D5: an app that exits by itself replaces the runner."""
        returncode = await supervisor.exited()
        if supervisor.stopping:
            return
        detail = f"the app {describe_exit(returncode)}"
        log.error("%s (pid %s)", detail, supervisor.pid)
        self.warden.replace("app_exited", detail)

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first stop signal drains (a replacement already draining goes on); the second
        stops waiting for in-flight requests."""
        self._signals += 1
        if self._signals == 1:
            verdict = self.warden.shutdown(f"received {sig.name}")
            if verdict is not None and verdict.replacing:
                log.info("received %s while draining (%s): the drain goes on", sig.name,
                         verdict.reason)  # fmt: skip
            return
        log.warning("received %s again: not waiting for in-flight requests", sig.name)
        self._hurry.set()

    def _on_outcome(self, outcome: CheckOutcome) -> None:
        self.metrics.record_check(outcome)
        if outcome.passed:
            if outcome.made_ready:
                log.info("the app passed its first health check: ready")
            return
        # Failures that count towards a replacement are warnings; the rest (start period,
        # not ready yet, busy) would flood the log of a slow-starting app.
        counts = outcome.counted in ("counted", "manual")
        (log.warning if counts else log.debug)(
            "health check failed (%s, %d consecutive): %s",
            outcome.counted, outcome.consecutive_failures,
            outcome.error or f"status {outcome.status}",
        )  # fmt: skip
