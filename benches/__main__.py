"""`python -m benches [--smoke] [--only SECTIONS] [--results PATH] [--json PATH]`

Runs the sections in one process tree, prints the table, and (for a full run) rewrites
`benches/RESULTS.md`. `--smoke` runs every path in seconds and measures nothing worth
keeping: CI runs it so the runner never rots; it writes no results unless asked.
`--wrk-seconds` and `--rounds` shorten a sample run (its figures are then rougher).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benches import (
    detection,
    embedded,
    footprint,
    front_door,
    gpu,
    interference,
    protocols,
    proxy,
    report,
)
from benches.common import ROOT, Profile, log
from benches.tools import ensure_tools

RUNNERS: dict[str, Any] = {
    "interference": interference,
    "proxy": proxy,
    "protocols": protocols,
    "detection": detection,
    "footprint": footprint,
    "front_door": front_door,
    "embedded": embedded,
    "gpu": gpu,
}
SECTIONS = tuple(s for s in RUNNERS if s != "gpu")
"""The sections a plain run measures; `gpu` (benches/gpu_check.py) is asked for by name: its
figures belong to the GPU it ran on, in benches/gpu_check-<gpu>.json."""
NEEDS_TOOLS = ("proxy", "front_door", "embedded")
"""The sections that compare with nginx and drive wrk."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every path once, in seconds")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(RUNNERS)}"
    )
    parser.add_argument("--results", type=Path, help="the RESULTS.md to rewrite "
                        "(default: benches/RESULTS.md for a full run of every section, "
                        "none for --smoke, --only or a shortened run)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--wrk-seconds", type=float, help="seconds per wrk run (default 4)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per comparison (default 2)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(RUNNERS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    profile = Profile.make(args.smoke)
    if args.wrk_seconds is not None:
        profile = dataclasses.replace(profile, wrk_seconds=max(1.0, args.wrk_seconds))
    if args.rounds is not None:
        profile = dataclasses.replace(profile, wrk_rounds=max(1, args.rounds))
    shortened = args.wrk_seconds is not None or args.rounds is not None
    results_path = args.results
    if results_path is None and not (args.smoke or shortened) and sections == list(SECTIONS):
        results_path = ROOT / "benches" / "RESULTS.md"

    began = time.monotonic()
    load_before = _load()
    results: dict[str, Any] = {"stream_bytes": profile.stream_bytes}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="runwarden-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for section in sections:
            log(f"section {section}")
            if section in NEEDS_TOOLS:
                missing = ensure_tools()
                if missing:
                    notes.append(f"{section} section skipped: {', '.join(missing)} not available")
                    log(notes[-1])
                    continue
            results[section] = RUNNERS[section].run(profile, tmp)
    if shortened:
        notes.append(f"shortened run: wrk {profile.wrk_seconds:g} s, {profile.wrk_rounds} round(s)")
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "wall_seconds": time.monotonic() - began,
        "command": report.command(),
        "machine": report.machine(),
        "load_before": load_before,
        "load_after": _load(),
        "notes": notes + (["smoke run: the figures mean nothing"] if args.smoke else []),
    }
    text = report.block(results, meta)
    print(text)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "meta": meta}, indent=1, default=str))
    if results_path is not None:
        report.write(results_path, text)
        log(f"wrote {results_path}")
    log(f"done in {meta['wall_seconds']:.0f} s")
    return 0


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
