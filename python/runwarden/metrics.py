"""Prometheus metrics (SPEC H8, A, G4): checks, proxied traffic, drain state and GPUs.

Everything lives on a private `CollectorRegistry`, so two runners in one process (tests)
never share counters and `/metrics` shows only runwarden's own series. Gauges that mirror
state read it when scraped, so the proxy's hot path only bumps one cached counter.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from runwarden._core import CheckOutcome
from runwarden.gpu_metrics import GpuMetrics

STATES = ["starting", "ready", "replacing", "stopping"]


class Metrics:
    """runwarden's collectors, on a private registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.checks = Counter(
            "runwarden_checks",
            "Finished health checks, by result and by how the scheduler counted them (H4, H9)",
            ["outcome", "counted"],
            registry=self.registry,
        )
        self.check_latency = Histogram(
            "runwarden_check_latency_seconds",
            "Health check latency, pass or fail",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.requests = Counter(
            "runwarden_proxied_requests",
            "Requests answered on the proxy port, by status and by who answered (app/runwarden)",
            ["status", "source"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "runwarden_requests_in_flight",
            "Proxied requests in flight to the app",
            registry=self.registry,
        )
        self.draining = Gauge(
            "runwarden_draining",
            "1 while draining (replacement or clean stop), else 0",
            registry=self.registry,
        )
        self.state = Enum(
            "runwarden_state",
            "The runner's state",
            states=STATES,
            registry=self.registry,
        )
        self.state.state("starting")
        self.gpu = GpuMetrics(self.registry)
        self._request_children: dict[tuple[int, str], Counter] = {}

    def watch(self, in_flight: Callable[[], float], draining: Callable[[], float]) -> None:
        """Read these gauges from live state when scraped."""
        self.in_flight.set_function(in_flight)
        self.draining.set_function(draining)

    def record_check(self, outcome: CheckOutcome) -> None:
        self.checks.labels("pass" if outcome.passed else "fail", outcome.counted).inc()
        self.check_latency.observe(outcome.latency_seconds)

    def record_request(self, status: int, source: str) -> None:
        """Count one answered request; label children are cached (hot path)."""
        child = self._request_children.get((status, source))
        if child is None:
            child = self.requests.labels(str(status), source)
            self._request_children[(status, source)] = child
        child.inc()

    def record_refusal(self, status: int) -> None:
        """A request the server refused before any handler (S3, S6): runwarden answered."""
        self.record_request(status, "runwarden")

    def render(self) -> bytes:
        return generate_latest(self.registry)
