"""runwarden's sample fields (SPEC G1) read through NVIDIA's own binding, nvidia-ml-py: the
reference the fake driver is kept honest against (tests), and the sampler a user would write
(benches). The result has the shape of runwarden's `GpuSamples.samples` entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pynvml as n  # type: ignore[import-untyped]

T = TypeVar("T")


def supported(read: Callable[[], T]) -> T | None:
    """A read, or None where this GPU does not support it (as runwarden's sampler records it:
    retired pages on Hopper, memory temperature on GDDR boards)."""
    try:
        return read()
    except n.NVMLError_NotSupported:
        return None


def read_sample(handle: Any, index: int, uuid: str, name: str, pci_bus_id: str) -> dict[str, Any]:
    """Every G1 field of one GPU; `uuid`, `name` and `pci_bus_id` never change, so the caller
    reads them once."""
    h = handle
    util = n.nvmlDeviceGetUtilizationRates(h)
    memory = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    rows = supported(lambda: n.nvmlDeviceGetRemappedRows(h))

    def ecc(error: int, counter: int) -> int | None:
        return supported(lambda: int(n.nvmlDeviceGetTotalEccErrors(h, error, counter)))

    def retired_pages() -> dict[str, Any]:
        single = n.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
        double = n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR
        return {
            "single_bit": len(n.nvmlDeviceGetRetiredPages(h, single)),
            "double_bit": len(n.nvmlDeviceGetRetiredPages(h, double)),
            "pending": n.nvmlDeviceGetRetiredPagesPendingStatus(h) == n.NVML_FEATURE_ENABLED,
        }

    corrected, uncorrected = (
        n.NVML_MEMORY_ERROR_TYPE_CORRECTED,
        n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
    )
    fields = supported(lambda: n.nvmlDeviceGetFieldValues(h, [n.NVML_FI_DEV_MEMORY_TEMP]))
    memory_temp = fields[0] if fields else None
    return {
        "index": index,
        "uuid": uuid,
        "name": name,
        "pci_bus_id": pci_bus_id,
        "temperature_c": n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
        "memory_temperature_c": (
            memory_temp.value.uiVal if memory_temp and memory_temp.nvmlReturn == 0 else None
        ),
        "sm_clock_mhz": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
        "memory_clock_mhz": n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM),
        "throttle_reasons": n.nvmlDeviceGetCurrentClocksThrottleReasons(h),
        "power_mw": n.nvmlDeviceGetPowerUsage(h),
        "gpu_utilization": util.gpu,
        "memory_utilization": util.memory,
        "memory_used_bytes": memory.used,
        "memory_total_bytes": memory.total,
        "energy_mj": supported(lambda: n.nvmlDeviceGetTotalEnergyConsumption(h)),
        "pcie_replays": supported(lambda: n.nvmlDeviceGetPcieReplayCounter(h)),
        "ecc": {
            "volatile_corrected": ecc(corrected, n.NVML_VOLATILE_ECC),
            "volatile_uncorrected": ecc(uncorrected, n.NVML_VOLATILE_ECC),
            "aggregate_corrected": ecc(corrected, n.NVML_AGGREGATE_ECC),
            "aggregate_uncorrected": ecc(uncorrected, n.NVML_AGGREGATE_ECC),
        },
        "retired_pages": supported(retired_pages),
        "remapped_rows": None
        if rows is None
        else {
            "correctable": rows[0],
            "uncorrectable": rows[1],
            "pending": bool(rows[2]),
            "failure": bool(rows[3]),
        },
    }
