"""The `gpu` section: benches/gpu_check.py (NVML side by side with nvidia-ml-py, `serve` on
the GPU host, the compute canary) against the real drivers where `nvidia-smi` is, else, and
always with `--smoke`, against the fault kit's fake NVML and CUDA drivers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from benches.common import PYTHON, ROOT, Profile, log


def run(profile: Profile, tmp: Path) -> dict[str, Any]:
    out = tmp / "gpu_check.json"
    args = [PYTHON, "-m", "benches.gpu_check", "--json", str(out)]
    real = not profile.smoke and shutil.which("nvidia-smi") is not None
    if not real:
        from runwarden.testing import fake_nvml_dir

        args += ["--nvml-library", str(fake_nvml_dir() / "libnvidia-ml.so.1")]
    if profile.smoke:
        args += ["--samples", "10", "--canary-rounds", "2"]
    log(f"   gpu_check against the {'real' if real else 'fake'} drivers")
    code = subprocess.call(args, cwd=ROOT, stdout=subprocess.DEVNULL)
    if code != 0:
        raise RuntimeError(f"benches.gpu_check failed (exit {code}); its log is above")
    report: dict[str, Any] = json.loads(out.read_text())
    report["drivers"] = "real" if real else "fake"
    return report
