"""SPEC G through the Rust core, against the fake NVML driver loaded like the real one.

Each fault is injected into the fake's state file while the monitor runs; the time from
injection to the `Verdict(gpu_fault)` event is measured against the rule's bound.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runwarden import GpuFinding, GpuMonitoring, GpuSamples, GpuSettings, HealthSettings, Warden
from runwarden.testing import FakeNvml, fake_nvml_dir

# The app is never checked in these tests: a period of an hour keeps the probe quiet.
QUIET = HealthSettings(period_seconds=3600)


@pytest.fixture(scope="session")
def fake_library() -> Path:
    return fake_nvml_dir() / "libnvidia-ml.so.1"


@pytest.fixture
def nvml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    fake = FakeNvml(tmp_path / "gpus.json")
    fake.reset(gpus=8)
    # The fake, loaded into this process, reads the variable at each call.
    monkeypatch.setenv("RUNWARDEN_FAKE_NVML_STATE", str(fake.path))
    yield fake
    fake.reset(gpus=8)  # releases any call still blocked in a hang


async def listening(warden: Warden) -> None:
    """Until every watched GPU's events are registered: an event reaches only the event sets
    that exist when it happens, as with a real driver."""
    for _ in range(1000):
        watched = (warden.gpu_status() or {}).get("watched", [])
        if watched and all(g["events"] != "pending" for g in watched):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"GPU events not registered within 10 s: {warden.gpu_status()}")


def monitor(
    fake_library: Path,
    inject: Callable[[], object],
    *,
    timeout: float = 20.0,
    **settings: Any,
) -> tuple[str, list[GpuFinding], float, dict[str, Any]]:
    """Run the monitor, inject a fault once it has taken its first sample (the baseline the
    rules compare with), wait for the verdict.

    Returns the replacement's detail, the findings, seconds from injection to the verdict,
    and the final GPU status.
    """

    async def scenario() -> tuple[str, list[GpuFinding], float, dict[str, Any]]:
        gpu = GpuSettings(nvml_library=str(fake_library), **settings)
        warden = Warden(QUIET, "http://127.0.0.1:9", gpu)
        findings: list[GpuFinding] = []
        sampled = asyncio.Event()

        def listen(event: GpuSamples | GpuFinding | GpuMonitoring) -> None:
            if isinstance(event, GpuFinding):
                findings.append(event)
            elif isinstance(event, GpuSamples):
                sampled.set()

        warden.on_gpu(listen)
        await warden.start()
        await asyncio.wait_for(sampled.wait(), 10)
        await listening(warden)
        injected = time.monotonic()
        inject()
        verdict = await asyncio.wait_for(warden.decided(), timeout)
        elapsed = time.monotonic() - injected
        status = warden.gpu_status()
        assert status is not None
        await warden.stop()
        assert verdict.reason == "gpu_fault"
        return verdict.detail, findings, elapsed, status

    return asyncio.run(scenario())


def test_G1_sampler_reads_what_nvidia_ml_py_reads(fake_library: Path, nvml: FakeNvml) -> None:
    """The fake is kept honest: runwarden's sampler and nvidia-ml-py agree on every field."""
    for i, (temp, util) in enumerate([(41, 7), (66, 93), (83, 50)]):
        nvml.set_gpu(
            i,
            temperature=temp,
            memory_temperature=temp + 7,
            energy_mj=123_456_789 + i,
            pcie_replay=2 * i,
            sm_clock=1400 + i,
            mem_clock=2600 + i,
            throttle_reasons=0x4 | (i << 3),
            power_mw=300_000 + i,
            gpu_util=util,
            memory_util=util // 2,
            memory={"total": 85_899_345_920, "reserved": 1 << 28, "used": (i + 1) << 32},
            ecc={
                "corrected_volatile": 10 + i,
                "uncorrected_volatile": i,
                "corrected_aggregate": 100 + i,
                "uncorrected_aggregate": 2 * i,
            },
            retired_pages={"single_bit": 3 + i, "double_bit": i, "pending": i == 1},
            remapped_rows={
                "corrected": 5 + i,
                "uncorrected": i,
                "pending": i == 2,
                "failure": False,
            },
        )
    nvml.set_gpu_count(3)
    reader = Path(__file__).with_name("nvml_reader.py")
    env = {**os.environ, "LD_LIBRARY_PATH": str(fake_library.parent)}
    theirs = json.loads(
        subprocess.run(
            [sys.executable, str(reader)], env=env, check=True, capture_output=True, text=True
        ).stdout
    )

    async def ours() -> list[dict[str, Any]]:
        warden = Warden(QUIET, "http://127.0.0.1:9", GpuSettings(nvml_library=str(fake_library)))
        got: asyncio.Future[GpuSamples] = asyncio.get_running_loop().create_future()
        warden.on_gpu(
            lambda e: got.set_result(e) if isinstance(e, GpuSamples) and not got.done() else None
        )
        await warden.start()
        samples = (await asyncio.wait_for(got, 10)).samples
        await warden.stop()
        return samples

    samples = asyncio.run(ours())
    assert len(samples) == len(theirs) == 3
    for mine, other in zip(samples, theirs, strict=True):
        for key, value in other.items():
            assert mine[key] == value, f"GPU {mine['index']} {key}: ours {mine[key]!r}"
        assert not mine["errors"]


