"""The admin port (SPEC A): /livez, /readyz, /status, /metrics.

Served by runwarden's own server (`server.py`) on its own address: every address by
default, as the kubelet's probes and Prometheus' scrapes come to the pod's IP. Nothing here
changes anything, and nothing here is secret. The proxy port never routes here.
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


def status(runner: Runner) -> dict[str, object]:
    """Everything an operator asks first, from one snapshot of the core: the runner's state
    and why (the same reason and exit code everywhere in the document), age, settings (each
    once, under its option's name), recent checks, GPUs."""
    warden = runner.warden
    life = warden.snapshot()
    since = life.pop("draining_since_age_seconds")
    return {
        "state": life.pop("state"),
        "ready": life.pop("ready"),
        "reason": life.pop("reason"),
        "detail": life.pop("detail"),
        "exit_code": life.pop("exit_code"),
        "uptime_seconds": round(time.monotonic() - runner.started_at, 3),
        "draining_for_seconds": (None if since is None else round(life["age_seconds"] - since, 3)),
        "in_flight": warden.in_flight(),
        "connections": runner.connections(),
        "app": app(runner),
        "health": life,  # age, consecutive failures, the running check, the health URL
        "settings": runner.settings.to_dict(),
        "checks": [outcome.to_dict() for outcome in warden.history()],
        "gpu": runner.gpu_status(),
    }


def app(runner: Runner) -> dict[str, object]:
    """The app as runwarden knows it. Open to the pod's network, so its command is named by
    its program only: arguments can hold a token (the start-up log has them)."""
    settings, supervisor, found = runner.settings, runner.supervisor, runner.app_process
    command = settings.app_command
    return {
        "url": settings.app_url,
        "mode": "supervised" if supervisor else "sidecar" if settings.sidecar else "external",
        "program": command[0] if command else None,
        "arguments": max(len(command) - 1, 0),
        "pid": supervisor.pid if supervisor else found.pid if found else None,
        "returncode": supervisor.returncode if supervisor else None,
        "replacements": runner.replacements,
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
        verdict = self.runner.warden.verdict
        if verdict is not None and verdict.replacing:
            return 503, TEXT, f"replacing: {verdict.reason}\n".encode()
        return 200, TEXT, b"ok\n"

    def readyz(self) -> Answer:
        life = self.runner.warden.snapshot()
        if life["ready"]:
            return 200, TEXT, b"ready\n"
        reason = life["reason"] or "no health check has passed yet"
        return 503, TEXT, f"{life['state']}: {reason}\n".encode()

    def status(self) -> Answer:
        return 200, b"application/json", json.dumps(status(self.runner)).encode()

    def metrics(self) -> Answer:
        metrics = self.runner.metrics
        return 200, metrics.content_type.encode(), metrics.render()
