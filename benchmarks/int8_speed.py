"""INT8 prefill speed on CPU: FP32 vs BF16 vs llmpack int8 (eager and ``compile=True``) vs torch.ao.

One process, one set of inputs; the candidates are timed round-robin (A B C ... A B C ...), so machine
drift (other processes on a shared machine) hits all of them alike and cancels in the ratios. Prefill
latency is one forward over ``batch x seq`` tokens with ``use_cache=False`` and ``logits_to_keep=1``
(only the last position's logits, as ``generate()`` and ``llmpack.measure`` do).

Candidates:

* ``fp32``: the float model, eager (the baseline of every ratio);
* ``bf16``: the float model cast to bfloat16, eager;
* ``llmpack``: ``llmpack.quantize(model, method="int8").model`` (W8A8 ``Int8Linear``; lm_head, embeddings,
  norms in float), eager; the kernel is ``llmpack.runtime.modules.cpu_int8_kernel()``;
* ``llmpack+compile``: the same through ``llmpack.runtime.modules.compile_int8`` (``torch.compile``);
  compile time is reported separately and excluded from the latency;
* ``torch.ao``: ``torch.ao.quantization.quantize_dynamic`` (fbgemm, qint8 weights per tensor,
  ``reduce_range`` activations per tensor; GPT-2 ``Conv1D`` converted to ``nn.Linear`` first).

Models: ``gpt2`` (``GPT2Config()`` defaults, random init: 768 wide, 12 layers) and ``smollm2``
(``llmpack.testing.smollm2_dir()``). Columns: p50 latency in ms, speedup over fp32, KL(fp32 || cand)
and top-1 agreement of the last-position distribution (on random GPT-2 these are near-uniform, so
top-1 says little there).

Usage:
    python benchmarks/int8_speed.py [--models gpt2,smollm2] [--batches 1,8] [--seq 128] [--threads 2]
                                    [--runs 7] [--only fp32,llmpack,...] [--json out.json]

Example:
    $ python benchmarks/int8_speed.py --models gpt2 --batches 1 --runs 5
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import traceback
import warnings
from typing import Any, Callable

import torch
import torch.nn.functional as F

CANDIDATES = ("fp32", "bf16", "llmpack", "llmpack+compile", "torch.ao")


def _conv1d_to_linear(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every transformers ``Conv1D`` replaced by an equivalent ``nn.Linear``."""
    from llmpack.runtime.modules import is_conv1d

    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        if is_conv1d(mod):
            lin = torch.nn.Linear(mod.weight.shape[0], mod.weight.shape[1])
            lin.weight = torch.nn.Parameter(mod.weight.detach().t().contiguous())
            lin.bias = torch.nn.Parameter(mod.bias.detach().clone())
            parent, child = name.rsplit(".", 1) if "." in name else ("", name)
            setattr(m.get_submodule(parent) if parent else m, child, lin)
    return m


def _load_model(kind: str) -> torch.nn.Module:
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        return GPT2LMHeadModel(GPT2Config()).eval()
    if kind == "smollm2":
        from transformers import AutoModelForCausalLM

        from llmpack.testing import smollm2_dir

        return AutoModelForCausalLM.from_pretrained(smollm2_dir(), dtype=torch.float32).eval()
    raise SystemExit(f"unknown model {kind!r}: use gpt2 or smollm2")


