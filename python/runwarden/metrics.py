"""Prometheus metrics (SPEC H8, A, G4): checks, proxied traffic, drain state and GPUs.

Everything lives on a private `CollectorRegistry`, so two runners in one process (tests)
never share counters and `/metrics` shows only runwarden's own series. Gauges that mirror
state read it when scraped, so the proxy's hot path only bumps one cached counter.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric, StateSetMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from runwarden._core import CheckOutcome
from runwarden.gpu_metrics import GpuMetrics, Mode
from runwarden.warden import Warden

STATES = ["starting", "ready", "replacing", "stopping", "stopped"]


class Metrics:
    """runwarden's collectors, on a private registry."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, gpu_mode: Mode = "dcgm") -> None:
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
        # Counted in a plain dict on the hot path, exported when scraped.
        self._requests: dict[tuple[int, str], int] = {}
        self.registry.register(_RequestCounts(self._requests))
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
        self.gpu = GpuMetrics(self.registry, gpu_mode)

    def watch(self, warden: Warden) -> None:
        """Read the runner's state from the core when scraped: no copy of it here."""
        self.in_flight.set_function(warden.in_flight)
        self.draining.set_function(lambda: 0.0 if warden.verdict is None else 1.0)
        self.gpu._driver_version = lambda: (warden.gpu_status() or {}).get("driver_version")
        self.registry.register(_State(warden))

    def record_check(self, outcome: CheckOutcome) -> None:
        self.checks.labels("pass" if outcome.passed else "fail", outcome.counted).inc()
        self.check_latency.observe(outcome.latency_seconds)

    def record_request(self, status: int, source: str) -> None:
        """Count one answered request (hot path: one dict update)."""
        key = (status, source)
        counts = self._requests
        counts[key] = counts.get(key, 0) + 1

    def record_refusal(self, status: int) -> None:
        """A request the server refused before any handler (S3, S6): runwarden answered."""
        self.record_request(status, "runwarden")

    def render(self) -> bytes:
        return generate_latest(self.registry) + self.gpu.render()


class _RequestCounts(Collector):
    """runwarden_proxied_requests_total, from the dict the proxy counts in."""

    def __init__(self, counts: dict[tuple[int, str], int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "runwarden_proxied_requests",
            "Requests answered on the proxy port, by status and by who answered (app/runwarden)",
            labels=["status", "source"],
        )
        for (status, source), count in sorted(self.counts.items()):
            family.add_metric([str(status), source], count)
        yield family


class _State(Collector):
    """runwarden_state, read from the core's snapshot when scraped."""

    def __init__(self, warden: Warden) -> None:
        self.warden = warden

    def collect(self) -> Iterator[Metric]:
        current = self.warden.snapshot()["state"]
        yield StateSetMetricFamily(
            "runwarden_state", "The runner's state", {s: s == current for s in STATES}
        )
