"""SPEC G8: the fault kit's fake `libcuda.so.1` is read by CUDA's own Python bindings
(cuda-bindings) as a driver: the same GPUs, names and UUIDs as the fake NVML shows, from the
same state file. What it computes is tested through runwarden's canary (test_canary.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runwarden.testing import STATE_ENV, FakeNvml, fake_nvml_dir

pytest.importorskip("cuda.bindings")

READ = """
import json
from cuda.bindings import driver as cu
(err,) = cu.cuInit(0)
assert err == cu.CUresult.CUDA_SUCCESS, err
err, count = cu.cuDeviceGetCount()
gpus = []
for ordinal in range(count):
    err, dev = cu.cuDeviceGet(ordinal)
    err, uuid = cu.cuDeviceGetUuid(dev)
    err, name = cu.cuDeviceGetName(96, dev)
    gpus.append({"uuid": bytes(uuid.bytes).hex(), "name": name.split(b"\\0")[0].decode()})
err, version = cu.cuDriverGetVersion()
print(json.dumps({"gpus": gpus, "version": version}))
"""


def read_with_cuda_bindings(state: Path, visible: str | None = None) -> dict[str, object]:
    env = {**os.environ, STATE_ENV: str(state), "LD_LIBRARY_PATH": str(fake_nvml_dir())}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    done = subprocess.run(
        [sys.executable, "-c", READ], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_G8_cuda_bindings_read_the_gpus_the_state_describes(tmp_path: Path) -> None:
    nvml = FakeNvml(tmp_path / "gpus.json")
    nvml.reset(gpus=3)
    nvml.set_gpu(2, name="NVIDIA H200", uuid="GPU-12345678-9abc-def0-1234-56789abcdef0")
    seen = read_with_cuda_bindings(nvml.path)
    assert seen["version"] == 12040
    gpus = seen["gpus"]
    assert isinstance(gpus, list) and len(gpus) == 3
    assert gpus[0] == {"uuid": "00000000000040008000000000000000", "name": "NVIDIA H100 80GB HBM3"}
    assert gpus[2] == {"uuid": "123456789abcdef0123456789abcdef0", "name": "NVIDIA H200"}


def test_G8_cuda_visible_devices_picks_gpus_and_mig_instances_as_cuda_does(
    tmp_path: Path,
) -> None:
    """A GPU in MIG mode is a CUDA device only as the instance `MIG-<uuid>` names; entries
    are taken in order, and the first that names nothing ends the list."""
    mig = "MIG-c6d4f1ef-42e4-5de3-91c7-45d71585b8ae"
    nvml = FakeNvml(tmp_path / "gpus.json")
    nvml.reset(gpus=3)
    nvml.set_gpu(1, mig_uuids=[mig])

    def uuids(visible: str | None) -> list[str]:
        gpus = read_with_cuda_bindings(nvml.path, visible)["gpus"]
        assert isinstance(gpus, list)
        return [str(g["uuid"]) for g in gpus]

    gpu0, gpu2 = "00000000000040008000000000000000", "00000000000040008000000000000002"
    instance = "c6d4f1ef42e45de391c745d71585b8ae"
    assert uuids(None) == [gpu0, gpu2]
    assert uuids(mig) == [instance]
    assert uuids(f"2,{mig},0") == [gpu2, instance, gpu0]
    assert uuids("GPU-00000000-0000-4000-8000-000000000002") == [gpu2]
    assert uuids("0,1,2") == [gpu0]  # GPU 1 itself is no CUDA device in MIG mode