def _build(name: str, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Candidate ``name`` as a function input ids -> last-position logits (float32)."""
    import llmpack

    def wrap(m: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda ids: m(input_ids=ids, use_cache=False, logits_to_keep=1).logits[:, -1].float()

    if name == "fp32":
        return wrap(model)
    if name == "bf16":
        return wrap(copy.deepcopy(model).to(torch.bfloat16))
    if name == "llmpack":
        return wrap(llmpack.quantize(model, method="int8").model.eval())
    if name == "llmpack+compile":
        from llmpack.runtime.modules import compile_int8

        return wrap(compile_int8(llmpack.quantize(model, method="int8").model.eval()))
    if name == "torch.ao":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = torch.ao.quantization.quantize_dynamic(_conv1d_to_linear(model), {torch.nn.Linear}, dtype=torch.qint8)
        return wrap(q)
    raise SystemExit(f"unknown candidate {name!r}: choose from {', '.join(CANDIDATES)}")


def run_model(kind: str, batches: list[int], seq: int, runs: int, only: list[str]) -> list[dict[str, Any]]:
    """Time every candidate on ``kind``; returns one row per (batch, candidate)."""
    model = _load_model(kind)
    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(1234)
    inputs = {b: torch.randint(0, vocab, (b, seq), generator=gen) for b in batches}
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    errors: dict[str, str] = {}
    first_call: dict[str, dict[int, float]] = {}
    refs: dict[int, torch.Tensor] = {}
    outs: dict[str, dict[int, torch.Tensor]] = {}
    with torch.inference_mode():
        for name in only:
            try:
                fns[name] = _build(name, model)
                first_call[name] = {}
                outs[name] = {}
                for b in batches:  # warm-up (and compilation) per shape, timed once
                    t = time.perf_counter()
                    outs[name][b] = fns[name](inputs[b])
                    first_call[name][b] = time.perf_counter() - t
                    fns[name](inputs[b])
            except Exception as e:  # noqa: BLE001 - a failing candidate is reported, not dropped
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
                traceback.print_exc(file=sys.stderr)
                fns.pop(name, None)
        if "fp32" in outs:
            refs = outs["fp32"]
        times: dict[tuple[str, int], list[float]] = {(n, b): [] for n in fns for b in batches}
        for _ in range(runs):
            for b in batches:
                for name, fn in fns.items():
                    t = time.perf_counter()
                    fn(inputs[b])
                    times[(name, b)].append(time.perf_counter() - t)
    rows: list[dict[str, Any]] = []
    for b in batches:
        base = statistics.median(times[("fp32", b)]) if ("fp32", b) in times else None
        for name in only:
            row: dict[str, Any] = {"model": kind, "batch": b, "seq": seq, "candidate": name}
            if name in errors:
                row["error"] = errors[name]
            else:
                p50 = statistics.median(times[(name, b)])
                row.update(p50_ms=p50 * 1e3, min_ms=min(times[(name, b)]) * 1e3,
                           speedup_vs_fp32=(base / p50) if base else None,
                           first_call_s=first_call[name][b])
                if b in refs:
                    r = F.log_softmax(refs[b], -1)
                    c = F.log_softmax(outs[name][b], -1)
                    row["kl"] = float(F.kl_div(c, r, log_target=True, reduction="batchmean"))
                    row["top1"] = float((r.argmax(-1) == c.argmax(-1)).float().mean())
            rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | batch x seq | candidate | p50 ms | speedup vs fp32 | KL vs fp32 | top-1 | first call s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']}x{r['seq']} | {r['candidate']} | failed: {r['error']} ||||")
            continue
        sp = f"{r['speedup_vs_fp32']:.2f}x" if r.get("speedup_vs_fp32") else "-"
        kl = f"{r['kl']:.4f}" if "kl" in r else "-"
        t1 = f"{r['top1']:.2f}" if "top1" in r else "-"
        lines.append(f"| {r['model']} | {r['batch']}x{r['seq']} | {r['candidate']} | {r['p50_ms']:.1f} | {sp} | "
                     f"{kl} | {t1} | {r['first_call_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table (and JSON with ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2,smollm2")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", default=",".join(CANDIDATES))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from llmpack.runtime.modules import cpu_int8_kernel

    env = {"torch": torch.__version__, "threads": args.threads, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "int8_kernel": cpu_int8_kernel(), "loadavg_start": os.getloadavg()[0], "runs": args.runs}
    rows: list[dict[str, Any]] = []
    for kind in args.models.split(","):
        rows += run_model(kind, [int(b) for b in args.batches.split(",")], args.seq, args.runs, args.only.split(","))
        print(_table([r for r in rows if r["model"] == kind]), flush=True)
    env["loadavg_end"] = os.getloadavg()[0]
    print(json.dumps(env))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"env": env, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
