"""``llmpack inspect DIR``: shards, tensors, dtypes, sizes and recipe of a model directory."""

from __future__ import annotations

import argparse

from llmpack._output import emit

__all__ = ["register", "run"]


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand."""
    p = subparsers.add_parser(
        "inspect", help="show shards, tensors, dtypes and sizes of a model directory",
        description="Show what a model directory holds, from safetensors headers only (no tensor data is read).\n\n"
                    "Example:\n  llmpack inspect ./smollm2-bf16 --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="DIR", help="model directory")
    p.add_argument("--tensors", type=int, default=20, metavar="N", help="list the first N tensors (human format)")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``inspect``; returns the exit code."""
    from llmpack.checkpoint.inspect import format_inspect, inspect

    info = inspect(args.path)
    emit(args.format, format_inspect(info, args.tensors), info)
    return 0
