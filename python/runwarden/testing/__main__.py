"""`python -m runwarden.testing`: write the fake NVML driver's state file from a shell.

python -m runwarden.testing --state gpus.json reset --gpus 2
python -m runwarden.testing --state gpus.json set-gpu 0 temperature=95 ecc.uncorrected_volatile=1
python -m runwarden.testing --state gpus.json inject-xid 0 79
python -m runwarden.testing --state gpus.json lose-gpu 1
python -m runwarden.testing --state gpus.json hang nvmlDeviceGetTemperature 30
python -m runwarden.testing --state gpus.json set-return nvmlDeviceGetPowerUsage 999 --gpu 0
python -m runwarden.testing wait-for temperature --gpu 0   # runwarden reported it
python -m runwarden.testing build        # prints the directory for LD_LIBRARY_PATH
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from collections.abc import Sequence
from typing import Any, cast

from runwarden.testing import (
    STATE_ENV,
    FakeNvml,
    FakeNvmlError,
    Gpu,
    State,
    default_gpu,
    default_state,
    fake_nvml_dir,
)


class UsageError(Exception):
    """A command-line mistake, reported with the usage text."""


def _parse_value(key: str, raw: str, example: object) -> object:
    """`raw` converted to the type the state file holds at `key` (an example value shows it)."""
    try:
        if isinstance(example, bool):
            if raw.lower() in ("true", "1", "yes"):
                return True
            if raw.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if isinstance(example, int):
            return int(raw, 0)
        if example is None:  # an optional number, e.g. memory.free
            return None if raw.lower() in ("null", "none") else int(raw, 0)
        if isinstance(example, dict):
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError
            return value
    except ValueError:
        kind = "a JSON object" if isinstance(example, dict) else type(example).__name__
        raise UsageError(f"{key}={raw!r}: expected {kind}") from None
    return raw


def _assignments(pairs: Sequence[str], example: dict[str, Any]) -> dict[str, Any]:
    """`KEY=VALUE` pairs as a (one level nested, for `ecc.uncorrected_volatile=1`) table."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise UsageError(f"{pair!r}: expected KEY=VALUE")
        outer, _, inner = key.partition(".")
        if outer not in example:
            raise UsageError(f"unknown key {outer!r}; known: {', '.join(example)}")
        if inner:
            table = example[outer]
            if not isinstance(table, dict) or inner not in table:
                known = ", ".join(table) if isinstance(table, dict) else "none"
                raise UsageError(f"unknown key {key!r}; known under {outer}: {known}")
            values.setdefault(outer, {})[inner] = _parse_value(key, raw, table[inner])
        else:
            values[outer] = _parse_value(key, raw, example[outer])
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runwarden.testing",
        description="Write the state file of the fake NVML driver (see runwarden.testing).",
    )
    parser.add_argument(
        "--state",
        default=os.environ.get(STATE_ENV),
        help=f"the state file (default: ${STATE_ENV})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reset = commands.add_parser("reset", help="healthy GPUs, no faults, no events")
    reset.add_argument("--gpus", type=int, default=1, help="how many GPUs (default 1)")
    commands.add_parser("show", help="print the state")
    commands.add_parser("build", help="build the fake and print the directory holding it")

    count = commands.add_parser("set-count", help="drop GPUs from the end or add healthy ones")
    count.add_argument("count", type=int)

    system = commands.add_parser("set", help="system values, e.g. driver_version=535.104.05")
    system.add_argument("values", nargs="+", metavar="KEY=VALUE")

    gpu = commands.add_parser(
        "set-gpu", help="GPU values, e.g. temperature=95 ecc.uncorrected_volatile=1"
    )
    gpu.add_argument("index", type=int)
    gpu.add_argument("values", nargs="+", metavar="KEY=VALUE")

    xid = commands.add_parser("inject-xid", help="deliver a critical XID event once")
    xid.add_argument("gpu", type=int)
    xid.add_argument("xid", type=int)

    event = commands.add_parser("inject-event", help="deliver an event of any type once")
    event.add_argument("gpu", type=int)
    event.add_argument("type", type=lambda s: int(s, 0), help="nvmlEventType bits, e.g. 0x2")
    event.add_argument("data", type=int, nargs="?", default=0)

    lose = commands.add_parser("lose-gpu", help="every call naming the GPU answers GPU_IS_LOST")
    lose.add_argument("index", type=int)
    lose.add_argument("--restore", action="store_true", help="bring it back instead")

    hang = commands.add_parser("hang", help="calls of FUNCTION block SECONDS (0 clears)")
    hang.add_argument("function")
    hang.add_argument("seconds", type=float)
    hang.add_argument("--gpu", type=int, help="only calls naming this GPU")

    wrong = commands.add_parser(
        "canary-wrong", help="the fake CUDA driver answers the canary wrong on GPU (G8)"
    )
    wrong.add_argument("gpu", type=int)
    cuda_hang = commands.add_parser(
        "canary-hang", help="the fake CUDA driver's synchronisation blocks SECONDS on GPU"
    )
    cuda_hang.add_argument("gpu", type=int)
    cuda_hang.add_argument("seconds", type=float)
    cuda_error = commands.add_parser(
        "canary-error", help="the fake CUDA driver's launches answer CODE on GPU (214: ECC)"
    )
    cuda_error.add_argument("gpu", type=int)
    cuda_error.add_argument("code", type=int)
    oom = commands.add_parser("canary-oom", help="the fake CUDA driver is out of memory on GPU")
    oom.add_argument("gpu", type=int)
    clear = commands.add_parser("canary-clear", help="no CUDA fault on GPU")
    clear.add_argument("gpu", type=int)

    ready = commands.add_parser(
        "wait-ready",
        help="wait until the runwarden at the admin address is ready and watches its GPUs' "
        "events (an event injected before that would not reach it, as with a real driver)",
    )
    ready.add_argument(
        "--admin",
        help="the admin port's URL (default: from RUNWARDEN_ADMIN_HOST and "
        "RUNWARDEN_ADMIN_PORT, else http://127.0.0.1:8081)",
    )
    ready.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")

    wait_for = commands.add_parser(
        "wait-for",
        help="wait until the runwarden at the admin address reports a finding of RULE (a "
        "warning such as temperature, or a fatal one) and print it: a change to the state "
        "file is seen at the next GPU sample (--gpu-sample-seconds, 5 s by default)",
    )
    wait_for.add_argument("rule", help="the finding's rule, e.g. temperature, power_brake")
    wait_for.add_argument("--gpu", type=int, help="only a finding on this GPU")
    wait_for.add_argument("--admin", help="the admin port's URL (default: as wait-ready's)")
    wait_for.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")

    ret = commands.add_parser("set-return", help="calls of FUNCTION answer CODE (0 clears)")
    ret.add_argument("function")
    ret.add_argument("code", type=int)
    ret.add_argument("--gpu", type=int, help="only calls naming this GPU")
    return parser


def _run(args: argparse.Namespace) -> None:
    if args.command == "build":
        print(fake_nvml_dir())
        return
    if args.command == "wait-ready":
        _wait_ready(args.admin or _admin_from_env(), args.timeout)
        return
    if args.command == "wait-for":
        print(_wait_for(args.admin or _admin_from_env(), args.rule, args.gpu, args.timeout))
        return
    if not args.state:
        raise UsageError(f"no state file: pass --state PATH or set {STATE_ENV}")
    nvml = FakeNvml(args.state)
    match args.command:
        case "reset":
            nvml.reset(gpus=args.gpus)
        case "show":
            print(json.dumps(nvml.read(), indent=2))
        case "set-count":
            nvml.set_gpu_count(args.count)
        case "set":
            example = {k: v for k, v in default_state().items() if k not in ("gpus", "events")}
            example["nvml_version"] = ""  # null by default, a string when set
            state = nvml.read()
            state.update(cast(State, _assignments(args.values, example)))
            nvml.write(state)
        case "set-gpu":
            values = cast(Gpu, _assignments(args.values, cast(dict[str, Any], default_gpu(0))))
            nvml.set_gpu(args.index, **values)
        case "inject-xid":
            event = nvml.inject_xid(args.gpu, args.xid)
            print(f"XID {args.xid} on GPU {args.gpu}: event {event}, heard once by each "
                  "runwarden watching that GPU now")  # fmt: skip
        case "inject-event":
            event = nvml.inject_event(args.gpu, args.type, args.data)
            print(f"event {event} (type {args.type:#x}, data {args.data}) on GPU {args.gpu}, "
                  "heard once by each runwarden watching that GPU now")  # fmt: skip
        case "canary-wrong":
            nvml.set_cuda(args.gpu, wrong=True)
        case "canary-hang":
            nvml.set_cuda(args.gpu, hang_seconds=args.seconds)
        case "canary-error":
            nvml.set_cuda(args.gpu, error=args.code)
        case "canary-oom":
            nvml.set_cuda(args.gpu, oom=True)
        case "canary-clear":
            nvml.set_cuda(args.gpu)
        case "lose-gpu":
            nvml.lose_gpu(args.index, lost=not args.restore)
        case "hang":
            nvml.hang(args.function, args.seconds, gpu=args.gpu)
        case "set-return":
            nvml.set_return(args.function, args.code, gpu=args.gpu)


def _admin_from_env() -> str:
    host = os.environ.get("RUNWARDEN_ADMIN_HOST", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{os.environ.get('RUNWARDEN_ADMIN_PORT', '8081')}"


def _wait_ready(admin: str, timeout: float) -> None:
    """Until /status says ready with every watched GPU's events registered."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{admin}/status", timeout=2) as answer:
                status = json.load(answer)
            gpu = status.get("gpu") or {}
            pending = [g["index"] for g in gpu.get("watched", []) if g["events"] == "pending"]
            if status.get("ready") and not pending:
                return
            last = f"state {status.get('state')}, events pending on GPUs {pending}"
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.1)
    raise FakeNvmlError(f"runwarden at {admin} not ready within {timeout:g} s ({last})")


def _wait_for(admin: str, rule: str, gpu: int | None, timeout: float) -> str:
    """Until /status lists a finding of `rule` (on `gpu`, if given); its line, as logged."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{admin}/status", timeout=2) as answer:
                findings = (json.load(answer).get("gpu") or {}).get("findings", [])
            for found in reversed(findings):
                if found["rule"] == rule and gpu in (None, found["gpu"]):
                    where = f" on GPU {found['gpu']}" if found["gpu"] is not None else ""
                    return f"GPU {found['severity']} {rule}{where}: {found['detail']}"
            last = f"findings so far: {[f['rule'] for f in findings] or 'none'}"
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.1)
    on = f" on GPU {gpu}" if gpu is not None else ""
    raise FakeNvmlError(
        f"runwarden at {admin} reported no {rule}{on} within {timeout:g} s ({last})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _run(args)
    except UsageError as e:
        parser.error(str(e))
    except FakeNvmlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
