"""The fake NVML driver (SPEC G's test instrument) read through nvidia-ml-py, as the driver.

Each test runs nvidia-ml-py in its own process with `LD_LIBRARY_PATH` at the fake, since the
loader reads that variable only at process start. The process evaluates one expression per
line from the test and answers with JSON, so a test can change the state file between
calls, block in a call, and time it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from runwarden.testing import (
    STATE_ENV,
    EventType,
    FakeNvml,
    Gpu,
    State,
    default_gpu,
    default_state,
    fake_nvml_dir,
)

# Runs inside the pynvml process. `sample(i)` reads every field the sampler reads.
PYNVML_SERVER = r"""
import ctypes, json, sys, time
import pynvml as n

def addr(p):
    return ctypes.cast(p, ctypes.c_void_p).value

def init():
    n.nvmlInit()
    global h
    h = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
    return len(h)

def sample(i):
    d = h[i]
    m1 = n.nvmlDeviceGetMemoryInfo(d)
    m2 = n.nvmlDeviceGetMemoryInfo(d, version=n.nvmlMemory_v2)
    u = n.nvmlDeviceGetUtilizationRates(d)
    pci = n.nvmlDeviceGetPciInfo_v3(d)
    ecc = {
        f"{e}_{c}": n.nvmlDeviceGetTotalEccErrors(d, et, ct)
        for e, et in (("corrected", 0), ("uncorrected", 1))
        for c, ct in (("volatile", 0), ("aggregate", 1))
    }
    corr, unc, pending, failure = n.nvmlDeviceGetRemappedRows(d)
    return {
        "index": n.nvmlDeviceGetIndex(d),
        "name": n.nvmlDeviceGetName(d),
        "uuid": n.nvmlDeviceGetUUID(d),
        "pci_bus_id": pci.busId,
        "pci": [pci.domain, pci.bus, pci.device, pci.busIdLegacy],
        "temperature": n.nvmlDeviceGetTemperature(d, n.NVML_TEMPERATURE_GPU),
        "memory_temperature": n.nvmlDeviceGetFieldValues(d, [82])[0].value.uiVal,  # memory temp
        "energy_mj": n.nvmlDeviceGetTotalEnergyConsumption(d),
        "pcie_replay": n.nvmlDeviceGetPcieReplayCounter(d),
        "graphics_clock": n.nvmlDeviceGetClockInfo(d, n.NVML_CLOCK_GRAPHICS),
        "sm_clock": n.nvmlDeviceGetClockInfo(d, n.NVML_CLOCK_SM),
        "mem_clock": n.nvmlDeviceGetClockInfo(d, n.NVML_CLOCK_MEM),
        "video_clock": n.nvmlDeviceGetClockInfo(d, n.NVML_CLOCK_VIDEO),
        "throttle_reasons": n.nvmlDeviceGetCurrentClocksThrottleReasons(d),
        "event_reasons": n.nvmlDeviceGetCurrentClocksEventReasons(d),
        "power_mw": n.nvmlDeviceGetPowerUsage(d),
        "gpu_util": u.gpu,
        "memory_util": u.memory,
        "memory_v1": [m1.total, m1.free, m1.used],
        "memory_v2": [m2.version, m2.total, m2.reserved, m2.free, m2.used],
        "ecc": ecc,
        "retired_single_bit": n.nvmlDeviceGetRetiredPages(d, 0),
        "retired_double_bit": n.nvmlDeviceGetRetiredPages_v2(d, 1),
        "retired_pending": n.nvmlDeviceGetRetiredPagesPendingStatus(d),
        "remapped_rows": {"corrected": corr, "uncorrected": unc,
                          "pending": bool(pending), "failure": bool(failure)},
        "supported_events": n.nvmlDeviceGetSupportedEventTypes(d),
    }

def system():
    return {
        "driver_version": n.nvmlSystemGetDriverVersion(),
        "nvml_version": n.nvmlSystemGetNVMLVersion(),
        "cuda_driver_version": n.nvmlSystemGetCudaDriverVersion_v2(),
        "count": n.nvmlDeviceGetCount(),
    }

