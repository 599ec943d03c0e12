"""docs/reliability.md names only tests that exist (so the table cannot rot)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(30)
def test_every_test_named_in_the_reliability_page_exists() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(tests/reliability/[\w/]+\.py)::(\w+)`", page)
    assert len(named) >= 20
    defined = {}
    for path in {p for p, _ in named}:
        tree = ast.parse((ROOT / path).read_text())
        defined[path] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    missing = [f"{p}::{name}" for p, name in named if name not in defined[p]]
    assert missing == []
    suite = {p.name for p in (ROOT / "tests" / "reliability").glob("test_*.py")}
    covered = {Path(p).name for p, _ in named}
    assert suite - covered == {"test_reliability_doc.py"}  # every test file is in the table