def test_G2_critical_xid_replaces_within_a_second(fake_library: Path, nvml: FakeNvml) -> None:
    detail, _, elapsed, status = monitor(
        fake_library, lambda: nvml.inject_xid(5, 79), gpu_sample_seconds=5.0
    )
    assert elapsed < 1.0
    assert detail.startswith("critical_xid on GPU 5 (GPU-")
    assert detail.endswith(": XID 79")
    assert status["findings"][-1]["rule"] == "critical_xid"


def test_G2_gpu_lost_replaces_within_a_second(fake_library: Path, nvml: FakeNvml) -> None:
    detail, _, elapsed, status = monitor(
        fake_library, lambda: nvml.lose_gpu(2), gpu_sample_seconds=5.0
    )
    assert elapsed < 1.0
    # The GPU is named by index and UUID, whichever thread saw it first (issue 17).
    assert detail.startswith("gpu_lost on GPU 2 (GPU-"), detail
    assert status["findings"][-1]["rule"] == "gpu_lost"


def test_G2_a_lost_gpu_fails_its_handle_lookup_once(fake_library: Path, nvml: FakeNvml) -> None:
    """The sampler keeps each GPU's handle between samples; a GPU lost after the first
    sample still shows as one failed handle lookup, not as every call on the old handle."""

    async def lost_sample() -> dict[str, Any]:
        gpu = GpuSettings(gpu_sample_seconds=0.05, nvml_library=str(fake_library))
        warden = Warden(QUIET, "http://127.0.0.1:9", gpu)
        got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def listen(event: GpuSamples | GpuFinding | GpuMonitoring) -> None:
            if not isinstance(event, GpuSamples) or got.done():
                return
            if event.samples[2]["errors"]:
                got.set_result(event.samples[2])
            else:
                nvml.lose_gpu(2)

        warden.on_gpu(listen)
        await warden.start()
        sample = await asyncio.wait_for(got, 10)
        await warden.stop()
        return sample

    sample = asyncio.run(lost_sample())
    assert sample["errors"] == [{"call": "nvmlDeviceGetHandleByIndex_v2", "error": "GPU is lost"}]
    assert sample["uuid"] == "GPU-00000000-0000-4000-8000-000000000002"
    assert sample["temperature_c"] is None


@pytest.mark.parametrize(
    ("rule", "fault"),
    [
        ("uncorrectable_ecc", {"ecc": {"uncorrected_volatile": 1}}),
        ("row_remap_failure", {"remapped_rows": {"failure": True}}),
        ("row_remap_failure", {"remapped_rows": {"uncorrected": 512}}),
        ("retired_pages", {"retired_pages": {"single_bit": 60, "double_bit": 3}}),
    ],
)
def test_G2_fatal_readings_replace_within_a_sample_period(
    fake_library: Path, nvml: FakeNvml, rule: str, fault: dict[str, Any]
) -> None:
    detail, _, elapsed, _ = monitor(
        fake_library, lambda: nvml.set_gpu(6, **fault), gpu_sample_seconds=1.0
    )
    assert detail.startswith(f"{rule} on GPU 6")
    assert elapsed < 1.0 + 1.0


