"""``llmpack build``: run the pipeline from ``llmpack.toml``, skipping stages that are up to date."""

from __future__ import annotations

import argparse
import sys

from llmpack._output import emit

__all__ = ["register", "run"]

DESCRIPTION = """\
Run the whole pipeline from a declarative llmpack.toml: [source] -> [quantize] -> [measure] (gates)
-> [pack]. Cached: a stage whose output records the same inputs (source fingerprint, recipe, settings,
llmpack version) says "up to date" and is skipped. Meant as the CI step before `docker build`.

Exit codes: 0 ok (or, with --check, nothing would change); 1 a gate failed, or --check found drift;
2 bad config or input; 3 integrity failure.

Example:
  llmpack build                          # reads ./llmpack.toml
  llmpack build -c ci/llmpack.toml --format json
  llmpack build --check                  # exit 1 when the build would change anything; writes nothing
  llmpack build --history                # image digests per tag, newest last (rollback targets)

A minimal llmpack.toml:
  [source]
  path = "models/smollm2"        # HF dir, .gguf file or hub id
  [quantize]
  method = "int8"
  out = "build/model"
  [measure]
  max_ppl_increase = 2           # gate: exit 1 when perplexity rises more than 2%
  [pack]
  out = "build/image"
  name = "smollm2"
"""


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Add the ``build`` subcommand.

    Example:
        >>> p = argparse.ArgumentParser(); sub = p.add_subparsers()
        >>> register(sub).prog.endswith("build")
        True
    """
    p = subparsers.add_parser(
        "build", help="run quantize -> measure -> pack from llmpack.toml, cached (CI pre-build step)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", default="llmpack.toml", metavar="FILE",
                   help="the build file (default: %(default)s); relative paths in it resolve against its folder")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when any stage would change (drift detection)")
    p.add_argument("--force", action="store_true", help="rebuild every stage even when it is up to date")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where quantize's checks and calibration run (one block at a time) and measure runs")
    p.add_argument("--history", action="store_true",
                   help="list the image digests past builds produced, per tag (newest last), and exit: "
                        "the one before the last is the rollback target")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``llmpack build``; returns the exit code."""
    from llmpack.build import build, history

    if getattr(args, "history", False):
        hist = history(args.config)
        lines = [f"{tag}  {e.get('time', '?')}  {e.get('digest')}{'  (current)' if i == len(v) - 1 else ''}"
                 for tag, v in sorted(hist.items()) for i, e in enumerate(v)]
        emit(getattr(args, "format", "human"), "\n".join(lines) or "no image built yet", {"tags": hist})
        return 0

    result = build(args.config, check=args.check, force=args.force, quiet=args.quiet, raise_on_gate=False,
                   device=args.device)
    fmt = getattr(args, "format", "human")
    emit(fmt, result.human(), result.to_dict())
    if result.failed_gates:
        print("llmpack: error: gate failed: " + "; ".join(result.failed_gates), file=sys.stderr)
        return 1
    if args.check and result.changed:
        if fmt == "human":
            print("llmpack: the build is out of date (run `llmpack build`)", file=sys.stderr)
        return 1
    return 0
