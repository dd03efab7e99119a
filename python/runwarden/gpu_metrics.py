"""GPU series for /metrics (SPEC G4), named as NVIDIA's dcgm-exporter names them, so a
dashboard made for it works: `DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-…"}` and so on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from runwarden._core import GpuFinding, GpuMonitoring, GpuSamples

LABELS = ["gpu", "UUID", "device", "modelName"]
MIB = 1 << 20


def _ecc(name: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda s: s["ecc"][name]


def _nested(table: str, key: str) -> Callable[[Mapping[str, Any]], float | None]:
    def read(s: Mapping[str, Any]) -> float | None:
        values = s[table]
        return None if values is None else float(values[key])

    return read


def _free_mib(s: Mapping[str, Any]) -> float | None:
    if s["memory_total_bytes"] is None or s["memory_used_bytes"] is None:
        return None
    return float((s["memory_total_bytes"] - s["memory_used_bytes"]) // MIB)


# (name, help, how to read it from a sample dict; None: the GPU does not report it)
GAUGES: list[tuple[str, str, Callable[[Mapping[str, Any]], float | None]]] = [
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", lambda s: s["temperature_c"]),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", lambda s: s["sm_clock_mhz"]),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", lambda s: s["memory_clock_mhz"]),
    (
        "DCGM_FI_DEV_POWER_USAGE",
        "Power draw (in W).",
        lambda s: None if s["power_mw"] is None else s["power_mw"] / 1000,
    ),
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", lambda s: s["gpu_utilization"]),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", lambda s: s["memory_utilization"]),
    (
        "DCGM_FI_DEV_FB_USED",
        "Framebuffer memory used (in MiB).",
        lambda s: None if s["memory_used_bytes"] is None else s["memory_used_bytes"] // MIB,
    ),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", _free_mib),
    (
        "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS",
        "Current clock throttle reasons (bitmask).",
        lambda s: s["throttle_reasons"],
    ),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Volatile corrected ECC errors.", _ecc("volatile_corrected")),
    (
        "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
        "Volatile uncorrected ECC errors.",
        _ecc("volatile_uncorrected"),
    ),
    (
        "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
        "Aggregate corrected ECC errors.",
        _ecc("aggregate_corrected"),
    ),
    (
        "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
        "Aggregate uncorrected ECC errors.",
        _ecc("aggregate_uncorrected"),
    ),
    (
        "DCGM_FI_DEV_RETIRED_SBE",
        "Pages retired for single-bit errors.",
        _nested("retired_pages", "single_bit"),
    ),
    (
        "DCGM_FI_DEV_RETIRED_DBE",
        "Pages retired for double-bit errors.",
        _nested("retired_pages", "double_bit"),
    ),
    (
        "DCGM_FI_DEV_RETIRED_PENDING",
        "Pages pending retirement (1 or 0).",
        _nested("retired_pages", "pending"),
    ),
    (
        "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
        "Rows remapped for correctable errors.",
        _nested("remapped_rows", "correctable"),
    ),
    (
        "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
        "Rows remapped for uncorrectable errors.",
        _nested("remapped_rows", "uncorrectable"),
    ),
    (
        "DCGM_FI_DEV_ROW_REMAP_PENDING",
        "Row remapping pending (1 or 0).",
        _nested("remapped_rows", "pending"),
    ),
    (
        "DCGM_FI_DEV_ROW_REMAP_FAILURE",
        "Row remapping failed (1 or 0).",
        _nested("remapped_rows", "failure"),
    ),
]


class GpuMetrics:
    """The GPU series on runwarden's registry, updated from the core's GPU events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gauges = [
            (Gauge(name, help_text, LABELS, registry=registry), read)
            for name, help_text, read in GAUGES
        ]
        self.xid = Gauge(
            "DCGM_FI_DEV_XID_ERRORS",
            "Value of the last XID error seen.",
            LABELS,
            registry=registry,
        )
        self.findings = Counter(
            "runwarden_gpu_findings",
            "GPU warnings and faults found (SPEC G2, G3), by rule and severity",
            ["rule", "severity"],
            registry=registry,
        )
        self.sample_cost = Gauge(
            "runwarden_gpu_sample_seconds",
            "What the last NVML sample of every GPU cost",
            registry=registry,
        )
        self.enabled = Gauge(
            "runwarden_gpu_monitoring",
            "1 while GPU monitoring runs, 0 when it is off (no NVML driver)",
            registry=registry,
        )
        self._labels: dict[int, tuple[str, str, str, str]] = {}

    def record(self, event: GpuSamples | GpuFinding | GpuMonitoring) -> None:
        if isinstance(event, GpuSamples):
            self.sample_cost.set(event.cost_seconds)
            for sample in event.samples:
                labels = self._labels_of(sample)
                for gauge, read in self.gauges:
                    value = read(sample)
                    if value is not None:
                        gauge.labels(*labels).set(value)
        elif isinstance(event, GpuFinding):
            self.findings.labels(event.rule, event.severity).inc()
            if event.xid is not None and event.gpu in self._labels:
                self.xid.labels(*self._labels[event.gpu]).set(event.xid)
        else:
            self.enabled.set(1 if event.enabled else 0)

    def _labels_of(self, sample: Mapping[str, Any]) -> tuple[str, str, str, str]:
        index = int(sample["index"])
        labels = (str(index), sample["uuid"] or "", f"nvidia{index}", sample["name"] or "")
        self._labels[index] = labels
        return labels
