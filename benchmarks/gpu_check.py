"""Quantize SmolLM2 with each method and measure it against the FP32 source (and INT8 against FP16 on CUDA).

Run through ``benchmarks/gpu_check.sh`` (which checks the environment first), or directly:

    python benchmarks/gpu_check.py --device cuda
    python benchmarks/gpu_check.py --device cpu --quick          # smoke test, no GPU needed

Methods are tried in order; a method this llmpack build does not know or cannot write yet is skipped
with a message, so the script grows with the library. Reports are printed as Markdown and written as
JSON (and Markdown) to ``--out-dir`` (default ``$OUT`` when set, else a temp dir).

Example:
    python benchmarks/gpu_check.py --device cuda --methods fp16,bf16,int8,int8-weight-only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_METHODS = "fp16,bf16,int8,int8-weight-only"


def _log(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Quantize + measure SmolLM2 per method; returns 0 when every available method ran, 1 otherwise."""
    import torch

    from llmpack.config import Method
    from llmpack.errors import LlmpackError
    from llmpack.measure.api import measure
    from llmpack.testing import smollm2_dir

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    ap.add_argument("--quick", action="store_true", help="short measurement (batch 1, few runs)")
    ap.add_argument("--runs", type=int, default=None, help="timed runs per batch size (default: 10 on CUDA, budget on CPU)")
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or None, help="where JSON/Markdown reports go")
    args = ap.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        _log("CUDA is not available on this machine: use --device cpu (smoke test)")
        return 2
    t0 = time.perf_counter()
    out_dir = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="gpu-check-reports-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-models-"))
    src = smollm2_dir()
    _log(f"source {src} ({time.perf_counter() - t0:.1f} s); device {args.device}"
         + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else ""))
    runs = args.runs if args.runs is not None else (10 if args.device == "cuda" else None)
    kw = {"device": args.device, "quick": args.quick, "quiet": True, "runs": runs}
    if args.quick:
        kw["batch_sizes"] = (1,)

    try:
        from llmpack.pipeline import quantize
    except ImportError as e:
        _log(f"llmpack.pipeline is not available ({e}): nothing to quantize")
        return 1

    made: dict[str, Path] = {}
    failures = 0
    summaries: list[str] = []
    for name in [m.strip() for m in args.methods.split(",") if m.strip()]:
        try:
            method = Method.parse(name)
        except LlmpackError as e:
            _log(f"skip {name}: {e}")
            continue
        out = work / f"smollm2-{method.value}"
        t1 = time.perf_counter()
        try:
            quantize(src, method.value, out=out, quiet=True)
        except (LlmpackError, ImportError, NotImplementedError) as e:
            _log(f"skip {method.value}: this build cannot write it yet ({type(e).__name__}: {e})")
            continue
        made[method.value] = out
        _log(f"quantized {method.value} in {time.perf_counter() - t1:.1f} s")
        baselines = [("fp32", src)]
        if args.device == "cuda" and method.is_int8 and "fp16" in made:
            baselines.append(("fp16", made["fp16"]))
        for base_name, base in baselines:
            t2 = time.perf_counter()
            try:
                report = measure(base, out, **kw)
            except (LlmpackError, RuntimeError) as e:
                failures += 1
                _log(f"measure {method.value} vs {base_name} FAILED: {type(e).__name__}: {e}")
                continue
            tag = f"{method.value}-vs-{base_name}"
            report.to_json(out_dir / f"{tag}.json")
            md = report.to_markdown(out_dir / f"{tag}.md")
            print(md, flush=True)
            summaries.append(f"{tag}: {report.summary()}  [{time.perf_counter() - t2:.1f} s]")
    _log("summary:")
    for s in summaries:
        print(f"  {s}")
    _log(f"done in {time.perf_counter() - t0:.1f} s; reports in {out_dir}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
