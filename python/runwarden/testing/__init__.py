"""Drive the fake NVML driver, so GPU faults can be tested on a machine without a GPU.

The fake (`rust/fake-nvml`) is a `libnvidia-ml.so.1` that answers NVML calls from a JSON state
file named by `RUNWARDEN_FAKE_NVML_STATE`, re-read whenever it changes. `FakeNvml` writes that
file; `fake_nvml_dir()` builds the library and returns the directory to put on
`LD_LIBRARY_PATH` (or pass `<dir>/libnvidia-ml.so.1` as `--nvml-library`).

    nvml = FakeNvml(tmp_path / "gpus.json")
    nvml.reset(gpus=2)
    env = {**os.environ, **nvml.env, "LD_LIBRARY_PATH": str(fake_nvml_dir())}
    ...  # start the process under test with env
    nvml.inject_xid(gpu=0, xid=79)

The state file, every key optional (the fake's defaults are `default_state()`'s values):

    {"driver_version": "550.54.15", "nvml_version": null, "cuda_driver_version": 12040,
     "gpus": [{"name", "uuid", "pci_bus_id", "temperature", "memory_temperature" (C),
               "energy_mj" (since boot), "pcie_replay", "mig_uuids" (MIG devices' UUIDs;
               to the fake CUDA the GPU is then only those, as CUDA_VISIBLE_DEVICES names them),
               "sm_clock", "mem_clock", "graphics_clock", "video_clock" (MHz),
               "throttle_reasons" (bits), "power_mw", "gpu_util", "memory_util" (%),
               "memory": {"total", "reserved", "used", "free"} (bytes),
               "ecc": {"corrected_volatile", "corrected_aggregate",
                       "uncorrected_volatile", "uncorrected_aggregate"},
               "retired_pages": {"single_bit", "double_bit", "pending"},
               "remapped_rows": {"corrected", "uncorrected", "pending", "failure"},
               "supported_events" (bits), "lost", "returns", "hang"}],
     "returns": {"<nvml function>": <return code>},
     "hang": {"<nvml function>": <seconds>},
     "events": [{"id", "gpu", "type", "data", "gpu_instance_id", "compute_instance_id",
                 "at_ns"}]}

- GPU count is the length of `gpus`; a GPU dropped from the list answers GPU_IS_LOST.
- `returns`/`hang` at the top apply to every call of the function, inside a GPU to calls
  naming that GPU. An unversioned name also covers the versioned ones (`nvmlInit` covers
  `nvmlInit_v2` and `nvmlInitWithFlags`). Removing a hang releases calls already blocked.
- Each event is delivered once per process (by `id`) through `nvmlEventSetWait_v2`, within
  about 50 ms, to an event set on which its GPU is registered for its type.
- NVML's v1 memory struct reports `used + reserved` as used; `_v2` reports them apart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from enum import IntEnum, IntFlag
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "STATE_ENV",
    "Ecc",
    "Event",
    "EventType",
    "FakeNvml",
    "FakeNvmlError",
    "Gpu",
    "Memory",
    "RemappedRows",
    "RetiredPages",
    "Return",
    "State",
    "ThrottleReason",
    "default_gpu",
    "default_state",
    "fake_nvml_dir",
]

STATE_ENV = "RUNWARDEN_FAKE_NVML_STATE"
LIBRARY_NAME = "libnvidia-ml.so.1"


class FakeNvmlError(RuntimeError):
    """The fake driver cannot be built or located, or a request names no such GPU."""


class Return(IntEnum):
    """NVML return codes (`nvmlReturn_t`) worth forcing in a test."""

    SUCCESS = 0
    UNINITIALIZED = 1
    INVALID_ARGUMENT = 2
    NOT_SUPPORTED = 3
    NO_PERMISSION = 4
    NOT_FOUND = 6
    INSUFFICIENT_SIZE = 7
    DRIVER_NOT_LOADED = 9
    TIMEOUT = 10
    GPU_IS_LOST = 15
    RESET_REQUIRED = 16
    UNKNOWN = 999


class EventType(IntFlag):
    """`nvmlEventType*` bits."""

    SINGLE_BIT_ECC_ERROR = 0x1
    DOUBLE_BIT_ECC_ERROR = 0x2
    PSTATE = 0x4
    XID_CRITICAL_ERROR = 0x8
    CLOCK = 0x10
    POWER_SOURCE_CHANGE = 0x80
    MIG_CONFIG_CHANGE = 0x100


class ThrottleReason(IntFlag):
    """`nvmlClocksEventReason*` (formerly `nvmlClocksThrottleReason*`) bits."""

    GPU_IDLE = 0x1
    APPLICATIONS_CLOCKS_SETTING = 0x2
    SW_POWER_CAP = 0x4
    HW_SLOWDOWN = 0x8
    SYNC_BOOST = 0x10
    SW_THERMAL_SLOWDOWN = 0x20
    HW_THERMAL_SLOWDOWN = 0x40
    HW_POWER_BRAKE_SLOWDOWN = 0x80
    DISPLAY_CLOCK_SETTING = 0x100


class Memory(TypedDict, total=False):
    total: int
    reserved: int
    used: int
    free: int | None


class Ecc(TypedDict, total=False):
    corrected_volatile: int
    corrected_aggregate: int
    uncorrected_volatile: int
    uncorrected_aggregate: int


class RetiredPages(TypedDict, total=False):
    single_bit: int
    double_bit: int
    pending: bool


class RemappedRows(TypedDict, total=False):
    corrected: int
    uncorrected: int
    pending: bool
    failure: bool


class Gpu(TypedDict, total=False):
    name: str
    uuid: str
    pci_bus_id: str
    temperature: int
    memory_temperature: int
    energy_mj: int
    pcie_replay: int
    mig_uuids: list[str]
    sm_clock: int
    mem_clock: int
    graphics_clock: int
    video_clock: int
    throttle_reasons: int
    power_mw: int
    gpu_util: int
    memory_util: int
    memory: Memory
    ecc: Ecc
    retired_pages: RetiredPages
    remapped_rows: RemappedRows
    supported_events: int
    lost: bool
    returns: dict[str, int]
    hang: dict[str, float]
    cuda: CudaFaults


class CudaFaults(TypedDict, total=False):
    """The fake CUDA driver's faults on one GPU (G8): `FakeNvml.set_cuda`."""

    wrong: bool
    hang_seconds: float
    error: int
    oom: bool


