"""GPU monitoring on a node of many GPUs (SPEC G5, G6, G4): the runner watches its own GPUs,
fails fast, and exports the series as dcgm-exporter does. Four fake GPUs; the runner's are 1
and 2."""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HERE, AppServer, Runwarden, clean_env, free_port, poll
from prometheus_client.parser import text_string_to_metric_families
from runwarden import GpuSettings, exit_codes
from runwarden.testing import STATE_ENV, FakeNvml, default_gpu, fake_nvml_dir

ROOT = HERE.parent
GPU_FAULT = exit_codes.BY_REASON["gpu_fault"]
UUID = [default_gpu(i)["uuid"] for i in range(4)]
MIG = "MIG-7a3b1c5d-0000-5000-8000-000000000002"
DCGM_LABELS = {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
               "DCGM_FI_DRIVER_VERSION"}  # fmt: skip


@pytest.fixture
def nvml(tmp_path: Path) -> FakeNvml:
    fake = FakeNvml(tmp_path / "gpus.json")
    fake.reset(gpus=4)
    fake.set_gpu(2, mig_uuids=[MIG])
    return fake


def _serve(
    runwarden: Callable[..., Runwarden],
    app_url: str,
    nvml: FakeNvml,
    *options: str,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> Runwarden:
    library = str(fake_nvml_dir() / "libnvidia-ml.so.1")
    return runwarden(
        app_url, "--nvml-library", library, *options,
        env=clean_env(**{STATE_ENV: str(nvml.path), **(env or {})}), **kwargs,
    )  # fmt: skip


def _gpu(rw: Runwarden) -> Any:
    return poll(lambda: (g := rw.status()["gpu"])["samples"] and g)


WAYS = {
    "by UUID": (["--gpus", f"{UUID[1]},{UUID[2]}"], {}, False),
    "by index": (["--gpus", "1,2"], {}, False),
    "by a MIG device of GPU 2": (["--gpus", f"1,{MIG}"], {}, False),
    "by NVIDIA_VISIBLE_DEVICES": ([], {"NVIDIA_VISIBLE_DEVICES": "1,2"}, False),
    "by the app command's CUDA_VISIBLE_DEVICES": ([], {}, True),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_G5_the_runner_watches_its_gpus_and_a_fault_elsewhere_replaces_nothing(
    runwarden: Callable[..., Runwarden], tmp_path: Path, nvml: FakeNvml, way: str
) -> None:
    """G5: watching GPUs 1 and 2 of 4, chosen each way: only they are sampled and shown; a
    fatal XID on GPU 3 replaces nothing, one on GPU 2 replaces within a second."""
    options, env, through_app = WAYS[way]
    port = free_port()
    app = [sys.executable, str(HERE / "app_server.py"), str(port)]
    if through_app:
        app = ["env", "CUDA_VISIBLE_DEVICES=1,2", *app]
    rw = _serve(runwarden, f"http://127.0.0.1:{port}", nvml, *options, env=env,
                app_command=app, wait_ready=True)  # fmt: skip
    gpu = _gpu(rw)
    assert [w["index"] for w in gpu["watched"]] == [1, 2], gpu["watched"]
    assert [w["uuid"] for w in gpu["watched"]] == UUID[1:3]
    assert [s["index"] for s in gpu["samples"]] == [1, 2]
    assert gpu["selected_by"] != ""
    poll(lambda: all(w["events"] != "pending" for w in _gpu(rw)["watched"]))  # listening
    nvml.inject_xid(3, 79)  # first: the fake delivers events in order
    injected = time.monotonic()
    nvml.inject_xid(2, 79)
    assert rw.wait_exit() == GPU_FAULT
    findings = [line for line in rw.log().splitlines() if "critical_xid" in line]
    assert findings and all("on GPU 2" in line for line in findings), findings
    assert time.monotonic() - injected < 3  # exit included; the verdict itself within 1 s


def test_G5_metrics_cover_only_the_watched_gpus_as_dcgm_exporter_names_them(
    runwarden: Callable[..., Runwarden], app_server: AppServer, nvml: FakeNvml
) -> None:
    """G4/G5: /metrics parsed by prometheus_client: every series docs/dcgm-counters.csv
    claims, with its declared type, the seven labels dcgm-exporter sets, for GPUs 1 and 2
    only; counters carry no `_total`, as dcgm-exporter writes them."""
    nvml.set_gpu(1, memory_temperature=51, energy_mj=7_000_000, pcie_replay=3)
    rw = _serve(runwarden, app_server.url, nvml, "--gpus", "1,2", wait_ready=True)
    poll(lambda: all(w["events"] != "pending" for w in _gpu(rw)["watched"]))  # listening
    nvml.inject_xid(1, 63)  # a warning XID: DCGM_FI_DEV_XID_ERRORS gets a value
    poll(lambda: "DCGM_FI_DEV_XID_ERRORS" in httpx.get(f"{rw.admin_url}/metrics").text)
    text = httpx.get(f"{rw.admin_url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    claimed = [row for row in csv.reader(_csv_lines()) if row]
    for field, kind, _ in claimed:
        family = families.get(field.strip())
        assert family is not None, f"{field} is not in /metrics"
        assert family.type == kind.strip(), (field, family.type)
        for sample in family.samples:
            assert set(sample.labels) == DCGM_LABELS, sample.labels
        # The parser adds `_total` to a counter's samples; the text has it as dcgm writes it.
        assert f"\n{field.strip()}{{" in text and f"{field.strip()}_total" not in text
        if field.strip() != "DCGM_FI_DEV_XID_ERRORS":
            assert sorted(s.labels["gpu"] for s in family.samples) == ["1", "2"], field
    one = {f.name: {s.labels["gpu"]: s.value for s in f.samples} for f in families.values()
           if f.name.startswith("DCGM_")}  # fmt: skip
    assert one["DCGM_FI_DEV_MEMORY_TEMP"]["1"] == 51
    assert one["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"]["1"] == 7_000_000
    assert one["DCGM_FI_DEV_PCIE_REPLAY_COUNTER"]["1"] == 3
    assert one["DCGM_FI_DEV_XID_ERRORS"] == {"1": 63}
    sample = families["DCGM_FI_DEV_GPU_TEMP"].samples[0]
    assert sample.labels["pci_bus_id"] == default_gpu(1)["pci_bus_id"]
    assert sample.labels["DCGM_FI_DRIVER_VERSION"] == "550.54.15"
    assert sample.labels["Hostname"]


def _csv_lines() -> list[str]:
    lines = (ROOT / "docs/dcgm-counters.csv").read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


@pytest.mark.parametrize(("mode", "prefix"), [("runwarden", "runwarden_gpu_"), ("off", None)])
def test_G4_gpu_metrics_can_be_renamed_or_left_out(
    runwarden: Callable[..., Runwarden],
    app_server: AppServer,
    nvml: FakeNvml,
    mode: str,
    prefix: str | None,
) -> None:
    """G4: on a node whose dcgm-exporter is scraped already, `--gpu-metrics runwarden` keeps
    the same series under runwarden_gpu_* names (counters with `_total`), and `off` leaves
    them out: nothing is scraped twice under one name."""
    rw = _serve(runwarden, app_server.url, nvml, "--gpu-metrics", mode, wait_ready=True)
    _gpu(rw)
    text = httpx.get(f"{rw.admin_url}/metrics").text
    assert "DCGM_FI_" not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    if prefix is None:
        assert "runwarden_gpu_temperature_celsius" not in families
        return
    assert families["runwarden_gpu_temperature_celsius"].type == "gauge"
    energy = families["runwarden_gpu_energy_millijoules"]
    assert energy.type == "counter"
    assert energy.samples[0].name == "runwarden_gpu_energy_millijoules_total"
    assert len(families["runwarden_gpu_temperature_celsius"].samples) == 4


def _marker_app(tmp_path: Path, port: int) -> tuple[list[str], Path]:
    marker = tmp_path / "app-started"
    code = f"open({str(marker)!r}, 'w').close(); import time; time.sleep(60)"
    return [sys.executable, "-c", code], marker


@pytest.mark.parametrize(
    ("case", "options", "expected"),
    [
        (
            "NVML missing",
            ["--nvml-library", "/nonexistent/libnvidia-ml.so.1"],
            "nvml_unavailable: could not load NVML",
        ),
        ("a GPU asked for is not there", ["--gpus", "1,7"], "gpu_missing: 7 (index 7"),
        ("a UUID no GPU has", ["--gpus", "GPU-ffffffff"], "gpu_missing: GPU-ffffffff (no GPU"),
    ],
)
def test_G6_gpu_required_stops_start_up_before_the_app_starts(
    runwarden: Callable[..., Runwarden],
    tmp_path: Path,
    nvml: FakeNvml,
    case: str,
    options: list[str],
    expected: str,
) -> None:
    """G6: with --gpu-required, no NVML or fewer GPUs than asked for stop start-up with
    gpu_fault's code and one line saying why; the app is never started."""
    app, marker = _marker_app(tmp_path, free_port())
    library = ["--nvml-library", str(fake_nvml_dir() / "libnvidia-ml.so.1")]
    args = [*(library if "--nvml-library" not in options else []), *options, "--gpu-required"]
    rw = _start_expecting_exit(runwarden, nvml, args, app)
    assert rw.wait_exit() == GPU_FAULT
    assert expected in rw.log(), rw.log()
    assert "the app was not started" in rw.log()
    assert not marker.exists(), case


def _start_expecting_exit(
    runwarden: Callable[..., Runwarden], nvml: FakeNvml, options: list[str], app: list[str]
) -> Runwarden:
    """runwarden may exit before it listens: started without waiting for its ports."""
    import subprocess

    from conftest import SHORT_SETTINGS

    port, admin = free_port(), free_port()
    log_path = Path(str(nvml.path) + ".log")
    args = [sys.executable, "-m", "runwarden", "serve", "--host", "127.0.0.1", "--port",
            str(port), "--admin-host", "127.0.0.1", "--admin-port", str(admin), "--app-url", "http://127.0.0.1:9",
            *SHORT_SETTINGS, *options, "--", *app]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env=clean_env(**{STATE_ENV: str(nvml.path)}))  # fmt: skip
    return Runwarden(proc, port, admin, log_path)


@pytest.mark.parametrize(
    "fault",
    [
        {"remapped_rows": {"failure": True}},
        {"retired_pages": {"double_bit": 63}},
        {"lost": True},
    ],
    ids=["row remap failure", "retired pages", "lost"],
)
def test_G6_a_watched_gpu_already_broken_stops_start_up_before_the_app_starts(
    runwarden: Callable[..., Runwarden], tmp_path: Path, nvml: FakeNvml, fault: dict[str, Any]
) -> None:
    """G6: a watched GPU in a fatal state when runwarden starts stops start-up with
    gpu_fault's code before the app is launched, not after it has loaded its weights."""
    nvml.set_gpu(1, **fault)
    app, marker = _marker_app(tmp_path, free_port())
    library = ["--nvml-library", str(fake_nvml_dir() / "libnvidia-ml.so.1")]
    rw = _start_expecting_exit(runwarden, nvml, [*library, "--gpus", "1,2"], app)
    assert rw.wait_exit() == GPU_FAULT
    assert "the app was not started" in rw.log()
    assert not marker.exists()


def test_G6_a_broken_gpu_that_is_not_watched_does_not_stop_start_up(
    runwarden: Callable[..., Runwarden], app_server: AppServer, nvml: FakeNvml
) -> None:
    """G5/G6: the same fault on another runner's GPU is not this runner's."""
    nvml.set_gpu(3, remapped_rows={"failure": True})
    rw = _serve(runwarden, app_server.url, nvml, "--gpus", "1,2", wait_ready=True)
    assert _gpu(rw)["findings"] == []
    assert rw.status()["state"] == "ready"


def test_G_status_says_which_events_each_gpu_watches(
    runwarden: Callable[..., Runwarden], app_server: AppServer, nvml: FakeNvml
) -> None:
    """G: a GPU that reports no XID or ECC events is shown as such, not skipped silently."""
    nvml.set_gpu(2, supported_events=0)
    rw = _serve(runwarden, app_server.url, nvml, "--gpus", "1,2", wait_ready=True)
    watched = poll(lambda: (w := _gpu(rw)["watched"])[1]["events"] != "pending" and w)
    assert watched[0]["events"] == "xid, double-bit ecc"  # type: ignore[index]
    assert watched[1]["events"].startswith("none: the GPU reports neither")  # type: ignore[index]


def test_G3_xid_109_is_an_application_error_and_ignored() -> None:
    """G3: XID 109 (a context-switch timeout) is ignored by default, as NVIDIA's device
    plugin has it."""
    assert 109 in GpuSettings().gpu_ignored_xids
