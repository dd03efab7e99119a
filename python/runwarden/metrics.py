"""Prometheus metrics (SPEC H8, A, G4): checks, proxied traffic, drain state and GPUs.

Everything lives on a private `CollectorRegistry`, so two runners in one process (tests)
never share counters and `/metrics` shows only runwarden's own series. Gauges that mirror
state read it when scraped, and what the proxy counts per request is a dict update and a
bisect into a list, exported when scraped. Names follow Prometheus' conventions (base
units, `_total` counters, `_duration_seconds`); no `_created` series.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections.abc import Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from runwarden import __version__
from runwarden._core import CheckOutcome
from runwarden.gpu_metrics import GpuMetrics, Mode
from runwarden.warden import Warden

# One `_total` per counter and no `_created` beside it: that series doubles every counter
# and histogram on a scrape and nobody graphs it.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

STATES = ["starting", "ready", "replacing", "stopping", "stopped"]
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 120.0, 300.0)  # fmt: skip
"""Seconds, for proxied requests: from a millisecond (a cached answer) to a long
generation."""


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
            "runwarden_check_duration_seconds",
            "Health check latency, pass or fail",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        # Counted in a plain dict on the hot path, exported when scraped.
        self._requests: dict[tuple[int, str], int] = {}
        self.registry.register(_RequestCounts(self._requests))
        self.latency = _Latency()
        self.registry.register(self.latency)
        build = Gauge(
            "runwarden_build_info",
            "runwarden's version and the Python it runs on (always 1)",
            ["version", "python"],
            registry=self.registry,
        )
        build.labels(__version__, platform.python_version()).set(1)
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

    def record_latency(self, seconds: float) -> None:
        """A proxied request ended after `seconds` (hot path: a bisect and two adds)."""
        self.latency.observe(seconds)

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


class _Latency(Collector):
    """runwarden_proxied_request_duration_seconds: the hot path bisects and adds; the
    histogram is built when scraped."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        buckets, total = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            total += count
            buckets.append((_le(bound), total))
        yield HistogramMetricFamily(
            "runwarden_proxied_request_duration_seconds",
            "Proxied requests, from their head's arrival to the end of their response (or the "
            "client leaving)",
            buckets=buckets,
            sum_value=self.sum,
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _State(Collector):
    """runwarden_state and the consecutive failures, read from one core snapshot when
    scraped."""

    def __init__(self, warden: Warden) -> None:
        self.warden = warden

    def collect(self) -> Iterator[Metric]:
        snapshot = self.warden.snapshot()
        state = GaugeMetricFamily(
            "runwarden_state", "The runner's state: 1 for the current one", labels=["state"]
        )
        for name in STATES:
            state.add_metric([name], 1.0 if name == snapshot["state"] else 0.0)
        yield state
        yield GaugeMetricFamily(
            "runwarden_check_consecutive_failures",
            "Counted consecutive failed health checks; failure_threshold of them replace (H4)",
            value=snapshot["consecutive_failures"],
        )