class Event(TypedDict):
    id: str | int
    gpu: int
    type: int
    data: int
    gpu_instance_id: int
    compute_instance_id: int
    at_ns: int
    """When it happened: only event sets that existed then hear it, as with a real driver."""


class State(TypedDict, total=False):
    driver_version: str
    nvml_version: str | None
    cuda_driver_version: int
    gpus: list[Gpu]
    returns: dict[str, int]
    hang: dict[str, float]
    events: list[Event]


NO_INSTANCE = 0xFFFFFFFF


def default_gpu(index: int) -> Gpu:
    """The healthy GPU the fake reports at `index` when the state leaves its values out."""
    return {
        "name": "NVIDIA H100 80GB HBM3",
        "uuid": f"GPU-00000000-0000-4000-8000-{index:012x}",
        "pci_bus_id": f"00000000:{0x18 + index:02X}:00.0",
        "temperature": 40,
        "memory_temperature": 45,
        "energy_mj": 1_000_000,
        "pcie_replay": 0,
        "mig_uuids": [],
        "sm_clock": 1980,
        "mem_clock": 2619,
        "graphics_clock": 1980,
        "video_clock": 1755,
        "throttle_reasons": 0,
        "power_mw": 72_000,
        "gpu_util": 0,
        "memory_util": 0,
        "memory": {"total": 80 << 30, "reserved": 512 << 20, "used": 0, "free": None},
        "ecc": {
            "corrected_volatile": 0,
            "corrected_aggregate": 0,
            "uncorrected_volatile": 0,
            "uncorrected_aggregate": 0,
        },
        "retired_pages": {"single_bit": 0, "double_bit": 0, "pending": False},
        "remapped_rows": {"corrected": 0, "uncorrected": 0, "pending": False, "failure": False},
        "supported_events": 0x19F,
        "lost": False,
        "returns": {},
        "hang": {},
    }


def default_state(gpus: int = 1) -> State:
    """`gpus` healthy GPUs and no faults, every value spelled out."""
    return {
        "driver_version": "550.54.15",
        "nvml_version": None,
        "cuda_driver_version": 12040,
        "gpus": [default_gpu(i) for i in range(gpus)],
        "returns": {},
        "hang": {},
        "events": [],
    }


