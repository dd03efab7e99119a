"""One runner's life (SPEC D): start the core, the app and the two ports; wait for a
replacement verdict or a signal; drain; stop the app; exit with the reason's code.

In sidecar mode (K2) the app is another container's: a replacement drains, stops the app's
process so that container restarts, and starts over, and only a clean stop (or a GPU fault,
which a new app on the same GPU would not escape) ends runwarden.

Named "runner" because "app" is the model server in the SPEC's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from runwarden import exit_codes, sidecar
from runwarden._core import CheckOutcome, Verdict
from runwarden.admin import Admin
from runwarden.drain import Drain
from runwarden.logs import fields
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


@dataclass(frozen=True)
class Exit:
    """How runwarden ends (D4): its code, the reason's name, and why, in words."""

    code: int
    reason: str
    detail: str

    @property
    def line(self) -> str:
        """The one line the log ends with, and the termination message (K1)."""
        return f"exiting with code {self.code} ({self.reason}): {self.detail}"


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
        self.exit: Exit | None = None
        """Set once runwarden knows how it ends; the log's last line and K1's message."""
        self.app_process: sidecar.AppProcess | None = None
        """K2: the app's process in the other container, once found."""
        self.replacements = 0

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
            TrustedSources(settings.check_trusted_sources), settings.access_log,
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
                command = " ".join(settings.app_command)
                return self._failed_start(f"cannot start the app {command!r}: {exc}")
            self.warden.app_started()
            self._spawn(self._watch_app(self.supervisor))
        for server, host, port in (
            (self.proxy_server, settings.host, settings.port),
            (self.admin_server, settings.admin_host, settings.admin_port),
        ):
            try:
                await server.listen(host, port)
            except OSError as exc:
                return self._failed_start(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        log.info(
            "proxy on http://%s:%d -> %s; admin on http://%s:%d; at most %d client "
            "connections",
            settings.host, settings.port, settings.app_url,
            settings.admin_host, settings.admin_port, limits.max_connections,
        )  # fmt: skip
        return None

    def _failed_start(self, detail: str) -> int:
        self.exit = Exit(exit_codes.STARTUP_FAILED, "startup_failed", detail)
        return exit_codes.STARTUP_FAILED

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
        assert code is not None
        self.exit = Exit(code, verdict.reason, f"{verdict.detail}; the app was not started")
        return code

    def _on_verdict(self, verdict: Verdict) -> None:
        self.drain.begin(verdict)
        self.proxy_server.drain()

    async def _serve_until_drained(self) -> int:
        while True:
            verdict = await self.warden.decided()
            deadline = await self._drain(verdict)
            if self.settings.sidecar and verdict.replacing and await self._replace_app(verdict):
                continue
            # D6: stop listening, answer what had arrived, and wait for the clients to close.
            loop = asyncio.get_running_loop()
            left = await self.proxy_server.close(max(deadline, loop.time() + LINGER_SECONDS))
            if left:
                log.warning("closed %d client connection(s) still open at the drain's end", left)
            code = self.warden.finish()
            assert code == verdict.exit_code
            self.exit = Exit(code, verdict.reason, verdict.detail)
            return code

    async def _drain(self, verdict: Verdict) -> float:
        """D2: wait for the requests in flight, at most the drain timeout (a second signal
        cuts it short); those left are answered or cut (D6). The loop time the drain ended."""
        loop = asyncio.get_running_loop()
        deadline: float = loop.time() + self.settings.drain_timeout_seconds
        (log.warning if verdict.replacing else log.info)(
            "draining (%s: %s): refusing new requests, %d in flight may finish within %.1f s",
            verdict.reason, verdict.detail, self.warden.in_flight(),
            self.settings.drain_timeout_seconds,
        )  # fmt: skip
        idle = asyncio.ensure_future(self.drain.wait_idle(self.settings.drain_timeout_seconds))
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait([idle, hurry], return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        if not (idle.done() and idle.result()):
            idle.cancel()
            self._abandon_in_flight()
            deadline = loop.time()
        return deadline

    async def _replace_app(self, verdict: Verdict) -> bool:
        """K2: stop the app's process in the other container, so the kubelet restarts it;
        True if runwarden starts over. False, and runwarden exits with the verdict's code,
        when the process cannot be stopped (the pod is not set up for it: runwarden's own
        restart is then the only replacement left), on a GPU fault (a new app on the same
        GPU would not escape it), or when a stop signal came meanwhile."""
        port = urlsplit(self.settings.app_url).port or 80
        timeout = self.settings.app_stop_timeout_seconds
        try:
            app = await asyncio.to_thread(sidecar.find, port)
            how = "it had exited" if app is None else await sidecar.stop(app, timeout)
        except (sidecar.NotFound, PermissionError) as exc:
            log.error(
                "cannot stop the app for the replacement: %s; exiting instead (sidecar mode "
                "needs shareProcessNamespace: true and both containers under one user)", exc,
            )  # fmt: skip
            return False
        what = "nothing to stop" if app is None else f"stopped the app, {app.describe()}"
        log.warning("%s for the replacement (%s): %s", what, verdict.reason, how)
        self.app_process = None
        if verdict.reason == "gpu_fault" or self._signals:
            return False
        self.replacements += 1
        self.warden.restart()
        self.proxy_server.resume()
        self._hurry.clear()
        log.warning(
            "starting over: not ready until the app's new container passes a health check "
            "(replacement %d)", self.replacements,
        )  # fmt: skip
        return True

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
        if self.exit is not None:  # D4: the one line that says why
            exit_ = self.exit
            (log.info if exit_.code == exit_codes.CLEAN else log.error)(
                "%s", exit_.line, extra=fields(exit_.reason, exit_.detail, exit_.code)
            )

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

    async def _find_app(self) -> None:
        """K2: say once which process a replacement would stop, or why none could be."""
        port = urlsplit(self.settings.app_url).port or 80
        try:
            app = await asyncio.to_thread(sidecar.find, port)
        except sidecar.NotFound as exc:
            log.warning("sidecar mode: a replacement could not stop the app: %s", exc)
            return
        if app is not None:
            self.app_process = app
            log.info("sidecar mode: the app is %s; a replacement stops it", app.describe())

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
                if self.settings.sidecar:
                    self._spawn(self._find_app())
            return
        # Failures that count towards a replacement are warnings; the rest (start period,
        # not ready yet, busy) would flood the log of a slow-starting app.
        counts = outcome.counted in ("counted", "manual")
        (log.warning if counts else log.debug)(
            "health check failed (%s, %d consecutive): %s",
            outcome.counted, outcome.consecutive_failures,
            outcome.error or f"status {outcome.status}",
        )  # fmt: skip