def test_G2_the_gpu_count_dropping_replaces(fake_library: Path, nvml: FakeNvml) -> None:
    detail, _, elapsed, _ = monitor(
        fake_library, lambda: nvml.set_gpu_count(7), gpu_sample_seconds=1.0
    )
    # A GPU dropped from the list is also lost to a handle held on it: either rule may come first.
    assert detail.startswith(("gpu_count_dropped", "gpu_lost"))
    assert elapsed < 2.0


def test_G2_reset_required_from_any_call_replaces(fake_library: Path, nvml: FakeNvml) -> None:
    detail, _, _, _ = monitor(
        fake_library,
        lambda: nvml.set_return("nvmlDeviceGetPowerUsage", 16, gpu=1),
        gpu_sample_seconds=1.0,
    )
    assert detail == "reset_required on GPU 1 (GPU-00000000-0000-4000-8000-000000000001): " + (
        "nvmlDeviceGetPowerUsage: GPU requires reset"
    )


def test_G2_an_event_wait_failing_replaces(fake_library: Path, nvml: FakeNvml) -> None:
    detail, _, elapsed, _ = monitor(
        fake_library, lambda: nvml.set_return("nvmlEventSetWait", 999), gpu_sample_seconds=5.0
    )
    assert detail.startswith("event_wait_failed: nvmlEventSetWait_v2:")
    assert elapsed < 1.0


def test_G2_a_hung_nvml_call_is_fatal_at_the_watchdog_deadline(
    fake_library: Path, nvml: FakeNvml
) -> None:
    detail, _, elapsed, _ = monitor(
        fake_library,
        lambda: nvml.hang("nvmlDeviceGetTemperature", 60),
        gpu_sample_seconds=0.2,
        nvml_watchdog_seconds=1.5,
    )
    assert detail == (
        "nvml_hung: nvmlDeviceGetTemperature did not return within 1.5s (on the sampler thread)"
    )
    # The next sample (≤ 0.2 s) enters the hang; the verdict comes 1.5 s later.
    assert 1.5 - 0.5 <= elapsed <= 1.5 + 0.2 + 0.5


def test_G3_warnings_do_not_replace(fake_library: Path, nvml: FakeNvml) -> None:
    async def scenario() -> list[GpuFinding]:
        warden = Warden(
            QUIET,
            "http://127.0.0.1:9",
            GpuSettings(nvml_library=str(fake_library), gpu_sample_seconds=0.1),
        )
        findings: list[GpuFinding] = []
        samples_after_all_found = 0
        done = asyncio.Event()

        def listen(event: GpuSamples | GpuFinding | GpuMonitoring) -> None:
            nonlocal samples_after_all_found
            if isinstance(event, GpuFinding):
                findings.append(event)
            elif isinstance(event, GpuSamples) and len(findings) >= 6:
                # Five more samples with every warning still holding, and no verdict.
                samples_after_all_found += 1
                if samples_after_all_found == 5:
                    done.set()

        warden.on_gpu(listen)
        await warden.start()
        await listening(warden)
        nvml.set_gpu(0, temperature=95, throttle_reasons=0x40 | 0x80)
        nvml.set_gpu(1, retired_pages={"pending": True}, remapped_rows={"pending": True})
        nvml.inject_xid(2, 63)
        nvml.inject_xid(3, 13)  # an application error: ignored
        await asyncio.wait_for(done.wait(), 10)
        assert warden.verdict is None
        await warden.stop()
        return findings

    findings = asyncio.run(scenario())
    assert {(f.gpu, f.rule, f.severity) for f in findings} == {
        (0, "temperature", "warning"),
        (0, "hw_thermal_slowdown", "warning"),
        (0, "power_brake", "warning"),
        (1, "pending_retirement", "warning"),
        (1, "pending_remap", "warning"),
        (2, "warning_xid", "warning"),
    }