class FakeNvml:
    """Reads and rewrites one state file. Every change is one atomic write, so a running
    driver sees either the old state or the new one, never half a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def env(self) -> dict[str, str]:
        """The environment variable that points the fake at this file."""
        return {STATE_ENV: str(self.path)}

    def read(self) -> State:
        """The state written last, or `default_state()` when there is no file yet."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return default_state()
        return cast(State, json.loads(text))

    def write(self, state: State) -> None:
        _write_atomically(self.path, json.dumps(state, indent=2) + "\n")

    def reset(self, gpus: int = 1) -> None:
        """`gpus` healthy GPUs, no faults, no pending events."""
        self.write(default_state(gpus))

    def set_gpu_count(self, count: int) -> None:
        """Drops GPUs from the end of the list (they answer GPU_IS_LOST to held handles) or
        appends healthy ones."""
        state = self.read()
        gpus = state.setdefault("gpus", [])
        del gpus[count:]
        gpus.extend(default_gpu(i) for i in range(len(gpus), count))
        self.write(state)

    def set_gpu(self, index: int, **values: Unpack[Gpu]) -> None:
        """Changes the named values of one GPU; a nested table (`ecc={...}`) is merged."""
        state = self.read()
        gpu = _gpu(state, index)
        for key, value in values.items():
            current = gpu.get(key)
            if isinstance(value, dict) and isinstance(current, dict):
                current.update(value)
            else:
                cast(dict[str, Any], gpu)[key] = value
        self.write(state)

    def lose_gpu(self, index: int, lost: bool = True) -> None:
        """Every call naming the GPU answers GPU_IS_LOST (15), as after it fell off the bus."""
        self.set_gpu(index, lost=lost)

    def set_return(self, function: str, code: int, gpu: int | None = None) -> None:
        """Every call of `function` (on `gpu` only, if given) answers `code`; 0 clears it."""
        state = self.read()
        table = _overrides(state, "returns", gpu)
        if code == Return.SUCCESS:
            table.pop(function, None)
        else:
            table[function] = int(code)
        self.write(state)

    def hang(self, function: str, seconds: float, gpu: int | None = None) -> None:
        """Every call of `function` (on `gpu` only, if given) blocks `seconds` before
        answering; 0 clears it and releases calls already blocked."""
        state = self.read()
        table = _overrides(state, "hang", gpu)
        if seconds <= 0:
            table.pop(function, None)
        else:
            table[function] = float(seconds)
        self.write(state)

    def inject_event(self, gpu: int, event_type: int, data: int = 0) -> str:
        """Queues one event for delivery through the event wait; returns its id."""
        state = self.read()
        _gpu(state, gpu)
        event_id = f"evt-{uuid.uuid4().hex[:12]}"
        state.setdefault("events", []).append(
            {
                "id": event_id,
                "gpu": gpu,
                "type": int(event_type),
                "data": data,
                "gpu_instance_id": NO_INSTANCE,
                "compute_instance_id": NO_INSTANCE,
                # Heard only by event sets that exist now (a runwarden watching), once.
                "at_ns": time.time_ns(),
            }
        )
        self.write(state)
        return event_id

    def set_cuda(
        self,
        gpu: int,
        *,
        wrong: bool = False,
        hang_seconds: float = 0.0,
        error: int = 0,
        oom: bool = False,
    ) -> None:
        """The fake CUDA driver's faults on `gpu` (G8), all cleared by default: a wrong
        answer (one bit of each kernel's output flipped), synchronisation blocking
        `hang_seconds`, launches answering CUDA error `error`, allocation out of memory."""
        state = self.read()
        _gpu(state, gpu)["cuda"] = {
            "wrong": wrong,
            "hang_seconds": hang_seconds,
            "error": error,
            "oom": oom,
        }
        self.write(state)

    def inject_xid(self, gpu: int, xid: int) -> str:
        """A critical XID event (e.g. 79, fallen off the bus) on `gpu`; returns its id."""
        return self.inject_event(gpu, EventType.XID_CRITICAL_ERROR, xid)


def _gpu(state: State, index: int) -> Gpu:
    gpus = state.get("gpus", [])
    if not 0 <= index < len(gpus):
        raise FakeNvmlError(
            f"no GPU {index}: the state has {len(gpus)}; call reset(gpus=N) or "
            "set_gpu_count(N) first"
        )
    return gpus[index]


def _overrides(state: State, key: str, gpu: int | None) -> dict[str, Any]:
    owner = cast(dict[str, Any], state if gpu is None else _gpu(state, gpu))
    return cast(dict[str, Any], owner.setdefault(key, {}))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(temp, 0o644)
        # The driver notices a change by stat alone. Moving mtime strictly forward makes two
        # writes within one clock tick, of the same size, still read as two versions.
        try:
            previous = path.stat().st_mtime_ns
        except FileNotFoundError:
            previous = 0
        mtime = max(time.time_ns(), previous + 1_000)
        os.utime(temp, ns=(mtime, mtime))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _bump_generation(path)


