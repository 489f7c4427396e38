"""Generate the reference pages of the documentation from the code itself.

* ``docs/cli.md`` from :func:`llmpack.cli.build_parser` — every subcommand, its description (with the
  example), its usage line and a table of every option;
* ``docs/api.md`` from the docstrings and signatures of every name in ``llmpack.__all__``
  (:mod:`llmpack._docs_api`).

Run ``python -m llmpack._docs`` to rewrite both pages, ``python -m llmpack._docs --check`` to exit 1
when either is out of date (``tests/test_docs.py`` does the same).

Example:
    >>> text = render_cli()          # doctest: +SKIP
    >>> "## llmpack quantize" in text  # doctest: +SKIP
    True
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable, Iterator, Sequence

from llmpack._atomic import atomic_write
from llmpack._docs_api import HEADER as _HEADER
from llmpack._docs_api import _md_cell, _slug, api_objects, render_api

__all__ = ["render_cli", "render_api", "api_objects", "generated_pages", "main", "DOCS_DIR"]

DOCS_DIR = Path(__file__).resolve().parent.parent / "docs"
_WIDTH = 100


@contextlib.contextmanager
def _fixed_width(columns: int = _WIDTH) -> Iterator[None]:
    """argparse wraps help to the terminal width: pin it so the output does not depend on the terminal."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) for every subcommand, in ``llmpack --help`` order."""
    out: list[tuple[str, str, argparse.ArgumentParser]] = []
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: (a.help or "") for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def _option_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str, str]]:
    rows = []
    for a in parser._actions:
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._SubParsersAction):
            continue
        if a.option_strings:
            flags = ", ".join(f"`{s}`" for s in a.option_strings)
        else:
            flags = f"`{a.metavar or a.dest}`"
        if a.nargs == 0:
            value = ""
        elif a.choices is not None:
            value = " \\| ".join(f"`{c}`" for c in a.choices)
        elif a.metavar is not None:
            value = f"`{a.metavar if isinstance(a.metavar, str) else ' '.join(a.metavar)}`"
        elif a.option_strings:
            value = f"`{a.dest.upper()}`"
        else:
            value = ""
        if a.nargs in ("*", "+") or isinstance(a, argparse._AppendAction):
            value = (value + " (repeatable)").strip()
        default = ""
        if a.default not in (None, False, argparse.SUPPRESS) and a.nargs != 0 and a.option_strings:
            default = f"`{a.default}`"
        help_text = (a.help or "") % {"default": a.default, "prog": parser.prog} if a.help else ""
        if not a.option_strings:
            help_text = f"(positional) {help_text}".strip()
        rows.append((flags, value, default, help_text))
    return rows


def render_cli(parser: argparse.ArgumentParser | None = None) -> str:
    """Markdown reference of the whole CLI, generated from the argparse parser.

    Args:
        parser: the parser to document (default: :func:`llmpack.cli.build_parser`).

    Returns:
        The text of ``docs/cli.md``.

    Example:
        >>> import argparse
        >>> p = argparse.ArgumentParser(prog="demo")
        >>> sub = p.add_subparsers()
        >>> _ = sub.add_parser("hello", help="say hello")
        >>> "## demo hello" in render_cli(p)
        True
    """
    if parser is None:
        from llmpack.cli import build_parser

        parser = build_parser()
    with _fixed_width():
        lines = [_HEADER.format(src="`llmpack.cli.build_parser()`"), "# CLI reference\n"]
        lines.append(
            f"`{parser.prog}` (also `python -m {parser.prog}`) has one subcommand per step of the pipeline. "
            "Every subcommand accepts `--format human|json` (one JSON document on stdout) and `--quiet`, "
            "and exits with 0 ok, 1 a measurement gate failed, 2 bad usage or bad input, 3 integrity failure, "
            "130 interrupted (see [Troubleshooting](troubleshooting.md)).\n"
        )
        lines.append("```text\n" + parser.format_help().rstrip() + "\n```\n")
        subs = _subparsers(parser)
        if subs:
            lines.append("| Command | What it does |\n|---|---|")
            for name, help_text, _ in subs:
                anchor = _slug(f"{parser.prog} {name}")
                lines.append(f"| [`{name}`](#{anchor}) | {_md_cell(help_text)} |")
            lines.append("")
        for name, help_text, sub in subs:
            lines.append(f"## {sub.prog}\n")
            if help_text:
                h = _md_cell(help_text).rstrip(".")
                lines.append(h[:1].upper() + h[1:] + ".\n")
            lines.append("```text\n" + sub.format_usage().strip() + "\n```\n")
            if sub.description:
                lines.append("```text\n" + textwrap.dedent(sub.description).strip() + "\n```\n")
            rows = _option_rows(sub)
            if rows:
                lines.append("| Option | Value | Default | Description |\n|---|---|---|---|")
                for flags, value, default, h in rows:
                    lines.append(f"| {flags} | {value} | {default} | {_md_cell(h)} |")
                lines.append("")
            if sub.epilog:
                lines.append("```text\n" + textwrap.dedent(sub.epilog).strip() + "\n```\n")
    return "\n".join(lines).rstrip() + "\n"


# --- API ------------------------------------------------------------------------------------------

def generated_pages(docs_dir: Path = DOCS_DIR) -> dict[Path, Callable[[], str]]:
    """The generated pages: path -> function returning its text.

    Example:
        >>> sorted(p.name for p in generated_pages())
        ['api.md', 'cli.md']
    """
    return {docs_dir / "cli.md": render_cli, docs_dir / "api.md": render_api}


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the generated pages; returns the exit code.

    Example:
        >>> main(["--check"])  # doctest: +SKIP
        0
    """
    ap = argparse.ArgumentParser(prog="python -m llmpack._docs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when a generated page is out of date; write nothing")
    ap.add_argument("--docs-dir", type=Path, default=DOCS_DIR, help="where the pages live (default: %(default)s)")
    args = ap.parse_args(argv)
    stale = []
    for path, render in generated_pages(args.docs_dir).items():
        text = render()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, text)
            print(f"wrote {path}")
    if args.check and stale:
        for path in stale:
            print(f"{path} is out of date: run `python -m llmpack._docs`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