def listen(gpus, mask):
    global event_set
    event_set = n.nvmlEventSetCreate()
    for i in gpus:
        n.nvmlDeviceRegisterEvents(h[i], mask, event_set)

def wait(ms):
    e = n.nvmlEventSetWait_v2(event_set, ms)
    return {"device": addr(e.device), "type": e.eventType, "data": e.eventData,
            "gpu_instance_id": e.gpuInstanceId, "compute_instance_id": e.computeInstanceId}

print("ready", flush=True)
for line in sys.stdin:
    start = time.monotonic()
    try:
        out = {"value": eval(line)}
    except n.NVMLError as e:
        out = {"error": type(e).__name__, "code": e.value}
    out["seconds"] = time.monotonic() - start
    print(json.dumps(out), flush=True)
"""


class Pynvml:
    """One nvidia-ml-py process on the fake; `call` evaluates an expression in it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PYNVML_SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert self._line(15.0) == "ready"

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer from the pynvml process within {timeout}s")
        return self.proc.stdout.readline().strip()

    def send(self, expression: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(expression + "\n")
        self.proc.stdin.flush()

    def answer(self, timeout: float = 10.0) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self._line(timeout))
        return result

    def call(self, expression: str, timeout: float = 10.0) -> dict[str, Any]:
        self.send(expression)
        return self.answer(timeout)

    def value(self, expression: str) -> Any:
        result = self.call(expression)
        assert "error" not in result, f"{expression}: {result}"
        return result["value"]

    def error(self, expression: str) -> str:
        result = self.call(expression)
        assert "error" in result, f"{expression} did not fail: {result}"
        return str(result["error"])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="session")
def lib_dir() -> Path:
    return fake_nvml_dir()


@pytest.fixture
def nvml(tmp_path: Path) -> FakeNvml:
    return FakeNvml(tmp_path / "nvml-state.json")


def driver_env(lib_dir: Path, nvml: FakeNvml | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV}
    env["LD_LIBRARY_PATH"] = str(lib_dir)
    return env | (nvml.env if nvml else {})


@pytest.fixture
def start(lib_dir: Path, nvml: FakeNvml) -> Iterator[Any]:
    """Starts nvidia-ml-py processes on `nvml`'s state and stops them after the test."""
    started: list[Pynvml] = []

    def start(init: bool = True) -> Pynvml:
        proc = Pynvml(driver_env(lib_dir, nvml))
        started.append(proc)
        if init:
            proc.value("init()")
        return proc

    yield start
    for proc in started:
        proc.close()


def expected_sample(gpu: Gpu, index: int) -> dict[str, Any]:
    """What nvidia-ml-py must read for `gpu`, derived from the state as written."""
    memory = gpu["memory"]
    free = memory["free"]
    if free is None:
        free = memory["total"] - memory["reserved"] - memory["used"]
    retired = gpu["retired_pages"]
    domain, bus, device = gpu["pci_bus_id"].replace(".", ":").split(":")[:3]
    single_bit = [((1 << 32) | k << 12) for k in range(retired["single_bit"])]
    double_bit = [
        {"address": (2 << 32) | k << 12, "timestamp": 1_700_000_000 + k}
        for k in range(retired["double_bit"])
    ]
    return {
        "index": index,
        "name": gpu["name"],
        "uuid": gpu["uuid"],
        "pci_bus_id": gpu["pci_bus_id"],
        "pci": [int(domain, 16), int(bus, 16), int(device, 16), gpu["pci_bus_id"][4:]],
        "temperature": gpu["temperature"],
        "memory_temperature": gpu["memory_temperature"],
        "energy_mj": gpu["energy_mj"],
        "pcie_replay": gpu["pcie_replay"],
        "graphics_clock": gpu["graphics_clock"],
        "sm_clock": gpu["sm_clock"],
        "mem_clock": gpu["mem_clock"],
        "video_clock": gpu["video_clock"],
        "throttle_reasons": gpu["throttle_reasons"],
        "event_reasons": gpu["throttle_reasons"],
        "power_mw": gpu["power_mw"],
        "gpu_util": gpu["gpu_util"],
        "memory_util": gpu["memory_util"],
        # v1 counts the driver's reserved memory as used, as NVML does.
        "memory_v1": [memory["total"], free, memory["used"] + memory["reserved"]],
        "memory_v2": [0x02000028, memory["total"], memory["reserved"], free, memory["used"]],
        "ecc": dict(gpu["ecc"]),
        "retired_single_bit": single_bit,
        "retired_double_bit": double_bit,
        "retired_pending": int(retired["pending"]),
        "remapped_rows": dict(gpu["remapped_rows"]),
        "supported_events": gpu["supported_events"],
    }


