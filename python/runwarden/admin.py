"""The admin port (SPEC A): /livez, /readyz, /status, /metrics.

Served by runwarden's own server (`server.py`) on its own address (loopback by default);
the proxy port never routes here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from email.utils import formatdate
from typing import TYPE_CHECKING

from runwarden.http1 import Headers, Request

if TYPE_CHECKING:
    from runwarden.runner import Runner

TEXT = b"text/plain; charset=utf-8"
Answer = tuple[int, bytes, bytes]  # status, content type, body


def runner_state(runner: Runner) -> str:
    """starting (no check passed yet), ready, replacing, or stopping (clean stop)."""
    if runner.drain.replacing:
        return "replacing"
    if runner.drain.reason is not None:
        return "stopping"
    return "ready" if runner.warden.ready else "starting"


def status(runner: Runner) -> dict[str, object]:
    """Everything an operator asks first: state and why, age, settings, recent checks."""
    drain = runner.drain
    supervisor = runner.supervisor
    return {
        "state": runner_state(runner),
        "reason": drain.reason,
        "detail": drain.detail or None,
        "uptime_seconds": round(time.monotonic() - runner.started_at, 3),
        "draining_for_seconds": (
            round(time.monotonic() - drain.started_at, 3) if drain.started_at else None
        ),
        "in_flight": drain.in_flight,
        "connections": runner.connections(),
        "app": {
            "url": runner.settings.app_url,
            "supervised": supervisor is not None,
            "command": list(runner.settings.app_command),
            "pid": supervisor.pid if supervisor else None,
            "returncode": supervisor.returncode if supervisor else None,
        },
        "core": runner.warden.core.state(),
        "settings": runner.settings.to_dict(),
        "checks": [outcome.to_dict() for outcome in runner.warden.core.history()],
        "gpu": runner.gpu_status(),
    }


class Admin:
    """The admin port's handler: four GET routes."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.routes: dict[bytes, Callable[[], Answer]] = {
            b"/livez": self.livez,
            b"/readyz": self.readyz,
            b"/status": self.status,
            b"/metrics": self.metrics,
        }

    def __call__(self, request: Request) -> None:
        route = self.routes.get(request.target.partition(b"?")[0])
        extra: Headers = []
        if route is None:
            answer: Answer = (404, TEXT, b"not found\n")
        elif request.method not in ("GET", "HEAD"):
            answer = (405, TEXT, b"method not allowed\n")
            extra.append((b"allow", b"GET, HEAD"))
        else:
            answer = route()
        code, content_type, body = answer
        headers = [
            (b"content-type", content_type),
            (b"cache-control", b"no-store"),
            (b"server", b"runwarden"),
            (b"date", formatdate(usegmt=True).encode()),
            *extra,
        ]
        request.respond(code, headers, body)

    def livez(self) -> Answer:
        drain = self.runner.drain
        if drain.replacing:
            return 503, TEXT, f"replacing: {drain.reason}\n".encode()
        return 200, TEXT, b"ok\n"

    def readyz(self) -> Answer:
        state = runner_state(self.runner)
        if state == "ready":
            return 200, TEXT, b"ready\n"
        reason = self.runner.drain.reason or "no health check has passed yet"
        return 503, TEXT, f"{state}: {reason}\n".encode()

    def status(self) -> Answer:
        return 200, b"application/json", json.dumps(status(self.runner)).encode()

    def metrics(self) -> Answer:
        metrics = self.runner.metrics
        return 200, metrics.content_type.encode(), metrics.render()
