"""SPEC G7 and G8, the compute canary, black box through `runwarden serve`: its GPUs played by
the fault kit's fake NVML and fake CUDA drivers, driven by one state file."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import AppServer, Runwarden, clean_env, poll
from runwarden import exit_codes
from runwarden.testing import STATE_ENV, FakeNvml, fake_nvml_dir

GPU_FAULT = exit_codes.BY_REASON["gpu_fault"]


@pytest.fixture(scope="module")
def fakes() -> Path:
    return fake_nvml_dir()


@pytest.fixture
def nvml(tmp_path: Path) -> FakeNvml:
    fake = FakeNvml(tmp_path / "gpus.json")
    fake.reset(gpus=2)
    return fake


def serve(
    runwarden: Callable[..., Runwarden],
    app: AppServer,
    fakes: Path,
    nvml: FakeNvml,
    *options: str,
) -> Runwarden:
    return runwarden(  # type: ignore[no-any-return]
        app.url,
        "--nvml-library", str(fakes / "libnvidia-ml.so.1"),
        "--cuda-library", str(fakes / "libcuda.so.1"),
        "--gpu-canary-seconds", "0.5", "--gpu-canary-timeout-seconds", "1",
        *options,
        env=clean_env(**{STATE_ENV: str(nvml.path)}),
        wait_ready=True,
    )  # fmt: skip


def canary(rw: Runwarden) -> dict[str, Any]:
    return rw.status()["gpu"]["canary"]  # type: ignore[index,no-any-return]


def passed_on_every_gpu(rw: Runwarden) -> bool:
    last = canary(rw)["last"]
    return len(last) == 2 and all(r["outcome"] == "pass" for r in last)


def test_G7_the_canary_passes_on_every_watched_gpu_and_is_counted(
    runwarden: Callable[..., Runwarden], app_server: AppServer, fakes: Path, nvml: FakeNvml
) -> None:
    rw = serve(runwarden, app_server, fakes, nvml)
    poll(lambda: passed_on_every_gpu(rw))
    assert canary(rw)["enabled"] is True
    metrics = rw.metrics()
    assert metrics["runwarden_canary_runs_total"] >= 2
    assert metrics['runwarden_canary_failures_total{outcome="mismatch"}'] == 0


@pytest.mark.parametrize(
    ("inject", "rule", "bound"),
    [
        (lambda n: n.set_cuda(1, wrong=True), "canary_mismatch", 0.5),
        (lambda n: n.set_cuda(1, hang_seconds=60), "canary_hang", 1.0 + 0.5),
        (lambda n: n.set_cuda(1, error=214), "canary_error", 0.5),
    ],
    ids=["wrong answer", "hang", "uncorrectable ECC"],
)
def test_G7_a_gpu_that_computes_wrong_hangs_or_fails_is_a_gpu_fault(
    runwarden: Callable[..., Runwarden],
    app_server: AppServer,
    fakes: Path,
    nvml: FakeNvml,
    tmp_path: Path,
    inject: Callable[[FakeNvml], object],
    rule: str,
    bound: float,
) -> None:
    why = tmp_path / "termination"
    rw = serve(runwarden, app_server, fakes, nvml, "--termination-message-path", str(why))
    poll(lambda: passed_on_every_gpu(rw))
    injected = time.monotonic()
    inject(nvml)
    assert rw.wait_exit() == GPU_FAULT
    # With nothing in flight the drain is immediate: the exit is the verdict's time. One
    # canary period (plus the timeout for a hang), with a shared machine's margin.
    elapsed = time.monotonic() - injected
    assert elapsed <= bound + 1.5, f"{rule}: {elapsed:.2f}s"
    exit_line = f"exiting with code {GPU_FAULT} (gpu_fault): {rule} on GPU 1 (GPU-"
    assert exit_line in rw.log(), rw.log()
    assert exit_line in why.read_text()


def test_G7_out_of_memory_is_a_warning_and_the_runner_stays_ready(
    runwarden: Callable[..., Runwarden], app_server: AppServer, fakes: Path, nvml: FakeNvml
) -> None:
    rw = serve(runwarden, app_server, fakes, nvml)
    poll(lambda: passed_on_every_gpu(rw))
    nvml.set_cuda(0, oom=True)
    poll(lambda: any(r["outcome"] == "unavailable" for r in canary(rw)["last"]))
    time.sleep(1.0)  # two more periods: still no verdict
    status = rw.status()
    assert status["state"] == "ready" and rw.proc.poll() is None
    assert rw.log().count("canary_unavailable on GPU 0") == 1, "said once, when it began"
    assert "CUDA_ERROR_OUT_OF_MEMORY" in rw.log()


def test_G7_only_the_watched_gpus_are_tested(
    runwarden: Callable[..., Runwarden], app_server: AppServer, fakes: Path, nvml: FakeNvml
) -> None:
    nvml.set_cuda(0, wrong=True)  # GPU 0 is not this runner's
    rw = serve(runwarden, app_server, fakes, nvml, "--gpus", "1")
    poll(lambda: canary(rw)["runs"] >= 3)
    assert [r["gpu"] for r in canary(rw)["last"]] == [1]
    assert rw.status()["state"] == "ready" and rw.proc.poll() is None


def test_G7_post_canary_runs_it_for_trusted_sources_only(
    runwarden: Callable[..., Runwarden], app_server: AppServer, fakes: Path, nvml: FakeNvml
) -> None:
    trusted = serve(runwarden, app_server, fakes, nvml, "--gpu-canary-seconds", "off")
    assert canary(trusted)["runs"] == 0
    answer = httpx.post(f"{trusted.admin_url}/canary", timeout=5)
    assert answer.status_code == 202, answer.text
    poll(lambda: passed_on_every_gpu(trusted))
    assert httpx.get(f"{trusted.admin_url}/canary", timeout=5).status_code == 405
    untrusted = serve(
        runwarden, app_server, fakes, nvml, "--gpu-canary-seconds", "off",
        "--check-trusted-sources", "10.0.0.1",
    )  # fmt: skip
    assert httpx.post(f"{untrusted.admin_url}/canary", timeout=5).status_code == 403
    time.sleep(0.5)
    assert canary(untrusted)["runs"] == 0


def test_G7_a_failed_check_runs_the_canary(
    runwarden: Callable[..., Runwarden], app_server: AppServer, fakes: Path, nvml: FakeNvml
) -> None:
    rw = serve(runwarden, app_server, fakes, nvml, "--gpu-canary-seconds", "off",
               "--failure-threshold", "100")  # fmt: skip
    assert canary(rw)["runs"] == 0
    app_server.set_health("fail500")
    poll(lambda: passed_on_every_gpu(rw))


def test_G7_without_cuda_the_canary_is_off_said_once(
    runwarden: Callable[..., Runwarden], app_server: AppServer, fakes: Path, nvml: FakeNvml,
    tmp_path: Path,
) -> None:  # fmt: skip
    rw = serve(runwarden, app_server, fakes, nvml, "--cuda-library", str(tmp_path / "none.so"))
    poll(lambda: canary(rw)["enabled"] is False)
    assert "none.so" in canary(rw)["detail"]
    time.sleep(0.6)
    assert rw.log().count("the compute canary is off") == 1
    assert rw.status()["state"] == "ready"


def test_G7_with_exclusive_checks_the_canary_runs_between_requests(
    runwarden: Callable[..., Runwarden], app_server: AppServer, fakes: Path, nvml: FakeNvml
) -> None:
    """Q1's window: asked while a request is at the app, the canary waits for it to end."""
    rw = serve(runwarden, app_server, fakes, nvml, "--gpu-canary-seconds", "off",
               "--no-call-regularly", "--timeout-seconds", "3")  # fmt: skip
    held = threading.Thread(
        target=lambda: httpx.get(f"{rw.url}/hold", params={"seconds": "1.5"}, timeout=10)
    )
    held.start()
    poll(lambda: app_server.state()["holding"] == 1)
    asked = time.monotonic()
    assert httpx.post(f"{rw.admin_url}/canary", timeout=5).status_code == 202
    poll(lambda: passed_on_every_gpu(rw))
    ran_after = time.monotonic() - asked
    held.join()
    assert ran_after >= 1.0, f"the canary ran {ran_after:.2f}s after it was asked"


