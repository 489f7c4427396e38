"""``llmpack measure BASELINE CANDIDATE``: size, latency and accuracy deltas, with CI gates (exit 1)."""

from __future__ import annotations

import argparse
from typing import Any

from llmpack._atomic import atomic_write
from llmpack.errors import GateFailedError

__all__ = ["register", "run", "add_gate_arguments", "add_measure_arguments", "write_outputs", "finish"]

DESCRIPTION = """\
Measure a candidate model against its baseline: bytes on disk and in memory, peak memory,
latency (prefill and decode tokens/s for causal LMs, forward for encoders; baseline and candidate
timed interleaved), and accuracy (perplexity, KL divergence, top-1 agreement; embedding cosine for
encoders). Gates turn it into a CI check: a failed gate exits 1 and names the gate.

Example:
  llmpack measure ./smollm2 ./smollm2-int8 --quick --max-ppl-increase 2 --min-top1 0.9 \\
      --json report.json --markdown report.md --plot report.png
"""


def add_gate_arguments(p: "argparse.ArgumentParser | argparse._ArgumentGroup", *, ppl: bool = True,
                       only: "tuple[str, ...] | None" = None, help_prefix: str = "") -> None:
    """Gate options, one per row of :data:`llmpack.measure.gates.GATE_TABLE` (shared with ``quantize --measure``).

    Args:
        p: a parser (a "gates" group is added to it) or an existing argument group.
        ppl: ``False`` where ``--max-ppl-increase`` already exists with the same meaning.
        only: gate options to add (default: all).
        help_prefix: prepended to each help line (``"with --measure: "``).

    Example:
        >>> q = argparse.ArgumentParser(); add_gate_arguments(q)
        >>> q.parse_args(["--min-top1", "0.9"]).min_top1
        0.9
    """
    from llmpack.measure.gates import GATE_TABLE

    g = p.add_argument_group("gates (a failed gate exits 1)") if isinstance(p, argparse.ArgumentParser) else p
    for gate in GATE_TABLE:
        if (gate.option == "max_ppl_increase" and not ppl) or (only is not None and gate.option not in only):
            continue
        g.add_argument(gate.flag, type=float, default=None, metavar=gate.metavar, help=help_prefix + gate.help)


def add_measure_arguments(p: argparse.ArgumentParser) -> None:
    """Measurement options: device, text, batch sizes, sequence length, quick mode, outputs."""
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="where to run (default: cuda if available)")
    p.add_argument("--text", metavar="FILE", default=None,
                   help="UTF-8 text file for perplexity / KL (default: a fixed slice of pydoc_data.topics)")
    p.add_argument("--batch-sizes", metavar="LIST", default=None, help="comma-separated batch sizes (default 1,8; quick 1)")
    p.add_argument("--seq-len", type=int, default=128, metavar="N", help="prompt tokens per row when timing (default 128)")
    p.add_argument("--new-tokens", type=int, default=None, metavar="N",
                   help="decode steps timed after the prefill (default 32; quick 8)")
    p.add_argument("--runs", type=int, default=None, metavar="N",
                   help="timed run pairs per batch size (default: fit a time budget)")
    p.add_argument("--quick", action="store_true", help="a short measurement (under a minute for a small model)")
    p.add_argument("--no-latency", action="store_true",
                   help="size and accuracy only: directories are never loaded whole (accuracy runs block by block)")
    p.add_argument("--runtime", choices=("default", "reference"), default="default",
                   help="int8 kernels: what llmpack.load runs here (default), or compressed-tensors' reference "
                        "arithmetic (what transformers and vLLM compute); the report names the one used")
    p.add_argument("--json", metavar="F", default=None, help="write the report as JSON")
    p.add_argument("--markdown", metavar="F", default=None, help="write the report as Markdown")
    p.add_argument("--html", metavar="F", default=None, help="write the report as HTML")
    p.add_argument("--plot", metavar="F", default=None, help="write a PNG plot (latency distributions, size bars)")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``measure`` subcommand."""
    p = subparsers.add_parser("measure", help="size, latency and accuracy of a candidate vs its baseline (CI gates)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("baseline", metavar="BASELINE", help="the reference model directory (e.g. the float original)")
    p.add_argument("candidate", metavar="CANDIDATE", help="the model directory to judge (e.g. llmpack's output)")
    add_measure_arguments(p)
    add_gate_arguments(p)
    return p


def write_outputs(report: Any, args: Any) -> list[str]:
    """Write ``--json`` / ``--markdown`` / ``--html`` / ``--plot`` files when asked; returns the paths written."""
    from pathlib import Path

    written = []
    if getattr(args, "json", None):
        report.to_json(args.json)
        written.append(args.json)
    if getattr(args, "markdown", None):
        report.to_markdown(args.markdown)
        written.append(args.markdown)
    if getattr(args, "html", None):
        p = Path(args.html)
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, "<!doctype html><meta charset=\"utf-8\">\n" + report.to_html() + "\n")
        written.append(args.html)
    if getattr(args, "plot", None):
        report.plot(args.plot)
        written.append(args.plot)
    return written


def finish(report: Any, args: Any) -> int:
    """Write the requested files, print the report (human or JSON) and raise when a gate failed.

    ``quantize --measure`` calls this too, so both commands print and gate the same way.

    Raises:
        GateFailedError: a gate failed (exit 1); the message names each failed gate with its value.
    """
    from llmpack._output import emit

    write_outputs(report, args)
    fmt = getattr(args, "format", "human")
    human = report.to_markdown() if not getattr(args, "quiet", False) else report.summary()
    emit(fmt, human, report.to_dict())
    if not report.passed:
        failed = [g.line() for g in report.gate_results if g.applicable and not g.passed]
        raise GateFailedError(f"measure gate failed: {'; '.join(failed)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``llmpack measure``."""
    from pathlib import Path

    from llmpack.measure.api import gates_from_args, measure, parse_batch_sizes

    report = measure(
        args.baseline,
        args.candidate,
        text=Path(args.text) if args.text else None,
        device=args.device,
        batch_sizes=parse_batch_sizes(args.batch_sizes) if args.batch_sizes else None,
        seq_len=args.seq_len,
        new_tokens=args.new_tokens,
        runs=args.runs,
        quick=args.quick,
        gates=gates_from_args(args),
        quiet=args.quiet or args.format == "json",
        latency=not args.no_latency,
        runtime=args.runtime,
    )
    return finish(report, args)