def test_G3_a_sustained_warning_with_promotion_replaces(fake_library: Path, nvml: FakeNvml) -> None:
    detail, findings, elapsed, _ = monitor(
        fake_library,
        lambda: nvml.set_gpu(4, temperature=97),
        gpu_sample_seconds=0.2,
        gpu_promote_warnings={"temperature": 1.0},
    )
    assert detail.startswith("temperature on GPU 4")
    assert "sustained for" in detail
    assert [f.severity for f in findings if f.rule == "temperature"] == ["warning", "fatal"]
    assert 1.0 <= elapsed <= 1.0 + 0.2 + 0.5


def test_G_no_nvml_library_turns_monitoring_off_and_checks_still_run(tmp_path: Path) -> None:
    missing = tmp_path / "libnvidia-ml.so.1"

    async def scenario() -> tuple[GpuMonitoring, dict[str, Any]]:
        warden = Warden(QUIET, "http://127.0.0.1:9", GpuSettings(nvml_library=str(missing)))
        got: asyncio.Future[GpuMonitoring] = asyncio.get_running_loop().create_future()
        warden.on_gpu(lambda e: got.set_result(e) if isinstance(e, GpuMonitoring) else None)
        await warden.start()
        state = await asyncio.wait_for(got, 10)
        outcome = await warden.check("gateway")
        assert outcome.error == "connection refused", "health checks still run"
        status = warden.gpu_status()
        assert status is not None
        await warden.stop()
        return state, status

    state, status = asyncio.run(scenario())
    assert state.enabled is False
    assert state.detail.startswith(f"GPU monitoring is off: could not load NVML from {missing}")
    assert status["enabled"] is False and status["detail"] == state.detail


def test_G_bad_gpu_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="gpu_sample_seconds must be a finite number > 0"):
        GpuSettings(gpu_sample_seconds=0)
    with pytest.raises(
        ValueError, match=r"unknown setting .sample_period.; known settings: gpus, "
    ):
        GpuSettings(sample_period=1)
    with pytest.raises(ValueError, match="gpu_promote_warnings must be keyed by"):
        GpuSettings(gpu_promote_warnings={"fans": 3})


def test_G2_stop_does_not_wait_for_a_thread_stuck_in_the_driver(
    fake_library: Path, nvml: FakeNvml
) -> None:
    async def scenario() -> tuple[bool, float]:
        gpu = GpuSettings(
            nvml_library=str(fake_library), gpu_sample_seconds=0.1, nvml_watchdog_seconds=0.5
        )
        warden = Warden(QUIET, "http://127.0.0.1:9", gpu)
        await warden.start()
        nvml.hang("nvmlDeviceGetTemperature", 60)
        verdict = await asyncio.wait_for(warden.decided(), 10)
        assert verdict.detail.startswith("nvml_hung")
        began = time.monotonic()
        joined = await warden.stop(5.0)
        return joined, time.monotonic() - began

    joined, waited = asyncio.run(scenario())
    assert joined is False, "the stuck sampler is reported as left behind"
    assert waited < 1.0, f"stop waited {waited:.2f}s for a thread stuck in the driver"


def test_G1_a_sample_has_exactly_the_fields_the_stub_declares(
    fake_library: Path, nvml: FakeNvml
) -> None:
    """G1 (issue 10): a GpuSamples event from the fake driver, read through the core, holds
    the keys of the stub's `GpuSample` TypedDict, nested ones too."""
    from test_seam import stub_fields

    async def scenario() -> dict[str, Any]:
        warden = Warden(QUIET, "http://127.0.0.1:9", GpuSettings(nvml_library=str(fake_library)))
        got: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def listen(event: GpuSamples | GpuFinding | GpuMonitoring) -> None:
            if isinstance(event, GpuSamples) and not got.done():
                got.set_result(dict(event.samples[0]))

        warden.on_gpu(listen)
        await warden.start()
        sample = await asyncio.wait_for(got, 10)
        await warden.stop()
        return sample

    sample = asyncio.run(scenario())
    assert set(sample) == set(stub_fields("GpuSample"))
    assert set(sample["ecc"]) == set(stub_fields("EccCounts"))
    assert set(sample["retired_pages"]) == set(stub_fields("RetiredPages"))
    assert set(sample["remapped_rows"]) == set(stub_fields("RemappedRows"))
