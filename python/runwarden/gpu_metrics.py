"""GPU series for /metrics (SPEC G4).

`--gpu-metrics dcgm` (the default) names, types and labels them as NVIDIA's dcgm-exporter
does, so its dashboards work unchanged (NVIDIA's official one selects every panel by
`Hostname`): `DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-…",pci_bus_id="…",device="nvidia0",
modelName="…",Hostname="…",DCGM_FI_DRIVER_VERSION="…"}`. Counters are counters, as its
`default-counters.csv` declares them (docs/dcgm-counters.csv holds the lines runwarden
claims, with the date they were taken), and, as there, their samples carry no `_total`.
On a node whose dcgm-exporter is scraped already (the GPU Operator's default), `runwarden`
names the same series `runwarden_gpu_*` (Prometheus' conventions: units, `_total`,
snake-case labels) so nothing is counted twice under one name, and `off` leaves them out.
The profiling series (`DCGM_FI_PROF_*`) need DCGM itself and are not emitted.

The series are rendered from the latest sample of the watched GPUs when scraped; the
monitor's own series (findings, sample cost, on/off) are on runwarden's registry.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from runwarden._core import GpuFinding, GpuMonitoring, GpuSamples

Mode = Literal["dcgm", "runwarden", "off"]
Sample = Mapping[str, Any]
LABELS = {
    "dcgm": ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
             "DCGM_FI_DRIVER_VERSION"),
    "runwarden": ("gpu", "uuid", "pci_bus_id", "device", "model_name", "hostname",
                  "driver_version"),
}  # fmt: skip
MIB = 1 << 20


def _nested(table: str, key: str) -> Callable[[Sample], float | None]:
    def read(s: Sample) -> float | None:
        values = s[table]
        return None if values is None else float(values[key])

    return read


def _ecc(key: str) -> Callable[[Sample], float | None]:
    return lambda s: s["ecc"][key]


def _mib(key: str) -> Callable[[Sample], float | None]:
    return lambda s: None if s[key] is None else s[key] // MIB


def _free_mib(s: Sample) -> float | None:
    if s["memory_total_bytes"] is None or s["memory_used_bytes"] is None:
        return None
    return float((s["memory_total_bytes"] - s["memory_used_bytes"]) // MIB)


# (dcgm-exporter's name, runwarden's name, type, help, how to read it from a sample; None:
# the GPU does not report it). The XID series is fed by findings, not samples.
SERIES: list[tuple[str, str, str, str, Callable[[Sample], float | None]]] = [
    ("DCGM_FI_DEV_SM_CLOCK", "runwarden_gpu_sm_clock_mhz", "gauge",
     "SM clock frequency (in MHz).", lambda s: s["sm_clock_mhz"]),
    ("DCGM_FI_DEV_MEM_CLOCK", "runwarden_gpu_memory_clock_mhz", "gauge",
     "Memory clock frequency (in MHz).", lambda s: s["memory_clock_mhz"]),
    ("DCGM_FI_DEV_MEMORY_TEMP", "runwarden_gpu_memory_temperature_celsius", "gauge",
     "Memory temperature (in C).", lambda s: s["memory_temperature_c"]),
    ("DCGM_FI_DEV_GPU_TEMP", "runwarden_gpu_temperature_celsius", "gauge",
     "GPU temperature (in C).", lambda s: s["temperature_c"]),
    ("DCGM_FI_DEV_POWER_USAGE", "runwarden_gpu_power_watts", "gauge", "Power draw (in W).",
     lambda s: None if s["power_mw"] is None else s["power_mw"] / 1000),
    ("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", "runwarden_gpu_energy_millijoules", "counter",
     "Total energy consumption since boot (in mJ).", lambda s: s["energy_mj"]),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "runwarden_gpu_pcie_replays", "counter",
     "Total number of PCIe retries.", lambda s: s["pcie_replays"]),
    ("DCGM_FI_DEV_GPU_UTIL", "runwarden_gpu_utilization_percent", "gauge",
     "GPU utilization (in %).", lambda s: s["gpu_utilization"]),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "runwarden_gpu_memory_utilization_percent", "gauge",
     "Memory utilization (in %).", lambda s: s["memory_utilization"]),
    ("DCGM_FI_DEV_FB_FREE", "runwarden_gpu_memory_free_mib", "gauge",
     "Framebuffer memory free (in MiB).", _free_mib),
    ("DCGM_FI_DEV_FB_USED", "runwarden_gpu_memory_used_mib", "gauge",
     "Framebuffer memory used (in MiB).", _mib("memory_used_bytes")),
    ("DCGM_FI_DEV_CLOCK_THROTTLE_REASONS", "runwarden_gpu_clock_throttle_reasons", "gauge",
     "Current clock throttle reasons (bitmask).", lambda s: s["throttle_reasons"]),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "runwarden_gpu_ecc_corrected_volatile", "counter",
     "Total number of single-bit volatile ECC errors.", _ecc("volatile_corrected")),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "runwarden_gpu_ecc_uncorrected_volatile", "counter",
     "Total number of double-bit volatile ECC errors.", _ecc("volatile_uncorrected")),
    ("DCGM_FI_DEV_ECC_SBE_AGG_TOTAL", "runwarden_gpu_ecc_corrected_aggregate", "counter",
     "Total number of single-bit persistent ECC errors.", _ecc("aggregate_corrected")),
    ("DCGM_FI_DEV_ECC_DBE_AGG_TOTAL", "runwarden_gpu_ecc_uncorrected_aggregate", "counter",
     "Total number of double-bit persistent ECC errors.", _ecc("aggregate_uncorrected")),
    ("DCGM_FI_DEV_RETIRED_SBE", "runwarden_gpu_retired_pages_single_bit", "counter",
     "Total number of retired pages due to single-bit errors.",
     _nested("retired_pages", "single_bit")),
    ("DCGM_FI_DEV_RETIRED_DBE", "runwarden_gpu_retired_pages_double_bit", "counter",
     "Total number of retired pages due to double-bit errors.",
     _nested("retired_pages", "double_bit")),
    ("DCGM_FI_DEV_RETIRED_PENDING", "runwarden_gpu_retired_pages_pending", "counter",
     "Total number of pages pending retirement.", _nested("retired_pages", "pending")),
    ("DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS", "runwarden_gpu_remapped_rows_uncorrectable",
     "counter", "Number of remapped rows for uncorrectable errors",
     _nested("remapped_rows", "uncorrectable")),
    ("DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS", "runwarden_gpu_remapped_rows_correctable",
     "counter", "Number of remapped rows for correctable errors",
     _nested("remapped_rows", "correctable")),
    ("DCGM_FI_DEV_ROW_REMAP_PENDING", "runwarden_gpu_row_remap_pending", "gauge",
     "Whether remapping of rows is pending", _nested("remapped_rows", "pending")),
    ("DCGM_FI_DEV_ROW_REMAP_FAILURE", "runwarden_gpu_row_remap_failure", "gauge",
     "Whether remapping of rows has failed", _nested("remapped_rows", "failure")),
]  # fmt: skip
XID_SERIES = ("DCGM_FI_DEV_XID_ERRORS", "runwarden_gpu_last_xid", "gauge",
              "Value of the last XID error encountered.")  # fmt: skip


class GpuMetrics:
    """The GPU series, updated from the core's GPU events and rendered when scraped."""

    def __init__(
        self,
        registry: CollectorRegistry,
        mode: Mode = "dcgm",
        driver_version: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.mode = mode
        self.hostname = socket.gethostname()
        self.driver_version = ""
        self._driver_version = driver_version
        self._samples: dict[int, Sample] = {}
        self._last_xid: dict[int, int] = {}
        self.findings = Counter(
            "runwarden_gpu_findings",
            "GPU warnings and faults found (SPEC G2, G3), by rule and severity",
            ["rule", "severity"],
            registry=registry,
        )
        self.sample_duration = Gauge(
            "runwarden_gpu_sample_duration_seconds",
            "What the last NVML sample of the watched GPUs cost",
            registry=registry,
        )
        self.enabled = Gauge(
            "runwarden_gpu_monitoring",
            "1 while GPU monitoring runs, 0 when it is off (no NVML driver)",
            registry=registry,
        )

    def record(self, event: GpuSamples | GpuFinding | GpuMonitoring) -> None:
        if isinstance(event, GpuSamples):
            if not self.driver_version:
                self.driver_version = self._driver_version() or ""
            self.sample_duration.set(event.cost_seconds)
            self._samples = {int(s["index"]): s for s in event.samples}
        elif isinstance(event, GpuFinding):
            self.findings.labels(event.rule, event.severity).inc()
            if event.xid is not None and event.gpu is not None:
                self._last_xid[event.gpu] = event.xid
        else:
            self.enabled.set(1 if event.enabled else 0)

    def render(self) -> bytes:
        """The series in Prometheus' text format (0.0.4), as dcgm-exporter writes them."""
        if self.mode == "off" or not self._samples:
            return b""
        dcgm = self.mode == "dcgm"
        labels = {index: self._labels(sample) for index, sample in self._samples.items()}
        lines: list[str] = []
        for dcgm_name, own_name, kind, help_text, read in SERIES:
            rows = [(labels[i], read(s)) for i, s in sorted(self._samples.items())]
            lines += _family(dcgm_name if dcgm else own_name, kind, help_text, rows, dcgm)
        xid_rows = [(labels[i], float(x)) for i, x in sorted(self._last_xid.items()) if i in labels]
        dcgm_name, own_name, kind, help_text = XID_SERIES
        lines += _family(dcgm_name if dcgm else own_name, kind, help_text, xid_rows, dcgm)
        return ("\n".join(lines) + "\n").encode() if lines else b""

    def _labels(self, sample: Sample) -> str:
        index = int(sample["index"])
        values = (str(index), sample["uuid"] or "", sample["pci_bus_id"] or "", f"nvidia{index}",
                  sample["name"] or "", self.hostname, self.driver_version)  # fmt: skip
        names = LABELS[self.mode]
        return ",".join(f'{k}="{_escape(v)}"' for k, v in zip(names, values, strict=True))


def _family(
    name: str, kind: str, help_text: str, rows: Sequence[tuple[str, float | None]], dcgm: bool
) -> list[str]:
    present = [(labels, value) for labels, value in rows if value is not None]
    if not present:
        return []
    # dcgm-exporter's counters carry no `_total`; runwarden's own follow the conventions
    # (and prometheus_client's text format: the `_total` name on every line).
    if not dcgm and kind == "counter":
        name = f"{name}_total"
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    out += [f"{name}{{{labels}}} {_number(value)}" for labels, value in present]
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
