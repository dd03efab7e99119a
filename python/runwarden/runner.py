"""One runner's life (SPEC D): start the core (which binds both ports and serves them), then
the app; wait for a verdict or a signal; let the core drain; stop the app; exit with the
reason's code.

The Rust core owns the data plane and the drain (`rust/proxy/`): from the verdict on it
refuses new requests, waits for those in flight up to the drain timeout, answers or cuts
what is left, and closes the proxy port when asked. This module owns the process around
it: signals, the app's process, sidecar mode, the exit line.

In sidecar mode (K2) the app is another container's: a replacement drains, stops the app's
process so that container restarts, and starts over, and only a clean stop (or a GPU fault,
which a new app on the same GPU would not escape) ends runwarden.

Named "runner" because "app" is the model server in the SPEC's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from runwarden import exit_codes, sidecar
from runwarden._core import CheckOutcome, Verdict
from runwarden.logs import fields
from runwarden.settings import Settings
from runwarden.supervisor import Supervisor, describe_exit
from runwarden.warden import Warden

log = logging.getLogger("runwarden")
# SIGHUP too: a dropped terminal must not kill runwarden and orphan the app (its own group).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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


class Unanswered:
    """Until the app's first passing check, says every so often what the checks tried and
    what came back: a wrong --app-url must not pass for a slow model load that says nothing
    (the start period keeps those failures out of the warnings)."""

    FIRST_NOTE_SECONDS = 5.0
    NOTE_EVERY_SECONDS = 30.0

    def __init__(self, app_url: str, health_path: str) -> None:
        self.url = app_url.rstrip("/") + health_path
        self.restart()

    def restart(self) -> None:
        """From now (K2: the app's new container is waited for afresh)."""
        self.since = time.monotonic()
        self.next_note = self.since + self.FIRST_NOTE_SECONDS
        self.checks = 0
        self.answered = False

    def after(self, outcome: CheckOutcome) -> str | None:
        """A line to log now, if one is due."""
        if outcome.passed:
            self.answered = True
        if self.answered:
            return None
        self.checks += 1
        now = time.monotonic()
        if now < self.next_note:
            return None
        self.next_note = now + self.NOTE_EVERY_SECONDS
        got = outcome.error or f"status {outcome.status}"
        return (
            f"the app has not passed a health check yet: {self.checks} check(s) of {self.url} "
            f"in {now - self.since:.0f} s, the last got {got}; still waiting (is --app-url "
            "right, and is the app listening there?)"
        )


class Runner:
    """Wires the core and the supervisor; `run()` returns the exit code."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started_at = time.monotonic()
        self.warden = Warden(settings.health, settings.app_url, settings.gpu, settings.proxy)
        self.supervisor = (
            Supervisor(
                settings.app_command,
                settings.app_stop_timeout_seconds,
                relay_output=settings.log_format == "json",
            )
            if settings.app_command
            else None
        )
        self._signals = 0
        self._tasks: list[asyncio.Task[object]] = []
        self.exit: Exit | None = None
        """Set once runwarden knows how it ends; the log's last line and K1's message."""
        self.app_process: sidecar.AppProcess | None = None
        """K2: the app's process in the other container, once found."""
        self.replacements = 0
        self._unanswered = Unanswered(settings.app_url, settings.health_path)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.warden.on_outcome(self._on_outcome)
        self.warden.on_verdict(self._on_verdict)
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            try:
                # Both ports are bound before anything else: a port in use stops start-up
                # before the app has begun loading its weights.
                await self.warden.start()
            except OSError as exc:
                code = self._failed_start(str(exc))
                self._say_exit()
                return code
            try:
                self._publish_info()
                failed = await self._start()
                code = await self._serve_until_drained() if failed is None else failed
            finally:
                await self._stop()
                # The process ends next, and with it the core's threads: waiting for them
                # (the XID thread sits in an NVML event wait of up to 0.25 s) would only
                # delay the exit that brings the fresh runner.
                await self.warden.stop(timeout_seconds=0)
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
        return code

    def _publish_info(self) -> None:
        """What /status shows of the settings and the GPUs' selection (static)."""
        settings = self.settings
        self.warden.set_info("settings", json.dumps(settings.to_dict()))
        self.warden.set_info("gpu_selection", json.dumps(settings.gpu_selection))
        self.warden.set_info("setting_sources", json.dumps(settings.sources))
        self._publish_app()

    def _publish_app(self) -> None:
        """/status's `app` section. Open to the pod's network, so the command is named by its
        program only: arguments can hold a token (the start-up log has them)."""
        settings, supervisor, found = self.settings, self.supervisor, self.app_process
        command = settings.app_command
        app = {
            "url": settings.app_url,
            "mode": "supervised" if supervisor else "sidecar" if settings.sidecar else "external",
            "program": command[0] if command else None,
            "arguments": max(len(command) - 1, 0),
            "pid": supervisor.pid if supervisor else found.pid if found else None,
            "returncode": supervisor.returncode if supervisor else None,
            "replacements": self.replacements,
        }
        self.warden.set_info("app", json.dumps(app))

    async def _start(self) -> int | None:
        """Start the app; an exit code if it, or the GPU gate, stopped start-up."""
        settings = self.settings
        cap, permits = self.warden.limits() or (0, 0)
        log.info(
            "proxy on http://%s:%d -> %s; admin on http://%s:%d; at most %d client "
            "connections, %d at the app at once",
            settings.host, settings.port, settings.app_url,
            settings.admin_host, settings.admin_port, cap, permits,
        )  # fmt: skip
        if self.supervisor is None and not settings.sidecar:
            log.warning(
                "guard mode: no app command after --, so a replacement stops only runwarden, "
                "and the app at %s keeps serving on its own port; to have it restarted, run "
                "it after -- (runwarden starts and stops it) or, with the app in another "
                "container of the pod, use --sidecar", settings.app_url,
            )  # fmt: skip
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
            self._publish_app()
            self._spawn(self._watch_app(self.supervisor))
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
        say_draining(verdict, self.warden.in_flight(), self.settings.drain_timeout_seconds)

    async def _serve_until_drained(self) -> int:
        while True:
            verdict = await self.warden.decided()
            # D2, D6: the core waits for the requests in flight, then answers or cuts the
            # rest at the drain's deadline.
            drained = await self.warden.drained()
            if drained.in_flight:
                log.warning(
                    "drain ended with %d request(s) still in flight: %d answered 503 with "
                    "Retry-After, %d cut mid-response",
                    drained.in_flight, drained.answered, drained.cut,
                )  # fmt: skip
            if self.settings.sidecar and verdict.replacing and await self._replace_app(verdict):
                continue
            # D6: stop listening, answer what had arrived, and wait for the clients to close.
            left = await self.warden.close_ports()
            if left:
                log.warning("closed %d client connection(s) still open at the drain's end", left)
            code = self.warden.finish()
            assert code == verdict.exit_code
            self.exit = Exit(code, verdict.reason, verdict.detail)
            return code

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
        self._unanswered.restart()
        self.warden.restart()
        self._publish_app()
        log.warning(
            "starting over: not ready until the app's new container passes a health check "
            "(replacement %d)", self.replacements,
        )  # fmt: skip
        return True

    async def _stop(self) -> None:
        """Stop the app (D3) and the background tasks; say how runwarden ends."""
        if self.supervisor is not None:
            await self.supervisor.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._say_exit()

    def _say_exit(self) -> None:
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
        self._publish_app()
        if supervisor.stopping:
            return
        # Said once, by the verdict's line (and the exit line that ends the log).
        self.warden.replace(
            "app_exited", f"the app (pid {supervisor.pid}) {describe_exit(returncode)}"
        )

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
            self._publish_app()
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
        self.warden.hurry()

    def _on_outcome(self, outcome: CheckOutcome) -> None:
        note = self._unanswered.after(outcome)
        if note:
            log.info("%s", note)
        if outcome.passed and outcome.made_ready and self.settings.sidecar:
            self._spawn(self._find_app())
        say_outcome(outcome)


def say_outcome(outcome: CheckOutcome) -> None:
    """A check's line in the log: the first pass, and the failures that count as warnings
    (the rest, in the start period, before ready or busy, would flood a slow start's log)."""
    if outcome.passed:
        if outcome.made_ready:
            log.info("the app passed its first health check: ready")
        return
    counts = outcome.counted in ("counted", "manual")
    (log.warning if counts else log.debug)(
        "health check failed (%s, %d consecutive): %s",
        outcome.counted, outcome.consecutive_failures,
        outcome.error or f"status {outcome.status}",
    )  # fmt: skip


def say_draining(verdict: Verdict, in_flight: int, drain_timeout_seconds: float) -> None:
    """The drain's first line; the verdict itself (reason, detail) is the line before it
    (Warden)."""
    (log.warning if verdict.replacing else log.info)(
        "draining: refusing new requests, %d in flight may finish within %.1f s",
        in_flight, drain_timeout_seconds,
    )  # fmt: skip
