"""Bodies stream both ways with flat memory; events arrive one by one (SPEC S1, D2)."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
from conftest import AppServer

GIB = 1 << 30
MIB = 1 << 20


class RssSampler:
    """The peak resident memory of one process, sampled on a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(0.01)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _warm_up(url: str) -> None:
    """Fill the pools and buffers once, so the baseline is the steady state."""
    with httpx.stream("GET", f"{url}/download", params={"size": str(64 * MIB)}) as r:
        for _ in r.iter_raw(MIB):
            pass
    httpx.post(f"{url}/upload", content=b"x" * (8 * MIB)).raise_for_status()


def test_S1_1GiB_download_streams_with_flat_memory(app_server: AppServer, runwarden):
    """S1: a 1 GiB response streams through with runwarden's RSS growing < 100 MiB."""
    rw = runwarden(app_server.url, wait_ready=True)
    _warm_up(rw.url)
    baseline = psutil.Process(rw.proc.pid).memory_info().rss
    received = 0
    with RssSampler(rw.proc.pid) as rss:
        params = {"size": str(GIB), "length": "1"}
        with httpx.stream("GET", f"{rw.url}/download", params=params, timeout=60) as r:
            assert r.status_code == 200
            assert r.headers["content-length"] == str(GIB)
            for chunk in r.iter_raw(MIB):
                received += len(chunk)
    assert received == GIB
    assert rss.peak - baseline < 100 * MIB, f"RSS grew {(rss.peak - baseline) / MIB:.0f} MiB"


def test_S1_1GiB_upload_streams_with_flat_memory(app_server: AppServer, runwarden):
    """S1: a 1 GiB chunked request body streams to the app with RSS growth < 100 MiB."""
    rw = runwarden(app_server.url, wait_ready=True)
    _warm_up(rw.url)
    baseline = psutil.Process(rw.proc.pid).memory_info().rss
    block = b"y" * MIB

    def body() -> Iterator[bytes]:
        for _ in range(GIB // MIB):
            yield block

    with RssSampler(rw.proc.pid) as rss:
        response = httpx.post(f"{rw.url}/upload", content=body(), timeout=60)
    assert response.status_code == 200
    assert response.json() == {"received_bytes": GIB}
    assert rss.peak - baseline < 100 * MIB, f"RSS grew {(rss.peak - baseline) / MIB:.0f} MiB"


def test_S1_server_sent_events_arrive_one_by_one(app_server: AppServer, runwarden):
    """S1: each event reaches the client when the app sends it, not when the stream ends."""
    rw = runwarden(app_server.url, wait_ready=True)
    arrivals = []
    start = time.monotonic()
    params = {"events": "5", "interval": "0.25"}
    with httpx.stream("GET", f"{rw.url}/sse", params=params) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - start)
    assert len(arrivals) == 5
    assert arrivals[0] < 0.5  # the stream lasts >= 1 s
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.1, arrivals
