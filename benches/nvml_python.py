"""The GPU sampler a user would write with nvidia-ml-py: a Python thread reading the same G1
fields as runwarden's sampler, for section 1 and 2's comparison."""

from __future__ import annotations

import threading
import time
from typing import Any

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
            (pynvml.nvmlDeviceGetUUID(h), pynvml.nvmlDeviceGetName(h)) for h in self.handles
        ]
        self.last_uncorrected = [0] * GPUS
        self.costs: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self, index: int, h: Any) -> dict[str, Any]:
        n = self.n
        util = n.nvmlDeviceGetUtilizationRates(h)
        memory = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
        corrected, uncorrected = (
            n.NVML_MEMORY_ERROR_TYPE_CORRECTED,
            n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
        )
        volatile, aggregate = n.NVML_VOLATILE_ECC, n.NVML_AGGREGATE_ECC
        rows = n.nvmlDeviceGetRemappedRows(h)
        return {
            "index": index,
            "uuid": self.ids[index][0],
            "name": self.ids[index][1],
            "temperature_c": n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
            "memory_clock_mhz": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
            "throttle_reasons": n.nvmlDeviceGetCurrentClocksThrottleReasons(h),
            "power_mw": n.nvmlDeviceGetPowerUsage(h),
            "gpu_utilization": util.gpu,
            "memory_utilization": util.memory,
            "memory_used_bytes": memory.used,
            "memory_total_bytes": memory.total,
            "ecc": {
                "volatile_corrected": n.nvmlDeviceGetTotalEccErrors(h, corrected, volatile),
                "volatile_uncorrected": n.nvmlDeviceGetTotalEccErrors(h, uncorrected, volatile),
                "aggregate_corrected": n.nvmlDeviceGetTotalEccErrors(h, corrected, aggregate),
                "aggregate_uncorrected": n.nvmlDeviceGetTotalEccErrors(h, uncorrected, aggregate),
            },
            "retired_pages": {
                "single_bit": len(
                    n.nvmlDeviceGetRetiredPages(
                        h, n.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
                    )
                ),
                "double_bit": len(
                    n.nvmlDeviceGetRetiredPages(
                        h, n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
                    )
                ),
                "pending": n.nvmlDeviceGetRetiredPagesPendingStatus(h) == n.NVML_FEATURE_ENABLED,
            },
            "remapped_rows": {
                "correctable": rows[0],
                "uncorrectable": rows[1],
                "pending": bool(rows[2]),
                "failure": bool(rows[3]),
            },
        }

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
