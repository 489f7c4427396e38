"""``llmpack quantize SRC --method M --out DIR``: streaming quantization into a sharded safetensors dir."""

from __future__ import annotations

import argparse
from typing import Any

from llmpack._output import emit

__all__ = ["register", "run"]


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Add the ``quantize`` subcommand."""
    p = subparsers.add_parser(
        "quantize", help="quantize a model (HF dir, .gguf, hub id) into a sharded safetensors directory",
        description="Read the source one tensor at a time, convert it, and write shards as it goes (bounded memory).\n"
                    "The output is built in a temp dir beside --out and renamed into place when complete.\n\n"
                    "Examples:\n  llmpack quantize ./smollm2 --method bf16 --out ./smollm2-bf16\n"
                    "  llmpack quantize ./smollm2 --method fp16 --out ./smollm2-fp16 --max-shard-size 200MB "
                    "--ignore 'lm_head*'\n"
                    "  llmpack quantize ./smollm2 --method int8 --out ./smollm2-int8 --max-ppl-increase 2",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SRC", help="HF model directory, .safetensors/.gguf file, or hub id")
    p.add_argument("--method", default="fp16", help="fp16 (default), bf16, int8, int8-weight-only, fp8 (alias fp8-dynamic), fp8-weight-only")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--max-shard-size", default="2GB", metavar="SIZE", help="largest shard, e.g. 2GB, 512MB (default 2GB)")
    p.add_argument("--ignore", action="append", default=[], metavar="PAT",
                   help="keep tensors/modules matching this glob (or re:REGEX) as in the source; repeatable")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output (after the new one is complete)")
    p.add_argument("--fp16-overflow", choices=("error", "keep"), default="error",
                   help="on FP16 overflow: refuse (default) or keep offending modules in float32")
    g = p.add_argument_group("int8 options")
    g.add_argument("--float-dtype", choices=("fp16", "bf16", "fp32"), default=None,
                   help="dtype of tensors that stay float in an int8 recipe (default: source dtype)")
    g.add_argument("--quantize-embeddings", action="store_true", help="store embedding tables and the output head as weight-only int8")
    g.add_argument("--max-ppl-increase", type=float, default=None, metavar="PCT",
                   help="accuracy budget: max perplexity increase in percent on calibration text, judged on the "
                        "KL-implied increase 100(exp(KL)-1)")
    g.add_argument("--max-kl", type=float, default=None, metavar="NATS", help="accuracy budget as mean KL divergence")
    g.add_argument("--smooth", type=float, default=None, metavar="ALPHA",
                   help="SmoothQuant migration strength in [0, 1] for W8A8 (default 0.65; 0 = off)")
    g.add_argument("--calibration-text", default=None, metavar="FILE",
                   help="UTF-8 text file to calibrate int8 on (default: built-in calibration text)")
    m = p.add_argument_group("measure after quantizing")
    m.add_argument("--measure", action="store_true",
                   help="measure the result against the source after writing (--max-ppl-increase doubles as a gate)")
    m.add_argument("--quick", action="store_true", help="with --measure: the quick measuring budget (< 1 min)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where the FP16 check and int8 calibration run, one block at a time (default cpu; "
                        "cuda: a model larger than GPU memory calibrates on one GPU), and --measure")
    from llmpack.commands.measure import add_gate_arguments

    add_gate_arguments(m, only=("min_top1", "min_speedup", "max_size_ratio"), help_prefix="with --measure: gate: ")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``quantize``; returns the exit code."""
    from llmpack.config import Method
    from llmpack.errors import ConfigError
    from llmpack.pipeline import quantize

    method = Method.parse(args.method)
    kwargs: dict[str, Any] = {}
    if args.float_dtype is not None:
        kwargs["float_dtype"] = args.float_dtype
    if args.quantize_embeddings:
        kwargs["quantize_embeddings"] = True
    if args.max_ppl_increase is not None:
        kwargs["max_ppl_increase"] = args.max_ppl_increase
    if args.max_kl is not None:
        kwargs["max_kl"] = args.max_kl
    if args.smooth is not None:
        kwargs["smooth"] = args.smooth
    text = None
    if args.calibration_text is not None:
        text = _read_text(args.calibration_text)
    if (kwargs or text is not None) and not method.is_quantized:
        raise ConfigError("--float-dtype/--quantize-embeddings/--max-ppl-increase/--max-kl/--smooth/--calibration-text "
                          f"apply to int8 methods and fp8 methods, not {method.value}")
    res = quantize(args.source, method, out=args.out, max_shard_size=args.max_shard_size, ignore=args.ignore,
                   overwrite=args.overwrite, fp16_overflow=args.fp16_overflow, quiet=args.quiet,
                   calibration_text=text, device=args.device or "cpu", **kwargs)
    data = res.to_dict()
    human = res.summary()
    if not args.measure:
        emit(args.format, human, data)
        return 0
    from llmpack.commands.measure import finish
    from llmpack.measure.api import measure_after_quantize

    if args.format != "json":
        emit(args.format, human, data)
    report = measure_after_quantize(args.source, res.out_dir, args)
    if args.format == "json":
        # One JSON document: the quantize result with the report inside; gates still decide the exit code.
        data["report"] = report.to_dict()
        emit("json", "", data)
        args = argparse.Namespace(**{**vars(args), "format": "none"})
    return finish(report, args)


def _read_text(path: str) -> str:
    from llmpack.errors import BadInputError

    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise BadInputError(f"--calibration-text {path}: cannot read it as UTF-8 text ({e}): pass a text file") from None
    if not text.strip():
        raise BadInputError(f"--calibration-text {path} is empty: pass a file with some text")
    return text
