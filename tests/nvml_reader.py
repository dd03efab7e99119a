"""Read every GPU through nvidia-ml-py and print runwarden's sample fields as JSON.

Run with LD_LIBRARY_PATH naming the directory of the libnvidia-ml.so.1 to read.
"""

from __future__ import annotations

import json
from typing import Any

import pynvml as n


def read(index: int) -> dict[str, Any]:
    h = n.nvmlDeviceGetHandleByIndex(index)
    util = n.nvmlDeviceGetUtilizationRates(h)
    memory = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)

    def ecc(error: int, counter: int) -> int:
        return int(n.nvmlDeviceGetTotalEccErrors(h, error, counter))

    rows = n.nvmlDeviceGetRemappedRows(h)
    return {
        "index": index,
        "uuid": n.nvmlDeviceGetUUID(h),
        "name": n.nvmlDeviceGetName(h),
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
            "volatile_corrected": ecc(n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_VOLATILE_ECC),
            "volatile_uncorrected": ecc(n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC),
            "aggregate_corrected": ecc(n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_AGGREGATE_ECC),
            "aggregate_uncorrected": ecc(
                n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_AGGREGATE_ECC
            ),
        },
        "retired_pages": {
            "single_bit": len(
                n.nvmlDeviceGetRetiredPages(
                    h, n.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
                )
            ),
            "double_bit": len(
                n.nvmlDeviceGetRetiredPages(h, n.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
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


if __name__ == "__main__":
    n.nvmlInit()
    try:
        print(json.dumps([read(i) for i in range(n.nvmlDeviceGetCount())]))
    finally:
        n.nvmlShutdown()
