"""The package's shape: the import-linter contracts hold, no module imports itself in a circle (function-level
and TYPE_CHECKING imports included), and modules stay small enough to read in one sitting."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import llmpack

PACKAGE = Path(llmpack.__file__).parent
ROOT = PACKAGE.parent

MAX_LINES = 400
"""A module longer than this gets split along a real seam (docs/layout.md)."""

LONG_MODULES: dict[str, str] = {}
"""Modules allowed past :data:`MAX_LINES`, each with its reason (module path relative to ``llmpack/``)."""


def _module_lines() -> dict[str, int]:
    return {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines())
            for p in sorted(PACKAGE.rglob("*.py"))}


def test_modules_stay_under_the_size_limit() -> None:
    lines = _module_lines()
    too_long = {m: n for m, n in lines.items() if n > MAX_LINES and m not in LONG_MODULES}
    assert not too_long, f"modules over {MAX_LINES} lines (split them, or list them with a reason): {too_long}"
    stale = [m for m in LONG_MODULES if lines.get(m, 0) <= MAX_LINES]
    assert not stale, f"LONG_MODULES lists modules that are short now (remove them): {stale}"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    import grimp  # comes with import-linter (dev extra)

    graph = grimp.build_graph("llmpack")
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = _cycles(edges)
    assert not cycles, f"import cycles (each list is one strongly connected set of modules): {cycles}"


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if not Path(exe).exists():
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    r = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
