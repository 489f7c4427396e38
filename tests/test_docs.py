"""The documentation stays true to the code: generated references match, every error is documented,
every public function has an example, and the MkDocs site builds with ``--strict``."""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import llmpack
import llmpack.errors as errors
from llmpack import _docs
from llmpack.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _section(text: str, heading: str) -> str:
    """The body of a ``## heading`` section, up to the next ``## ``."""
    m = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    return m.group(1) if m else ""


# --- generated references ----------------------------------------------------------------------------


def test_cli_reference_matches_the_parser() -> None:
    current = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert current == _docs.render_cli(), "docs/cli.md is out of date: run `python -m llmpack._docs`"


def test_cli_reference_lists_every_subcommand_and_option() -> None:
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name, _, sub in _docs._subparsers(build_parser()):
        section = _section(text, f"llmpack {name}")
        assert section, f"llmpack {name} is not in docs/cli.md"
        for action in sub._actions:
            for flag in action.option_strings:
                assert f"`{flag}`" in section, f"{flag} of llmpack {name} is not in docs/cli.md"


def test_cli_reference_check_fails_when_the_parser_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    before = _docs.render_cli(parser)
    sub = next(s for _, _, s in _docs._subparsers(parser))
    sub.add_argument("--brand-new-flag", help="not documented yet")
    after = _docs.render_cli(parser)
    assert before != after and "--brand-new-flag" in after
    # and the --check entry point reports it (exit 1) without writing
    monkeypatch.setattr(_docs, "render_cli", lambda parser=None: after)
    cli_md = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert _docs.main(["--check"]) == 1
    assert (DOCS / "cli.md").read_text(encoding="utf-8") == cli_md


def test_api_reference_matches_the_docstrings() -> None:
    current = (DOCS / "api.md").read_text(encoding="utf-8")
    assert current == _docs.render_api(_docs.api_objects(strict=True)), (
        "docs/api.md is out of date: run `python -m llmpack._docs`")


def test_every_subcommand_help_has_an_example() -> None:
    subs = _docs._subparsers(build_parser())
    assert {name for name, _, _ in subs} >= {"build"}
    for name, help_text, sub in subs:
        assert help_text, f"llmpack {name} has no one-line help"
        text = (sub.description or "") + (sub.epilog or "")
        assert "Example" in text and f"llmpack {name}" in text, f"llmpack {name} --help has no example"


# --- public API docstrings ---------------------------------------------------------------------------


def test_every_public_name_has_a_docstring_with_an_example() -> None:
    objects = _docs.api_objects(strict=True)
    assert {n for n, _ in objects} == set(llmpack.__all__) - {"__version__"}
    missing = []
    for name, obj in objects:
        doc = inspect.getdoc(obj) or ""
        if not doc.strip():
            missing.append(f"{name}: no docstring")
        elif inspect.isfunction(obj) and "Example" not in doc:
            missing.append(f"{name}: docstring has no Example")
    assert not missing, missing


# --- troubleshooting ---------------------------------------------------------------------------------


def _error_classes() -> list[type]:
    """Every LlmpackError subclass defined anywhere in the package (llmpack.errors and module-local ones)."""
    import importlib
    import pkgutil

    for mod in pkgutil.walk_packages(llmpack.__path__, "llmpack."):
        if mod.name.rsplit(".", 1)[-1] in ("__main__", "demo"):
            continue
        importlib.import_module(mod.name)
    found: list[type] = []
    todo = [errors.LlmpackError]
    while todo:
        cls = todo.pop()
        if cls.__module__.startswith("llmpack.") and cls not in found:
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda c: c.__name__)


def test_every_error_class_is_documented_with_cause_and_fix() -> None:
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    classes = _error_classes()
    assert len(classes) >= 10
    for cls in classes:
        body = _section(text, cls.__name__)
        assert body, f"{cls.__name__} has no '## {cls.__name__}' section in docs/troubleshooting.md"
        assert "**Cause:**" in body and "**Fix:**" in body, f"{cls.__name__}: section lacks Cause or Fix"
        if cls is not errors.LlmpackError:
            assert f"Exit code {cls.exit_code}." in body, f"{cls.__name__}: documented exit code is wrong"


def test_every_raised_error_class_is_an_llmpack_error_that_is_documented() -> None:
    """Every ``raise X(...)`` in the package names a documented class (or a builtin re-raised on purpose)."""
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    documented = {c.__name__ for c in _error_classes()}
    raised = set()
    for path in (ROOT / "llmpack").rglob("*.py"):
        raised |= set(re.findall(r"raise\s+([A-Z][A-Za-z0-9_]*(?:Error|Interrupted))\(", path.read_text("utf-8")))
    builtin = {n for n in raised if n in dir(__import__("builtins"))}
    ours = raised - builtin
    assert ours <= documented, f"raised but not documented in docs/troubleshooting.md: {sorted(ours - documented)}"
    for name in ours:
        assert f"## {name}" in text


# --- the site builds ---------------------------------------------------------------------------------


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for page in ("index", "quickstart", "concepts", "build", "recipes", "formats", "api", "cli", "troubleshooting"):
        assert (site / f"{page}.html").is_file(), page
    assert "llmpack build" in (site / "cli.html").read_text(encoding="utf-8")
    assert not list((ROOT / "docs").glob("**/site")), "mkdocs wrote into the source tree"


def test_nav_names_every_page_that_exists() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.name for p in DOCS.glob("*.md")}
    for required in ("index.md", "quickstart.md", "concepts.md", "api.md", "cli.md", "formats.md", "recipes.md",
                     "troubleshooting.md"):
        assert required in pages and f": {required}" in nav, required
    for page in sorted(pages):
        assert f": {page}" in nav, f"docs/{page} exists but is not in mkdocs.yml's nav"


def test_docs_generator_module_main_is_runnable(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "llmpack._docs", "--docs-dir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cli.md").is_file() and (tmp_path / "api.md").is_file()
    proc = subprocess.run([sys.executable, "-m", "llmpack._docs", "--docs-dir", str(tmp_path), "--check"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr


def test_argparse_help_renders_for_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    for name, _, _ in _docs._subparsers(parser):
        with pytest.raises(SystemExit) as e:
            parser.parse_args([name, "--help"])
        assert e.value.code == 0
        assert f"usage: llmpack {name}" in capsys.readouterr().out
    assert isinstance(parser, argparse.ArgumentParser)


def test_every_llmpack_toml_key_is_documented() -> None:
    import importlib

    B = importlib.import_module("llmpack.build")  # the module (llmpack.build may be the function)
    text = (DOCS / "build.md").read_text(encoding="utf-8")
    for section, keys in (("source", B.SourceSection.KEYS), ("quantize", B.QuantizeSection.KEYS),
                          ("measure", B.MeasureSection.KEYS), ("pack", B.PackSection.KEYS)):
        assert f"[{section}]" in text
        for key in keys:
            assert re.search(rf"^#? ?{re.escape(key)} = ", text, flags=re.M) or f"{key} = " in text, (
                f"[{section}] {key} is not documented in docs/build.md")


def test_nav_lists_each_page_once() -> None:
    import yaml

    def pages(items: list) -> list[str]:
        out: list[str] = []
        for item in items:
            for value in item.values():
                out.extend(pages(value) if isinstance(value, list) else [value])
        return out

    nav = pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    assert len(nav) == len(set(nav)), sorted(p for p in nav if nav.count(p) > 1)
