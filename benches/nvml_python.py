"""The GPU sampler a user would write with nvidia-ml-py: a Python thread reading the same G1
fields as runwarden's sampler, for section 1 and 2's comparison."""

from __future__ import annotations

import threading
import time
from typing import Any

from runwarden.testing.nvml_reference import read_sample

from benches.common import GPUS

HZ = 10.0
"""How often both samplers sample in section 1."""


class PynvmlSampler:
    """The same G1 fields as runwarden's sampler (handles, UUIDs and names read once), with a
    comparable judgement, in a Python thread."""

    def __init__(self) -> None:
        import pynvml

        self.n = pynvml
        pynvml.nvmlInit()
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(GPUS)]
        self.ids = [
            (
                pynvml.nvmlDeviceGetUUID(h),
                pynvml.nvmlDeviceGetName(h),
                pynvml.nvmlDeviceGetPciInfo_v3(h).busId,
            )
            for h in self.handles
        ]
        self.last_uncorrected = [0] * GPUS
        self.costs: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self, index: int, h: Any) -> dict[str, Any]:
        return read_sample(h, index, *self.ids[index])

    def sample(self) -> list[str]:
        """One sample of every GPU, judged: the findings' names."""
        began = time.perf_counter()
        count = self.n.nvmlDeviceGetCount()
        samples = [self.read(i, h) for i, h in enumerate(self.handles)]
        findings = [] if count == GPUS else ["gpu_count"]
        for s in samples:
            unc = s["ecc"]["volatile_uncorrected"]
            if unc > self.last_uncorrected[s["index"]]:
                findings.append("uncorrectable_ecc")
            self.last_uncorrected[s["index"]] = unc
            if s["temperature_c"] >= 85 or s["throttle_reasons"] & 0xC8:
                findings.append("warning")
            if s["retired_pages"]["pending"] or s["remapped_rows"]["failure"]:
                findings.append("retirement")
        self.costs.append(time.perf_counter() - began)
        return findings

    def start(self) -> None:
        def run() -> None:
            while not self._stop.is_set():
                began = time.monotonic()
                self.sample()
                self._stop.wait(max(0.0, 1 / HZ - (time.monotonic() - began)))

        self._thread = threading.Thread(target=run, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.n.nvmlShutdown()