def unusual_state() -> State:
    """Three GPUs whose every value differs from the defaults and from each other."""
    state = default_state(3)
    for i, gpu in enumerate(state["gpus"]):
        gpu.update(
            {
                "name": f"NVIDIA Fake GPU {i}",
                "uuid": f"GPU-{i}1234567-89ab-cdef-0123-456789abcdef",
                "pci_bus_id": f"00000000:{0x40 + i:02X}:00.0",
                "temperature": 61 + i,
                "memory_temperature": 71 + i,
                "energy_mj": 9_876_543_210 + i,
                "pcie_replay": 5 + i,
                "mig_uuids": [f"MIG-{i}abc"],
                "sm_clock": 1410 + i,
                "mem_clock": 1593 + i,
                "graphics_clock": 1400 + i,
                "video_clock": 1290 + i,
                "throttle_reasons": 0x44 | i,
                "power_mw": 312_345 + i,
                "gpu_util": 87 + i,
                "memory_util": 43 + i,
                "memory": {
                    "total": (40 << 30) + i,
                    "reserved": (300 << 20) + i,
                    "used": (12 << 30) + i,
                    "free": None if i else 7,
                },
                "ecc": {
                    "corrected_volatile": 11 + i,
                    "corrected_aggregate": 1_234_567_890_123 + i,
                    "uncorrected_volatile": 2 + i,
                    "uncorrected_aggregate": 99 + i,
                },
                "retired_pages": {"single_bit": 3 + i, "double_bit": 1 + i, "pending": i != 1},
                "remapped_rows": {
                    "corrected": 7 + i,
                    "uncorrected": 512 + i,
                    "pending": i == 1,
                    "failure": i == 2,
                },
                "supported_events": 0xB | i << 4,
            }
        )
    state["driver_version"] = "535.104.05"
    state["nvml_version"] = "12.535.104.05-fake"
    state["cuda_driver_version"] = 12020
    return state


def test_library_is_named_as_the_driver(lib_dir: Path) -> None:
    assert (lib_dir / "libnvidia-ml.so.1").is_file()


@pytest.mark.parametrize("state_file", ["unset", "missing"])
def test_without_a_state_file_one_healthy_gpu(
    lib_dir: Path, nvml: FakeNvml, state_file: str
) -> None:
    proc = Pynvml(driver_env(lib_dir, nvml if state_file == "missing" else None))
    try:
        assert proc.value("init()") == 1
        assert proc.value("sample(0)") == expected_sample(default_gpu(0), 0)
        assert proc.value("system()") == {
            "driver_version": "550.54.15",
            "nvml_version": "12.550.54.15",
            "cuda_driver_version": 12040,
            "count": 1,
        }
    finally:
        proc.close()


def test_every_field_reads_as_written(nvml: FakeNvml, start: Any) -> None:
    state = unusual_state()
    nvml.write(state)
    proc = start()
    assert proc.value("system()") == {
        "driver_version": "535.104.05",
        "nvml_version": "12.535.104.05-fake",
        "cuda_driver_version": 12020,
        "count": 3,
    }
    for i, gpu in enumerate(state["gpus"]):
        assert proc.value(f"sample({i})") == expected_sample(gpu, i)
    assert proc.value("addr(n.nvmlDeviceGetHandleByUUID(n.nvmlDeviceGetUUID(h[2]))) == addr(h[2])")
    assert proc.value("addr(n.nvmlDeviceGetHandleByIndex(1)) == addr(h[1])")
    assert proc.error("n.nvmlDeviceGetHandleByIndex(3)") == "NVMLError_InvalidArgument"
    assert proc.error("n.nvmlDeviceGetHandleByUUID('GPU-nope')") == "NVMLError_NotFound"
    # A MIG device's UUID leads to its GPU, as on a MIG-enabled H100.
    mig = "n.nvmlDeviceGetHandleByUUID('MIG-1abc')"
    is_mig = f"n.nvmlDeviceIsMigDeviceHandle({mig})"
    assert proc.value(f"int(getattr({is_mig}, 'value', {is_mig}))") == 1
    assert proc.value(f"addr(n.nvmlDeviceGetDeviceHandleFromMigDeviceHandle({mig})) == addr(h[1])")


