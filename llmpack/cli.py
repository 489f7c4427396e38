"""Command-line front end: ``llmpack`` / ``python -m llmpack``.

Thin by design: every subcommand lives in ``llmpack/commands/<name>.py`` with two functions,
``register(subparsers)`` and ``run(args) -> int``, and calls the public API. This module maps
:class:`~llmpack.errors.LlmpackError` subclasses to exit codes and prints one line per error
(the traceback too when ``LLMPACK_DEBUG=1``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Sequence

from llmpack import __version__
from llmpack._env import debug as _env_debug
from llmpack.errors import Interrupted, LlmpackError

__all__ = ["main", "build_parser", "COMMANDS"]

# Order is the order of `llmpack --help`.
COMMANDS: tuple[str, ...] = ("quantize", "inspect", "verify", "measure", "pack", "build", "serve", "completion")


def add_common_options(p: argparse.ArgumentParser) -> None:
    """Options every subcommand shares: ``--format`` and ``--quiet``."""
    p.add_argument("--format", choices=("human", "json"), default="human",
                   help="output format: human-readable text or one JSON document on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or chatter")


def build_parser() -> argparse.ArgumentParser:
    """The full argparse parser (also used to generate docs/cli.md)."""
    parser = argparse.ArgumentParser(
        prog="llmpack",
        description="Quantize, shard, measure and pack Hugging Face models into container-ready artifacts.",
        epilog="Example: llmpack quantize ./my-model --method int8 --out ./my-model-int8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"llmpack {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        mod = importlib.import_module(f"llmpack.commands.{name}")
        p = mod.register(sub)
        add_common_options(p)
        p.set_defaults(_run=mod.run)
    return parser


def _debug() -> bool:
    return _env_debug()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 gate failed, 2 bad input, 3 integrity, 130 interrupted).

    Example:
        >>> main(["--version"])  # doctest: +SKIP
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt as e:
        if _debug():
            traceback.print_exc()
        msg = str(e) if isinstance(e, Interrupted) and str(e) else "interrupted; partial output was removed"
        print(f"llmpack: error: {msg}", file=sys.stderr)
        return 130
    except LlmpackError as e:
        if _debug():
            traceback.print_exc()
        print(f"llmpack: error: {e}", file=sys.stderr)
        return e.exit_code
    except (OSError, MemoryError) as e:
        if _debug():
            traceback.print_exc()
        print(f"llmpack: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