def _bump_generation(path: Path) -> None:
    """Tell running fakes that the state changed. Each maps `<state>.generation` and
    compares it on every call, so the change is seen at once while a call costs no `stat`
    (a hand-edited state file is still seen within 0.1 s)."""
    fd = os.open(path.with_name(path.name + ".generation"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size < 8:
            os.ftruncate(fd, 8)
        current = int.from_bytes(os.pread(fd, 8, 0), "little")
        os.pwrite(fd, (current + 1).to_bytes(8, "little"), 0)
    finally:
        os.close(fd)


PACKAGED = Path(__file__).resolve().parent / "fake_nvml"
"""Where a wheel built by `make wheel` carries the fake (`runwarden/testing/fake_nvml/`)."""


def _checkout(root: Path) -> Path | None:
    return root if (root / "rust" / "fake-nvml" / "Cargo.toml").is_file() else None


def _source_root() -> Path | None:
    """The checkout this package runs from (an editable install, `make dev`)."""
    # python/runwarden/testing/__init__.py -> the checkout's root, three levels above python/.
    return _checkout(Path(__file__).resolve().parents[3])


def _built_from() -> Path | None:
    """The checkout the extension was compiled in, if it is still there: `pip install .`
    (the quick start) copies no source into site-packages, but it built in the checkout."""
    from runwarden._core import BUILT_FROM

    return _checkout(Path(BUILT_FROM))


def _newest_source(crate: Path) -> int:
    sources = [crate / "Cargo.toml", *crate.glob("*.rs"), *crate.joinpath("src").rglob("*.rs")]
    return max(p.stat().st_mtime_ns for p in sources)


CUDA_LIBRARY_NAME = "libcuda.so.1"
"""The fault kit's fake CUDA driver (G8), beside the fake NVML in the same directory."""

# Each fake: its crate, the library cargo builds, and the name it is loaded by.
FAKES = (
    ("fake-nvml", "libnvidia_ml.so", LIBRARY_NAME),
    ("fake-cuda", "libcuda.so", CUDA_LIBRARY_NAME),
)


def fake_nvml_dir() -> Path:
    """The directory holding the fake `libnvidia-ml.so.1` and `libcuda.so.1`. An installed
    wheel carries them, built for glibc 2.17 and later (no Rust needed). Run from a source
    checkout, or installed from one (`pip install .`, which builds in the checkout), they are
    built there (`cargo build -p fake-nvml -p fake-cuda --release`) when missing or older
    than their sources."""
    root = _source_root()
    if root is None and (PACKAGED / LIBRARY_NAME).is_file():
        return PACKAGED  # an installed wheel's own
    root = root or _built_from()  # `pip install .`: the checkout it was built in
    if root is None or shutil.which("cargo") is None:
        if (PACKAGED / LIBRARY_NAME).is_file():
            return PACKAGED
        if root is None:
            from runwarden._core import BUILT_FROM

            raise FakeNvmlError(
                f"this runwarden ({Path(__file__).parent}) carries no fake NVML driver, and "
                f"the checkout it was built in ({BUILT_FROM}) is not there to build one: "
                "install a wheel made by `make wheel`, or `pip install .` again from a "
                "checkout with Rust"
            )
    assert root is not None
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    target = target if target.is_absolute() else root / target
    stale = [
        crate
        for crate, built, _ in FAKES
        if not (target / "release" / built).is_file()
        or (target / "release" / built).stat().st_mtime_ns < _newest_source(root / "rust" / crate)
    ]
    if stale:
        cargo = shutil.which("cargo")
        if cargo is None:
            raise FakeNvmlError("building the fault kit's fake drivers needs cargo (Rust) on PATH")
        packages = [arg for crate in stale for arg in ("-p", crate)]
        result = subprocess.run(
            [cargo, "build", *packages, "--release"], cwd=root, capture_output=True, text=True
        )
        if result.returncode != 0:
            command = f"cargo build {' '.join(packages)} --release"
            raise FakeNvmlError(f"`{command}` failed:\n{result.stderr}")
    out = target / "fake-nvml"
    for _, built_name, name in FAKES:
        built = target / "release" / built_name
        library = out / name
        # A copy, not a link: a rebuild must not rewrite a library a running process has
        # mapped. copy2 keeps the mtime, which tells whether the copy is current.
        source = built.stat()
        if (
            not library.is_file()
            or library.stat().st_mtime_ns != source.st_mtime_ns
            or library.stat().st_size != source.st_size
        ):
            out.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=out, prefix=f".{name}.")
            os.close(fd)
            shutil.copy2(built, temp)
            os.replace(temp, library)
    return out