def test_state_changes_are_read_at_run_time(nvml: FakeNvml, start: Any) -> None:
    nvml.reset(gpus=2)
    proc = start()
    assert proc.value("n.nvmlDeviceGetTemperature(h[0], 0)") == 40
    # Writes of the same size in quick succession: each one must still be seen.
    for temperature in (91, 92, 93):
        nvml.set_gpu(0, temperature=temperature)
        assert proc.value("n.nvmlDeviceGetTemperature(h[0], 0)") == temperature
    nvml.set_gpu(1, ecc={"uncorrected_volatile": 5}, remapped_rows={"failure": True})
    sample = proc.value("sample(1)")
    assert sample["ecc"]["uncorrected_volatile"] == 5
    assert sample["ecc"]["corrected_volatile"] == 0  # merged, not replaced
    assert sample["remapped_rows"]["failure"] is True
    nvml.set_gpu_count(1)
    assert proc.value("n.nvmlDeviceGetCount()") == 1


def test_a_file_that_does_not_parse_keeps_the_last_state(nvml: FakeNvml, start: Any) -> None:
    nvml.reset()
    nvml.set_gpu(0, temperature=77)
    proc = start()
    assert proc.value("n.nvmlDeviceGetTemperature(h[0], 0)") == 77
    nvml.path.write_text('{"gpus": [{"temprature": 1}]}')  # unknown keys are errors
    assert proc.value("n.nvmlDeviceGetTemperature(h[0], 0)") == 77


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (15, "NVMLError_GpuIsLost"),
        (16, "NVMLError_ResetRequired"),
        (3, "NVMLError_NotSupported"),
        (4, "NVMLError_NoPermission"),
        (999, "NVMLError_Unknown"),
    ],
)
def test_forced_return_code_raises_its_error(
    nvml: FakeNvml, start: Any, code: int, error: str
) -> None:
    nvml.reset(gpus=2)
    proc = start()
    nvml.set_return("nvmlDeviceGetTemperature", code)
    assert proc.error("n.nvmlDeviceGetTemperature(h[0], 0)") == error
    assert proc.error("n.nvmlDeviceGetTemperature(h[1], 0)") == error
    assert proc.value("n.nvmlDeviceGetPowerUsage(h[0])") == 72_000
    nvml.set_return("nvmlDeviceGetTemperature", 0)
    nvml.set_return("nvmlDeviceGetPowerUsage", code, gpu=1)
    assert proc.value("n.nvmlDeviceGetTemperature(h[0], 0)") == 40
    assert proc.value("n.nvmlDeviceGetPowerUsage(h[0])") == 72_000
    assert proc.error("n.nvmlDeviceGetPowerUsage(h[1])") == error


def test_an_unversioned_name_covers_every_variant(nvml: FakeNvml, start: Any) -> None:
    nvml.reset()
    proc = start()
    nvml.set_return("nvmlDeviceGetMemoryInfo", 3)
    nvml.set_return("nvmlDeviceGetCurrentClocksThrottleReasons", 999)
    assert proc.error("n.nvmlDeviceGetMemoryInfo(h[0])") == "NVMLError_NotSupported"
    assert (
        proc.error("n.nvmlDeviceGetMemoryInfo(h[0], n.nvmlMemory_v2)") == "NVMLError_NotSupported"
    )
    assert proc.error("n.nvmlDeviceGetCurrentClocksEventReasons(h[0])") == "NVMLError_Unknown"


def test_init_can_fail_as_without_a_driver(nvml: FakeNvml, start: Any) -> None:
    nvml.reset()
    nvml.set_return("nvmlInit", 9)
    proc = start(init=False)
    assert proc.error("init()") == "NVMLError_DriverNotLoaded"
    assert proc.error("n.nvmlDeviceGetCount()") == "NVMLError_Uninitialized"
    nvml.set_return("nvmlInit", 0)
    assert proc.value("init()") == 1


