"""The rules a maintainer looks up are in the repository (issue 10): every rule ID a test is
named after is defined in docs/rules.md, and the README links the docs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ID = re.compile(r"^(?:[A-Z]\d?)$")


def _cited() -> set[str]:
    cited: set[str] = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                for part in node.name.split("_")[1:]:
                    if not ID.match(part):
                        break
                    cited.add(part)
    return cited


def test_every_rule_a_test_cites_is_defined_in_docs_rules() -> None:
    rules = (ROOT / "docs/rules.md").read_text()
    defined = set(re.findall(r"^- \*\*([A-Z]\d?)\*\*", rules, re.M))
    cited = _cited()
    assert cited, "no test names a rule"
    assert cited <= defined, f"cited but not defined: {sorted(cited - defined)}"


def test_the_readme_links_the_rules_and_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/rules.md" in readme and "docs/settings.md" in readme


def _documents() -> list[Path]:
    """Every document a reader may take exit codes from: README, docs/, deploy/."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return files + sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file())


def test_every_exit_code_table_and_range_agrees_with_exit_codes_py() -> None:
    """D4: a table row `| 12 | `app_503` |` and a range "exits 10-15" anywhere in the README,
    docs/ and deploy/ say what `runwarden.exit_codes` says (deploy/README.md once said 10-16)."""
    from runwarden import exit_codes

    by_code = {code: reason for code, reason, _ in exit_codes.TABLE}
    replacing = sorted(exit_codes.BY_REASON.values())
    row = re.compile(r"^\|\s*(\d+)\s*\|\s*`(\w+)`\s*\|", re.M)
    span = re.compile(r"\b(1\d)\s*[-\u2013]\s*(1\d)\b")  # a hyphen or an en dash
    rows = ranges = 0
    for path in _documents():
        text = path.read_text(errors="replace")
        where = path.relative_to(ROOT)
        for code, reason in row.findall(text):
            rows += 1
            assert by_code.get(int(code)) == reason, f"{where}: | {code} | {reason} |"
        for low, high in span.findall(text):
            ranges += 1
            assert [int(low), int(high)] == [replacing[0], replacing[-1]], f"{where}: {low}-{high}"
    assert rows >= len(exit_codes.TABLE) - 2 and ranges >= 4, (rows, ranges)


def test_the_readme_has_a_complete_vllm_command_line_behind_runwarden() -> None:
    """The README shows `vllm serve` behind `runwarden serve`, whole (issue 24), and it parses
    to the vllm profile's settings, its 20-minute start-up budget included."""
    from runwarden.cli import parse

    readme = (ROOT / "README.md").read_text()
    found = re.search(r"^runwarden serve --app-profile vllm .*?\\\n\s+-- vllm serve .*$", readme,
                      re.M)  # fmt: skip
    assert found, "no `runwarden serve --app-profile vllm ... -- vllm serve ...` in README.md"
    argv = found.group(0).replace("\\\n", " ").split()[1:]
    settings = parse(argv, {})
    assert settings.app_command[:2] == ("vllm", "serve"), settings.app_command
    assert settings.health.health_path == "/health"
    assert settings.health.startup_timeout_seconds == 1200
    assert settings.sources["startup_timeout_seconds"] == "profile vllm"


def test_the_quick_start_says_the_first_build_is_long_and_how_to_watch_it() -> None:
    """The first `pip install` is silent for minutes while cargo compiles the core: the quick
    start says so, how to see progress, and what `make test` does to the environment."""
    readme = (ROOT / "README.md").read_text()
    quick = readme[readme.index("## Quick start") : readme.index("## Installing")]
    text = " ".join(quick.split())
    assert "compiles the Rust core" in text and "2 to 3 minutes on 2 cores" in text
    assert "pip install -v" in text
    assert "make test" in text and "python3 -m venv .venv" in text
    assert "exit code 12" in text and "orchestrator" in text
