"""One spelling for what crosses the seam between the core and Python (issue 10): the
reasons with their exit codes, the GPU finding rules, the promotable warnings and the GPU
sample's fields are the core's; the copies a type checker or a reader needs are checked
here against it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from runwarden import _core, exit_codes
from runwarden.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
STUB = (ROOT / "python/runwarden/_core.pyi").read_text()


def stub_fields(typed_dict: str) -> list[str]:
    """The keys of a TypedDict of the stub (they exist for the type checker only)."""
    node = next(n for n in ast.parse(STUB).body if getattr(n, "name", None) == typed_dict)
    return [n.target.id for n in node.body if isinstance(n, ast.AnnAssign)]  # type: ignore[attr-defined,union-attr]


def _literal(name: str) -> list[str]:
    tree = ast.parse(STUB)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            value = node.value
            assert isinstance(value, ast.Subscript)
            elements = value.slice.elts if isinstance(value.slice, ast.Tuple) else [value.slice]
            return [ast.literal_eval(e) for e in elements]
    raise AssertionError(f"no {name} in the stub")


def test_D4_the_stub_reasons_and_the_exit_code_table_are_the_cores() -> None:
    """D4: `Reason` in the stub is the core's list; exit codes come from it, each its own."""
    names = [reason for reason, _, _ in _core.REASONS]
    assert _literal("Reason") == names
    assert names[0] == "shutdown" and _core.REASONS[0][1] == exit_codes.CLEAN == 0
    table = {name: code for code, name, _ in exit_codes.TABLE}
    for reason, code, _ in _core.REASONS:
        assert table[reason] == code
    codes = [code for code, _, _ in exit_codes.TABLE]
    assert len(codes) == len(set(codes))


def test_D4_the_readme_and_help_list_every_exit_code() -> None:
    readme = (ROOT / "README.md").read_text()
    epilog = build_parser().epilog or ""
    for code, name, _ in exit_codes.TABLE:
        assert re.search(rf"^\| {code} \| ", readme, re.M), f"README: exit code {code}"
        assert f"{code:>3}  {name}" in epilog


def test_G_the_readme_rules_table_is_the_cores() -> None:
    """G2/G3: every rule the core can report is in the README with its severity, and the
    README names no other."""
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| (`[a-z_]+`(?:, `[a-z_]+`)*) \| (fatal|warning) \|", readme, re.M)
    documented = {rule.strip("`"): sev for names, sev in rows for rule in names.split(", ")}
    assert documented == {rule: severity for rule, severity, _ in _core.GPU_RULES}


def test_G3_the_promotable_warnings_are_the_cores() -> None:
    """G3: `--gpu-promote-warnings` names the warnings the core can promote, and refuses
    others by the core's list."""
    warnings = set(_core.PROMOTABLE_WARNINGS)
    assert warnings <= {rule for rule, severity, _ in _core.GPU_RULES if severity == "warning"}
    try:
        _core.GpuSettings(gpu_promote_warnings={"fans": 1.0})
    except _core.SettingsError as exc:
        assert all(w in str(exc) for w in warnings)
    else:
        raise AssertionError("an unknown warning was accepted")


def test_the_gpu_sample_typeddict_lists_the_fields_the_core_sends() -> None:
    """G1: the keys of `GpuSample` (stub) are the keys `rust/status.rs` gives a sample (the
    one shape /status and the bindings share); the fake driver's sample, read through the
    core, is checked in test_gpu.py."""
    fields = {name: stub_fields(name) for name in
              ("GpuSample", "EccCounts", "RetiredPages", "RemappedRows", "ReadError")}  # fmt: skip
    source = (ROOT / "rust/status.rs").read_text()
    sample = source[source.index("pub fn sample_json") : source.index("pub fn found_json")]
    sent = re.findall(r'"([a-z_]+)":', sample)
    declared = [
        *fields["GpuSample"], *fields["EccCounts"], *fields["RetiredPages"],
        *fields["RemappedRows"], *fields["ReadError"],
    ]  # fmt: skip
    assert sorted(set(sent)) == sorted(set(declared))