def test_lost_gpu_answers_gpu_is_lost(nvml: FakeNvml, start: Any) -> None:
    nvml.reset(gpus=2)
    proc = start()
    nvml.lose_gpu(1)
    assert proc.error("sample(1)") == "NVMLError_GpuIsLost"
    assert proc.error("n.nvmlDeviceGetUUID(h[1])") == "NVMLError_GpuIsLost"
    assert proc.error("n.nvmlDeviceGetHandleByIndex(1)") == "NVMLError_GpuIsLost"
    assert proc.value("sample(0)") == expected_sample(default_gpu(0), 0)
    assert proc.value("n.nvmlDeviceGetCount()") == 2
    nvml.lose_gpu(1, lost=False)
    assert proc.value("sample(1)") == expected_sample(default_gpu(1), 1)
    nvml.set_gpu_count(1)  # fell off the bus: a held handle is lost too
    assert proc.error("n.nvmlDeviceGetTemperature(h[1], 0)") == "NVMLError_GpuIsLost"


def test_xid_is_delivered_once_within_a_second(nvml: FakeNvml, start: Any) -> None:
    nvml.reset(gpus=2)
    proc = start()
    mask = EventType.XID_CRITICAL_ERROR | EventType.DOUBLE_BIT_ECC_ERROR
    proc.value(f"listen([1], {int(mask)})")
    proc.send("wait(10000)")  # blocking or not yet: the event is delivered either way
    injected = time.monotonic()
    nvml.inject_xid(gpu=1, xid=79)
    event = proc.answer()
    assert time.monotonic() - injected < 1.0
    assert event["value"] == {
        "device": proc.value("addr(h[1])"),
        "type": 0x8,
        "data": 79,
        "gpu_instance_id": 0xFFFFFFFF,
        "compute_instance_id": 0xFFFFFFFF,
    }
    # Delivered once: not again, not after the file is rewritten with the same event.
    assert proc.error("wait(200)") == "NVMLError_Timeout"
    nvml.set_gpu(0, temperature=50)
    assert proc.error("wait(200)") == "NVMLError_Timeout"
    # Events on a GPU not registered on the set stay undelivered.
    nvml.inject_xid(gpu=0, xid=48)
    assert proc.error("wait(200)") == "NVMLError_Timeout"
    nvml.inject_event(gpu=1, event_type=EventType.DOUBLE_BIT_ECC_ERROR)
    event = proc.call("wait(1000)")
    assert (event["value"]["type"], event["value"]["data"]) == (0x2, 0)
    assert event["seconds"] < 1.0


def test_event_wait_times_out_and_reports_a_lost_gpu(nvml: FakeNvml, start: Any) -> None:
    nvml.reset(gpus=2)
    proc = start()
    proc.value("listen([0, 1], 8)")
    result = proc.call("wait(300)")
    assert result["error"] == "NVMLError_Timeout"
    assert 0.25 < result["seconds"] < 1.0
    nvml.lose_gpu(1)
    assert proc.error("wait(1000)") == "NVMLError_GpuIsLost"


def test_hang_blocks_the_call_about_n_seconds(nvml: FakeNvml, start: Any) -> None:
    nvml.reset()
    proc = start()
    nvml.hang("nvmlDeviceGetTemperature", 1.5)
    assert proc.call("n.nvmlDeviceGetPowerUsage(h[0])")["seconds"] < 0.5
    result = proc.call("n.nvmlDeviceGetTemperature(h[0], 0)")
    assert result["value"] == 40
    assert 1.4 < result["seconds"] < 2.2
    # A hung call is released when the hang is cleared.
    nvml.hang("nvmlDeviceGetTemperature", 600)
    sent = time.monotonic()
    proc.send("n.nvmlDeviceGetTemperature(h[0], 0)")
    time.sleep(0.3)  # time for the call to block; the assertions below hold either way
    cleared = time.monotonic()
    nvml.hang("nvmlDeviceGetTemperature", 0)
    answer = proc.answer(timeout=5.0)
    # Released by the clear: it ends within a poll of it, never after the 600 s hang.
    assert time.monotonic() - cleared < 2.0
    assert answer["seconds"] <= time.monotonic() - sent


