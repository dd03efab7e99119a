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