MIG = "MIG-c6d4f1ef-42e4-5de3-91c7-45d71585b8ae"


def test_G7_a_mig_instance_named_by_cuda_visible_devices_is_tested(
    runwarden: Callable[..., Runwarden], app_server: AppServer, fakes: Path, nvml: FakeNvml
) -> None:
    """GPU 1 is in MIG mode: CUDA shows it only as the instance CUDA_VISIBLE_DEVICES names
    (its device 0), and that is where the canary runs, wrong answers caught as on a GPU."""
    nvml.set_gpu(1, mig_uuids=[MIG])
    rw = runwarden(
        app_server.url,
        "--nvml-library", str(fakes / "libnvidia-ml.so.1"),
        "--cuda-library", str(fakes / "libcuda.so.1"),
        "--gpu-canary-seconds", "0.5", "--gpu-canary-timeout-seconds", "1",
        env=clean_env(**{STATE_ENV: str(nvml.path), "CUDA_VISIBLE_DEVICES": MIG}),
        wait_ready=True,
    )  # fmt: skip
    poll(lambda: canary(rw)["last"])
    last = canary(rw)["last"]
    assert [(r["gpu"], r["outcome"]) for r in last] == [(1, "pass")], last
    nvml.set_cuda(1, wrong=True)
    assert rw.wait_exit() == GPU_FAULT
    assert "canary_mismatch on GPU 1" in rw.log()


def test_G7_a_mig_instance_cuda_does_not_show_is_unavailable_and_says_how(
    runwarden: Callable[..., Runwarden], app_server: AppServer, fakes: Path, nvml: FakeNvml
) -> None:
    nvml.set_gpu(1, mig_uuids=[MIG])
    rw = serve(runwarden, app_server, fakes, nvml, "--gpus", MIG)
    poll(lambda: canary(rw)["last"])
    (run,) = canary(rw)["last"]
    assert (run["gpu"], run["outcome"]) == (1, "unavailable")
    assert f"start runwarden with CUDA_VISIBLE_DEVICES={MIG}" in run["detail"]
    assert rw.status()["state"] == "ready"