def test_error_strings_and_struct_versions(start: Any) -> None:
    proc = start()
    assert proc.value("n.nvmlErrorString(0)") == "Success"
    assert proc.value("n.nvmlErrorString(15)") == "GPU is lost"
    assert proc.value("n.nvmlErrorString(12345)") == "Unknown Error"
    wrong = "n.nvmlDeviceGetMemoryInfo(h[0], version=0x01000028)"
    assert proc.error(wrong) == "NVMLError_ArgumentVersionMismatch"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runwarden.testing", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_writes_the_state(nvml: FakeNvml, lib_dir: Path) -> None:
    state = ["--state", str(nvml.path)]
    assert cli(*state, "reset", "--gpus", "2").returncode == 0
    done = cli(*state, "set-gpu", "1", "temperature=95", "ecc.uncorrected_volatile=3")
    assert done.returncode == 0, done.stderr
    assert cli(*state, "set-gpu", "0", "throttle_reasons=0x80", "memory.free=null").returncode == 0
    assert cli(*state, "set", "driver_version=535.104.05").returncode == 0
    said = cli(*state, "inject-xid", "0", "79").stdout
    assert said.startswith("XID 79 on GPU 0: event evt-"), said
    event_id = said.split("event ", 1)[1].split(",")[0]
    assert cli(*state, "lose-gpu", "1").returncode == 0
    assert cli(*state, "hang", "nvmlDeviceGetTemperature", "30").returncode == 0
    assert cli(*state, "set-return", "nvmlDeviceGetPowerUsage", "999", "--gpu", "0").returncode == 0

    shown = json.loads(cli(*state, "show").stdout)
    assert shown == nvml.read()
    assert shown["driver_version"] == "535.104.05"
    assert shown["gpus"][1]["temperature"] == 95
    assert shown["gpus"][1]["ecc"]["uncorrected_volatile"] == 3
    assert shown["gpus"][1]["ecc"]["corrected_volatile"] == 0
    assert shown["gpus"][1]["lost"] is True
    assert shown["gpus"][0]["throttle_reasons"] == 0x80
    assert shown["gpus"][0]["returns"] == {"nvmlDeviceGetPowerUsage": 999}
    assert shown["hang"] == {"nvmlDeviceGetTemperature": 30.0}
    assert [(e["id"], e["gpu"], e["type"], e["data"]) for e in shown["events"]] == [
        (event_id, 0, 8, 79)
    ]
    assert cli("build").stdout.strip() == str(lib_dir)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["set-gpu", "0", "temprature=1"], "unknown key 'temprature'"),
        (["set-gpu", "0", "temperature=hot"], "expected int"),
        (["set-gpu", "0", "ecc.bogus=1"], "unknown key 'ecc.bogus'"),
        (["set-gpu", "0", "temperature"], "expected KEY=VALUE"),
        (["set-gpu", "5", "temperature=1"], "no GPU 5"),
    ],
)
def test_cli_usage_errors(nvml: FakeNvml, args: list[str], message: str) -> None:
    nvml.reset()
    done = cli("--state", str(nvml.path), *args)
    assert done.returncode != 0
    assert message in done.stderr


def test_cli_needs_a_state_file() -> None:
    env = {k: v for k, v in os.environ.items() if k != STATE_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "runwarden.testing", "show"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--state PATH" in done.stderr


def test_cli_wait_for_a_finding_runwarden_never_reports_says_what_it_saw(
    runwarden: Any,
) -> None:
    """`wait-for RULE` gives up at --timeout with exit 1, naming the rule and the findings
    /status had (none here: a runwarden with no driver reports no GPU finding)."""
    rw = runwarden(f"http://127.0.0.1:{free_port()}")
    done = cli("wait-for", "temperature", "--gpu", "0", "--admin", rw.admin_url,
               "--timeout", "0.5")  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "reported no temperature on GPU 0 within 0.5 s (findings so far: none)" in (
        done.stderr
    ), done.stderr
