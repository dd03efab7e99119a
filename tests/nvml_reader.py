"""Read every GPU through nvidia-ml-py and print runwarden's sample fields as JSON.

Run with LD_LIBRARY_PATH naming the directory of the libnvidia-ml.so.1 to read (the binding
loads the driver by name, once, when the process starts).
"""

from __future__ import annotations

import json

import pynvml as n
from runwarden.testing.nvml_reference import read_sample

if __name__ == "__main__":
    n.nvmlInit()
    try:
        handles = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
        samples = [
            read_sample(
                h,
                i,
                n.nvmlDeviceGetUUID(h),
                n.nvmlDeviceGetName(h),
                n.nvmlDeviceGetPciInfo_v3(h).busId,
            )
            for i, h in enumerate(handles)
        ]
        print(json.dumps(samples))
    finally:
        n.nvmlShutdown()
