"""SPEC G through `runwarden serve`: a real sidecar in front of a real app, its GPUs played
by the fake NVML driver. Each fatal rule ends in the gpu_fault exit code, named in the log
and in /status; warnings keep the runner; a hung NVML call leaves /livez answering.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import AppServer, Runwarden, clean_env, parse_metrics, poll
from runwarden import exit_codes
from runwarden.testing import STATE_ENV, FakeNvml, fake_nvml_dir

GPU_FAULT = exit_codes.BY_REASON["gpu_fault"]


@pytest.fixture(scope="module")
def fake_library() -> str:
    return str(fake_nvml_dir() / "libnvidia-ml.so.1")


def serve_with_gpus(
    runwarden: Callable[..., Runwarden],
    app_server: AppServer,
    fake_library: str,
    nvml: FakeNvml,
    *options: str,
) -> Runwarden:
    rw = runwarden(
        app_server.url,
        "--nvml-library", fake_library,
        "--drain-timeout-seconds", "10",
        *options,
        env=clean_env(**{STATE_ENV: str(nvml.path)}),
        wait_ready=True,
    )  # fmt: skip

    def sampled() -> bool:
        gpu: Any = rw.status()["gpu"]
        # Sampled, and listening for events: one injected earlier would not reach it.
        registered = all(g["events"] != "pending" for g in gpu["watched"])
        return bool(gpu["enabled"] and gpu["samples"] and registered)

    poll(sampled)
    return rw


def hold_drain_open(rw: Runwarden, seconds: float = 2.0) -> threading.Thread:
    """One slow request in flight keeps the admin port up while the runner drains."""
    thread = threading.Thread(
        target=lambda: httpx.get(f"{rw.url}/predict", params={"latency": seconds}, timeout=30)
    )
    thread.start()
    poll(lambda: rw.status()["in_flight"] == 1)
    return thread


@pytest.mark.parametrize(
    ("rule", "sample_seconds", "bound", "inject"),
    [
        ("critical_xid", "5", 1.0, lambda n: n.inject_xid(1, 79)),
        ("gpu_lost", "5", 1.0, lambda n: n.lose_gpu(1)),
        ("uncorrectable_ecc", "1", 2.0, lambda n: n.set_gpu(1, ecc={"uncorrected_volatile": 1})),
        ("row_remap_failure", "1", 2.0, lambda n: n.set_gpu(1, remapped_rows={"failure": True})),
        ("retired_pages", "1", 2.0, lambda n: n.set_gpu(1, retired_pages={"double_bit": 63})),
        ("reset_required", "1", 2.0, lambda n: n.set_return("nvmlDeviceGetTemperature", 16, 1)),
        ("event_wait_failed", "5", 1.0, lambda n: n.set_return("nvmlEventSetWait", 999)),
    ],
)
def test_G2_each_fatal_rule_exits_with_gpu_fault_named_in_log_and_status(
    runwarden: Callable[..., Runwarden],
    app_server: AppServer,
    fake_library: str,
    tmp_path: Path,
    rule: str,
    sample_seconds: str,
    bound: float,
    inject: Callable[[FakeNvml], object],
) -> None:
    nvml = FakeNvml(tmp_path / "gpus.json")
    nvml.reset(gpus=4)
    rw = serve_with_gpus(
        runwarden, app_server, fake_library, nvml, "--gpu-sample-seconds", sample_seconds
    )
    slow = hold_drain_open(rw)
    injected = time.monotonic()
    inject(nvml)
    status: Any = poll(lambda: (s := rw.status())["state"] == "replacing" and s, timeout=15)
    elapsed = time.monotonic() - injected
    assert elapsed <= bound + 0.25, f"{rule}: {elapsed:.2f}s from injection to verdict"
    assert status["reason"] == "gpu_fault"
    assert status["detail"].startswith(rule)
    assert any(f["rule"] == rule and f["severity"] == "fatal" for f in status["gpu"]["findings"])
    assert rw.wait_exit() == GPU_FAULT
    slow.join()
    log = rw.log()
    assert f"exiting with code {GPU_FAULT} (gpu_fault): {rule}" in log, log
    assert app_server.state()["received"] == 1, "the in-flight request was served"


def test_G2_a_hung_nvml_call_is_fatal_at_the_deadline_and_livez_still_answers(
    runwarden: Callable[..., Runwarden],
    app_server: AppServer,
    fake_library: str,
    tmp_path: Path,
) -> None:
    nvml = FakeNvml(tmp_path / "gpus.json")
    nvml.reset(gpus=2)
    rw = serve_with_gpus(
        runwarden, app_server, fake_library, nvml,
        "--gpu-sample-seconds", "0.2", "--nvml-watchdog-seconds", "2",
    )  # fmt: skip
    slow = hold_drain_open(rw, seconds=5.0)
    try:
        injected = time.monotonic()
        nvml.hang("nvmlDeviceGetPowerUsage", 60)
        livez_while_hung = []
        while True:
            livez = httpx.get(f"{rw.admin_url}/livez", timeout=1).status_code
            if rw.status()["state"] == "replacing":
                break  # this /livez may have come after the verdict: not counted
            livez_while_hung.append(livez)
            assert time.monotonic() - injected < 10
        elapsed = time.monotonic() - injected
        # The next sample (≤ 0.2 s) enters the hang; the verdict is 2 s after it.
        assert 2.0 - 0.5 <= elapsed <= 2.0 + 0.2 + 0.5
        assert livez_while_hung and set(livez_while_hung) == {200}
        assert rw.wait_exit() == GPU_FAULT
        assert "nvml_hung: nvmlDeviceGetPowerUsage did not return within 2s" in rw.log()
    finally:
        nvml.reset(gpus=2)
        slow.join()


def test_G3_warnings_keep_the_runner_and_a_sustained_one_promoted_replaces(
    runwarden: Callable[..., Runwarden],
    app_server: AppServer,
    fake_library: str,
    tmp_path: Path,
) -> None:
    nvml = FakeNvml(tmp_path / "gpus.json")
    nvml.reset(gpus=2)
    rw = serve_with_gpus(
        runwarden, app_server, fake_library, nvml,
        "--gpu-sample-seconds", "0.2", "--gpu-promote-warnings", "power_brake=1.5",
    )  # fmt: skip
    nvml.set_gpu(0, temperature=96)
    nvml.inject_xid(0, 94)

    def warned() -> Any:
        gpu: Any = rw.status()["gpu"]
        rules = {(f["rule"], f["severity"]) for f in gpu["findings"]}
        return {("temperature", "warning"), ("warning_xid", "warning")} <= rules and gpu

    gpu = poll(warned)
    assert rw.status()["state"] == "ready", "warnings do not replace"
    assert httpx.get(f"{rw.url}/predict").status_code == 200
    metrics = httpx.get(f"{rw.admin_url}/metrics").text
    assert re.search(
        r'^DCGM_FI_DEV_GPU_TEMP\{gpu="0",UUID="GPU-[0-9a-f-]+",pci_bus_id="00000000:18:00.0",'
        r'device="nvidia0",modelName="[^"]+",Hostname="[^"]+",'
        r'DCGM_FI_DRIVER_VERSION="550.54.15"\} 96$',
        metrics,
        re.MULTILINE,
    ), metrics
    findings = parse_metrics(metrics)
    assert findings['runwarden_gpu_findings_total{rule="temperature",severity="warning"}'] == 1
    assert "DCGM_FI_DEV_XID_ERRORS" in metrics
    assert gpu["active_warnings"][0]["rule"] == "temperature"

    injected = time.monotonic()
    nvml.set_gpu(1, throttle_reasons=0x80)
    assert rw.wait_exit() == GPU_FAULT
    assert time.monotonic() - injected >= 1.5
    assert "power_brake on GPU 1" in rw.log() and "sustained for" in rw.log()


def _reasons(document: Any) -> set[str]:
    """Every value of a `reason` key anywhere in a JSON document."""
    found: set[str] = set()
    if isinstance(document, dict):
        for key, value in document.items():
            if key == "reason" and value is not None:
                found.add(value)
            found |= _reasons(value)
    elif isinstance(document, list):
        for item in document:
            found |= _reasons(item)
    return found


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        ("sigterm", "shutdown"),
        ("app_503", "app_503"),
        ("gpu_fault", "gpu_fault"),
    ],
)
def test_D4_status_shows_one_reason_everywhere_equal_to_the_exit_code(
    runwarden: Callable[..., Runwarden],
    app_server: AppServer,
    fake_library: str,
    tmp_path: Path,
    first: str,
    reason: str,
) -> None:
    """D4 (issue 10): whatever comes first, a signal, a 503 or a GPU fault, and whatever
    follows it (the others), `/status` shows one reason all through the document, with the
    exit code the process then exits with. The core owns the verdict; nothing keeps a copy."""
    import signal as signals

    nvml = FakeNvml(tmp_path / "gpus.json")
    nvml.reset(gpus=2)
    rw = serve_with_gpus(runwarden, app_server, fake_library, nvml)
    slow = hold_drain_open(rw, seconds=3.0)
    causes = {
        "sigterm": lambda: rw.proc.send_signal(signals.SIGTERM),
        "app_503": lambda: httpx.get(f"{rw.url}/predict", params={"status": "503"}),
        "gpu_fault": lambda: nvml.inject_xid(0, 79),
    }
    causes.pop(first)()
    status: Any = poll(lambda: (s := rw.status())["reason"] and s)
    for cause in causes.values():  # the later ones change nothing
        cause()
    # Each later cause has been heard: the fault found, the signal logged.
    if "gpu_fault" in causes:
        poll(lambda: any(f["rule"] == "critical_xid" for f in rw.status()["gpu"]["findings"]))
    if "sigterm" in causes:
        poll(lambda: "received SIGTERM while draining" in rw.log())
    status = rw.status()
    assert _reasons(status) == {reason}, status
    expected = exit_codes.CLEAN if reason == "shutdown" else exit_codes.BY_REASON[reason]
    assert status["exit_code"] == expected
    assert status["state"] == ("stopping" if reason == "shutdown" else "replacing")
    assert rw.wait_exit() == expected
    slow.join()
