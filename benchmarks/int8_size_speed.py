"""INT8 size and speed (issue 4, items 4-5): file-size ratios vs FP32 and prefill speedup vs FP32 / BF16.

Run:  .venv/bin/python benchmarks/int8_size_speed.py [--threads 2] [--skip-smollm2] [--skip-bf16] [--json out.json]

* Size: a GPT-2-small-size random model (``GPT2Config()`` defaults, 124M params) and SmolLM2-135M,
  quantized to int8 with float embeddings (default) and with ``quantize_embeddings=True``; ratio =
  output directory weight bytes / FP32 weight bytes (tied embeddings stored once in both).
* Speed: ``llmpack.measure`` (interleaved A/B timing) of the GPT-2-size model, batch 1 x 128 tokens,
  prefill, FP32 vs llmpack int8 and FP32 vs BF16; the int8 kernel in use is printed
  (``LLMPACK_INT8_KERNEL`` overrides it).
* Accuracy: SmolLM2 perplexity on the default evaluation text, FP32 vs int8 (defaults).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch


def _weight_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.glob("*.safetensors"))


def _sizes(src: Path, tmp: Path, tag: str) -> dict[str, Any]:
    import llmpack

    out: dict[str, Any] = {"fp32_bytes": _weight_bytes(src)}
    for name, kw in (("int8", {}), ("int8_emb", {"quantize_embeddings": True})):
        d = tmp / f"{tag}-{name}"
        llmpack.quantize(src, "int8", out=d, quiet=True, **kw)
        out[f"{name}_bytes"] = _weight_bytes(d)
        out[f"{name}_ratio"] = round(out[f"{name}_bytes"] / out["fp32_bytes"], 4)
        out[f"{name}_dir"] = str(d)
    return out


def _speed(fp32: Path, cand: Path, runs: int | None) -> dict[str, Any]:
    import llmpack
    from llmpack.testing import byte_tokenizer

    rep = llmpack.measure(fp32, cand, tokenizer=byte_tokenizer(), batch_sizes=(1,), seq_len=128, new_tokens=0,
                          runs=runs, quiet=True, text=None)
    entry = next(e for e in rep.latency if e.phase == "prefill" and e.batch_size == 1)
    return {"speedup": round(float(entry.speedup), 3), "baseline": entry.baseline.to_dict() if hasattr(entry.baseline, "to_dict") else str(entry.baseline),
            "candidate": entry.candidate.to_dict() if hasattr(entry.candidate, "to_dict") else str(entry.candidate)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=None, help="timed run pairs (default: measure's time budget)")
    ap.add_argument("--skip-smollm2", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-bf16", action="store_true", help="no BF16 timing (minutes per run on CPUs without BF16 units)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import llmpack
    from llmpack.runtime.kernels import cpu_kernel as cpu_int8_kernel

    results: dict[str, Any] = {"threads": args.threads, "kernel": cpu_int8_kernel(), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="llmpack-int8-bench-") as t:
        tmp = Path(t)
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        gpt2 = tmp / "gpt2-small-fp32"
        GPT2LMHeadModel(GPT2Config()).eval().save_pretrained(gpt2)
        results["gpt2_small"] = _sizes(gpt2, tmp, "gpt2")
        print(f"gpt2-small size ratio: int8 {results['gpt2_small']['int8_ratio']}, "
              f"int8+embeddings {results['gpt2_small']['int8_emb_ratio']}", flush=True)
        if not args.skip_speed:
            results["speed_int8_vs_fp32"] = _speed(gpt2, Path(results["gpt2_small"]["int8_dir"]), args.runs)
            s8 = results["speed_int8_vs_fp32"]["speedup"]
            sb = float("nan")
            if not args.skip_bf16:
                bf16 = tmp / "gpt2-bf16"
                llmpack.quantize(gpt2, "bf16", out=bf16, quiet=True)
                results["speed_bf16_vs_fp32"] = _speed(gpt2, bf16, args.runs)
                sb = results["speed_bf16_vs_fp32"]["speedup"]
            print(f"gpt2-small 1x128 prefill, {args.threads} threads, kernel {results['kernel']}: "
                  f"int8 {s8:.2f}x FP32, BF16 {sb:.2f}x FP32", flush=True)
            if s8 <= sb:
                print("note: on this CPU int8 does not beat BF16; prefer --method bf16 here", flush=True)
        if not args.skip_smollm2:
            from llmpack.testing import smollm2_dir

            src = smollm2_dir()
            results["smollm2"] = _sizes(src, tmp, "smollm2")
            print(f"smollm2 size ratio: int8 {results['smollm2']['int8_ratio']}, "
                  f"int8+embeddings {results['smollm2']['int8_emb_ratio']}", flush=True)
            rep = llmpack.measure(src, Path(results["smollm2"]["int8_dir"]), batch_sizes=(1,), quick=True, quiet=True)
            results["smollm2_ppl"] = {"fp32": rep.accuracy.ppl_baseline, "int8": rep.accuracy.ppl_candidate,
                                      "delta_pct": rep.accuracy.ppl_delta_pct, "top1": getattr(rep.accuracy, "top1", None)}
            print(f"smollm2 perplexity: fp32 {rep.accuracy.ppl_baseline:.3f} -> int8 {rep.accuracy.ppl_candidate:.3f} "
                  f"({rep.accuracy.ppl_delta_pct:+.1f}%)", flush=True)
        for v in results.values():
            if isinstance(v, dict):
                v.pop("int8_dir", None)
                v.pop("int8_emb_dir", None)
    text = json.dumps(results, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
