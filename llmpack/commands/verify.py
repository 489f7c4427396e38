"""``llmpack verify DIR``: check sizes, sha256 digests, index and headers (exit 3 on mismatch)."""

from __future__ import annotations

import argparse

from llmpack._output import emit

__all__ = ["register", "run"]


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Add the ``verify`` subcommand."""
    p = subparsers.add_parser(
        "verify", help="verify a model directory (or OCI layout) against its recorded digests",
        description="Check every file's size and sha256 against llmpack.json, the index against the shards, and "
                    "that every safetensors header parses. An OCI layout (a dir with an oci-layout file) is "
                    "checked blob by blob. Exit code 3 on any mismatch.\n\n"
                    "Example:\n  llmpack verify ./smollm2-bf16",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="DIR", help="model directory or OCI layout")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``verify``; returns the exit code."""
    from llmpack.verify import verify

    res = verify(args.path, quiet=args.quiet)
    data = res.to_dict() if hasattr(res, "to_dict") else {"path": str(args.path), "ok": True}
    human = res.summary() if hasattr(res, "summary") else f"OK {args.path}"
    emit(args.format, human, data)
    return 0

