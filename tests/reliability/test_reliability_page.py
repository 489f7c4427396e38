"""``docs/reliability.md`` and the suite agree: the page is what ``faults.render()`` gives, and every row of
``faults.FAULTS`` has exactly one ``test_fault_<id>`` in this directory (and no test lacks a row)."""

from __future__ import annotations

import ast
from pathlib import Path

from faults import FAULTS, PAGE, PROPERTIES, render

HERE = Path(__file__).resolve().parent


def _fault_tests() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for f in sorted(HERE.glob("test_*.py")):
        for node in ast.parse(f.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_fault_"):
                found.setdefault(node.name, []).append(f.name)
    return found


def test_every_fault_has_one_test_and_every_test_a_row() -> None:
    tests = _fault_tests()
    rows = {f.test_name for f in FAULTS}
    assert len(rows) == len(FAULTS), "duplicate fault ids"
    assert sorted(rows - set(tests)) == [], "rows without a test"
    assert sorted(set(tests) - rows) == [], "tests without a row in faults.FAULTS"
    assert all(len(v) == 1 for v in tests.values()), tests


def test_properties_listed_exist() -> None:
    src = (HERE / "test_properties.py").read_text()
    names = [n.name for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    assert len(names) >= len(PROPERTIES)


def test_page_matches_suite() -> None:
    assert PAGE.is_file(), f"{PAGE} is missing: run .venv/bin/python tests/reliability/faults.py"
    assert PAGE.read_text(encoding="utf-8") == render(), (
        f"{PAGE} is out of date with tests/reliability/faults.py: run .venv/bin/python tests/reliability/faults.py")
