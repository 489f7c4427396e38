"""The GPU check: llmpack's methods against bf16 on random-init checkpoints of real shapes, through the public API.

One command (``benchmarks/gpu_check.sh``, < 8 minutes on one H200; nothing is downloaded, no weights travel):

1. writes a random-init bf16 checkpoint of Llama-3.1-8B's shape (prefill, memory) and one of Llama-3.2-1B's
   (decode, agreement) on the machine itself;
2. for each method (default ``fp8,int8,int8-weight-only,fp16``), against the bf16 source: quantize time
   (``llmpack.quantize(..., device=)``), load time and ``max_memory_allocated`` (``llmpack.load(..., device=)``),
   prefill latency at 1x2048 and 8x512 (timed interleaved with bf16; achieved TFLOP/s and the fraction of the
   H200's bf16 790 TFLOP/s), decode ms/token at batch 1 and 16 with a static KV cache and CUDA graphs for bf16
   and the candidate alike (achieved GB/s of weights + KV cache read per step, fraction of 4.3 TB/s), and the
   agreement of the device kernels with the CPU reference semantics on the same weights and inputs (next-token
   top-1, KL, per-layer SQNR);
3. writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out-dir`` and checks the issue's H200 targets.

Every candidate and step is guarded: a failure is recorded with its error and the check goes on. A time budget
(``--budget-s``) skips what would not fit. ``--device cpu --quick`` runs the same code on a tiny shape (``make
test`` does, so the script cannot rot).

    python benchmarks/gpu_check.py --out-dir results/          # on a CUDA machine
    python benchmarks/gpu_check.py --device cpu --quick --out-dir /tmp/x
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_bench as gb  # noqa: E402

DEFAULT_METHODS = "fp8,int8,int8-weight-only,fp16,int8+qemb"
"""``+qemb``: with ``quantize_embeddings=True`` (int8 embedding table and head, weight-only); last, so the time budget
drops it first."""
TARGETS = {  # issue 19, point 4 (H200)
    "fp8 prefill 8x512 speedup >= 1.4": ("fp8", "prefill_8x512_speedup", 1.4, ">="),
    "int8 prefill 8x512 speedup >= 1.3": ("int8", "prefill_8x512_speedup", 1.3, ">="),
    "fp8 decode b1 tokens/s >= 1.4x bf16 (decode model)": ("fp8", "decode_b1_speedup", 1.4, ">="),
    "int8 decode b1 tokens/s >= 1.4x bf16 (decode model)": ("int8", "decode_b1_speedup", 1.4, ">="),
    "fp8 decode b1 tokens/s >= 1.4x bf16 (prefill model)": ("fp8", "decode_prefill_model_b1_speedup", 1.4, ">="),
    "int8 decode b1 tokens/s >= 1.4x bf16 (prefill model)": ("int8", "decode_prefill_model_b1_speedup", 1.4, ">="),
    "fp8 weights in memory <= 0.52x bf16": ("fp8", "memory_ratio", 0.52, "<="),
    "int8 weights in memory <= 0.52x bf16": ("int8", "memory_ratio", 0.52, "<="),
    "int8+qemb weights in memory <= 0.52x bf16": ("int8+qemb", "memory_ratio", 0.52, "<="),
}


class Check:
    """The run's state: settings, the time budget, results and errors."""

    def __init__(self, args: argparse.Namespace, out: Path | None = None) -> None:
        self.args = args
        self.device = args.device
        self.out = out
        self.t0 = time.perf_counter()
        self.results: dict[str, Any] = {"methods": {}, "errors": [], "skipped": []}

    def save(self) -> None:
        """Write what is known so far (a run killed by the outer timeout still leaves its partial results)."""
        if self.out is not None:
            self.results["seconds"] = round(self.elapsed(), 1)
            write(self.results, self.out)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def guarded(self, what: str, fn: Callable[[], Any], *, need_s: float = 0.0) -> Any:
        """``fn()``, or ``None`` with the error (or the time budget) recorded."""
        if self.elapsed() + need_s > self.args.budget_s:
            self.results["skipped"].append(f"{what}: time budget ({self.args.budget_s:.0f} s) reached")
            gb.log(f"skip {what}: time budget")
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one failing candidate must not abort the whole check
            msg = f"{what}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            self.results["errors"].append(msg)
            gb.log(f"ERROR {msg}")
            if os.environ.get("LLMPACK_DEBUG"):
                traceback.print_exc()
            gb.free(self.device)
            return None


def _environment(device: str) -> dict[str, Any]:
    import transformers

    import llmpack

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "transformers": transformers.__version__,
                           "llmpack": getattr(llmpack, "__version__", "?"), "device": device}
    try:
        import compressed_tensors

        env["compressed_tensors"] = compressed_tensors.__version__
    except ImportError:
        env["compressed_tensors"] = None  # llmpack writes the same config without it
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["capability"] = list(torch.cuda.get_device_capability())
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def _load(chk: Check, d: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    import llmpack

    gb.free(chk.device)
    with gb.peak_memory(chk.device) as mem:
        t = time.perf_counter()
        model = llmpack.load(d, device=chk.device)
        gb.sync(chk.device)
        secs = time.perf_counter() - t
    return model, {"load_s": round(secs, 2), "max_memory_allocated": mem["max_memory_allocated"],
                   "weight_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def _quantize(chk: Check, src: Path, method: str, out: Path) -> dict[str, Any]:
    import llmpack

    name, _, option = method.partition("+")
    if option not in ("", "qemb"):
        raise ValueError(f"unknown method option {option!r} in {method!r} (known: +qemb)")
    t = time.perf_counter()
    res = llmpack.quantize(src, name, out=out, device=chk.device, calibrate=False, quiet=True, overwrite=True,
                           **({"quantize_embeddings": True} if option == "qemb" else {}))
    return {"quantize_s": round(time.perf_counter() - t, 2), "disk_bytes": int(res.output_bytes)}


def _prefill(chk: Check, base: torch.nn.Module, cand: torch.nn.Module, cfg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    timer = gb.Timer(chk.device)
    limit = gb.H200["bf16_tflops"]
    for batch, tokens in chk.args.prefill_shapes:
        key = f"{batch}x{tokens}"
        ms = gb.interleaved(timer, {"bf16": gb.prefill_fn(base, batch, tokens, chk.device, cfg["vocab_size"]),
                                    "cand": gb.prefill_fn(cand, batch, tokens, chk.device, cfg["vocab_size"])},
                            warmup=chk.args.warmup, runs=chk.args.runs)
        flops = gb.prefill_flops(cfg, batch, tokens)
        out[key] = {"bf16_ms": round(ms["bf16"], 3), "ms": round(ms["cand"], 3),
                    "speedup": round(ms["bf16"] / ms["cand"], 3),
                    "tflops": round(flops / ms["cand"] / 1e9, 1), "bf16_tflops": round(flops / ms["bf16"] / 1e9, 1),
                    "fraction_of_bf16_peak": round(flops / ms["cand"] / 1e9 / limit, 3)}
    return out


def _decode(chk: Check, model: torch.nn.Module, cfg: dict[str, Any]) -> dict[str, Any]:
    """Decode ms/token per batch size, and the GB/s of weights + KV cache read per step."""
    out: dict[str, Any] = {}
    weight_bytes = _decode_weight_bytes(model)
    hd = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    for batch in chk.args.decode_batches:
        r = gb.decode(model, batch, chk.args.prompt, chk.args.steps, chk.device, cfg["vocab_size"],
                      graphs=not chk.args.no_graphs)
        ctx = chk.args.prompt + chk.args.steps // 2
        kv = 2 * cfg["num_hidden_layers"] * batch * ctx * cfg["num_key_value_heads"] * hd * 2
        gbps = (weight_bytes + kv) / (r["ms_per_token"] / 1000) / 1e9
        out[f"b{batch}"] = dict(r, ms_per_token=round(r["ms_per_token"], 4), gbps=round(gbps, 1),
                                fraction_of_hbm=round(gbps / (gb.H200["hbm_tbps"] * 1000), 3))
    return out


def _decode_speedups(entry: dict[str, Any], key: str, dec: dict[str, Any] | None,
                     base: dict[str, Any] | None) -> None:
    """``entry[key] = dec`` and ``entry[f"{key}_b{N}_speedup"]`` against bf16's like timing (same mode only)."""
    if dec is None:
        return
    entry[key] = dec
    for batch, v in dec.items():
        b = (base or {}).get(batch)
        if b and b["mode"] == v["mode"]:  # a ratio only between like timings
            entry[f"{key}_{batch}_speedup"] = round(b["ms_per_token"] / v["ms_per_token"], 3)


def _decode_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes read per decode step: every parameter but the input embedding table (gathered, not read whole)."""
    emb = model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not emb)


def write(res: dict[str, Any], out: Path) -> str:
    """``gpu_check.json`` and ``gpu_check.md`` into ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2, sort_keys=True, default=str) + "\n")
    md = markdown(res)
    (out / "gpu_check.md").write_text(md)
    return md


def _decode_section(chk: Check, work: Path, methods: list[str]) -> None:
    """The decode / agreement model (first: the correctness check, and cheaper): bf16, then every method."""
    res, args = chk.results, chk.args
    small = work / "decode-bf16"
    if chk.guarded("write decode checkpoint", lambda: gb.make_checkpoint(args.decode_shape, small, chk.device),
                   need_s=10) is None:
        return
    cfg = json.loads((small / "config.json").read_text())
    got = chk.guarded("load bf16 (decode model)", lambda: _load(chk, small))
    if got is None:
        return
    base, _ = got
    bdec = chk.guarded("bf16: decode", lambda: _decode(chk, base, cfg), need_s=10)
    res.setdefault("bf16", {})["decode"] = bdec
    res["bf16"]["agreement"] = chk.guarded("bf16: agreement", lambda: gb.agreement(
        small, base, chk.device, cfg["vocab_size"]), need_s=10)
    del base
    gb.free(chk.device)
    for method in methods:
        entry = res["methods"].setdefault(method, {})
        q = work / f"decode-{method}"
        if chk.guarded(f"{method}: quantize decode model", lambda: _quantize(chk, small, method, q),
                       need_s=10) is None:
            continue
        got = chk.guarded(f"{method}: load decode model", lambda: _load(chk, q))
        if got is None:
            continue
        cand, _ = got
        dec = chk.guarded(f"{method}: decode", lambda: _decode(chk, cand, cfg), need_s=10)
        _decode_speedups(entry, "decode", dec, bdec)
        entry["agreement"] = chk.guarded(f"{method}: agreement", lambda: gb.agreement(
            q, cand, chk.device, cfg["vocab_size"]), need_s=10)
        del cand
        shutil.rmtree(q, ignore_errors=True)
        gb.free(chk.device)
        chk.save()
    shutil.rmtree(small, ignore_errors=True)


def _prefill_section(chk: Check, work: Path, methods: list[str]) -> None:
    """The prefill / memory model: every method against bf16 (prefill, memory, decode), one candidate on disk at a
    time."""
    res, args = chk.results, chk.args
    big = work / "prefill-bf16"
    t = time.perf_counter()
    if chk.guarded("write prefill checkpoint", lambda: gb.make_checkpoint(
            args.prefill_shape, big, chk.device, layers=args.prefill_layers), need_s=30) is None:
        return
    res["prefill_checkpoint"] = {"shape": args.prefill_shape, "write_s": round(time.perf_counter() - t, 1),
                                 "layers": args.prefill_layers or gb.SHAPES[args.prefill_shape]["num_hidden_layers"]}
    cfg = json.loads((big / "config.json").read_text())
    loaded = chk.guarded("load bf16 (prefill model)", lambda: _load(chk, big))
    if loaded is None:
        shutil.rmtree(big, ignore_errors=True)
        return
    base, base_stats = loaded
    res.setdefault("bf16", {})["prefill_model"] = base_stats
    # decode on this model too: its weights outweigh transformers' float kernels more than the decode model's
    bdec_big = chk.guarded("bf16: decode (prefill model)", lambda: _decode(chk, base, cfg), need_s=10)
    res["bf16"]["decode_prefill_model"] = bdec_big
    for method in methods:
        entry = res["methods"].setdefault(method, {})
        q = work / f"prefill-{method}"
        stats = chk.guarded(f"{method}: quantize prefill model", lambda: _quantize(chk, big, method, q), need_s=20)
        if stats is None:
            continue
        entry.update(stats)
        got = chk.guarded(f"{method}: load prefill model", lambda: _load(chk, q))
        if got is not None:
            cand, cstats = got
            entry["prefill_model"] = cstats
            entry["memory_ratio"] = round(cstats["weight_bytes"] / base_stats["weight_bytes"], 4)
            pre = chk.guarded(f"{method}: prefill", lambda: _prefill(chk, base, cand, cfg), need_s=10)
            if pre is not None:
                entry["prefill"] = pre
                for key, v in pre.items():
                    entry[f"prefill_{key}_speedup"] = v["speedup"]
            dec = chk.guarded(f"{method}: decode (prefill model)", lambda: _decode(chk, cand, cfg), need_s=10)
            _decode_speedups(entry, "decode_prefill_model", dec, bdec_big)
            del cand
        shutil.rmtree(q, ignore_errors=True)
        gb.free(chk.device)
        chk.save()
    del base
    gb.free(chk.device)
    shutil.rmtree(big, ignore_errors=True)


def run(args: argparse.Namespace, out: Path | None = None) -> dict[str, Any]:
    """The whole check: the decode / agreement model first, then the prefill / memory model (the time budget drops
    what comes last)."""
    chk = Check(args, out)
    res = chk.results
    res["environment"] = _environment(chk.device)
    res["settings"] = {k: v for k, v in vars(args).items() if k != "out_dir"}
    gb.log(f"environment {json.dumps(res['environment'])}")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="gpu-check-"))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        _decode_section(chk, work, methods)
        _prefill_section(chk, work, methods)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    res["targets"] = _targets(res) if chk.device == "cuda" else {}
    from llmpack.runtime.kernels.cuda import fusion_status

    res["fusion"] = fusion_status()  # which 8-bit steps ran torch.compile-fused (LLMPACK_CUDA_FUSE)
    res["seconds"] = round(chk.elapsed(), 1)
    return res


def _targets(res: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for label, (method, key, bound, op) in TARGETS.items():
        v = res["methods"].get(method, {}).get(key)
        ok = None if v is None else (v >= bound if op == ">=" else v <= bound)
        out[label] = {"value": v, "met": ok}
    return out


def markdown(res: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    env = res.get("environment", {})
    lines = [f"# llmpack GPU check ({env.get('gpu', env.get('device'))}, torch {env.get('torch')}, "
             f"transformers {env.get('transformers')}, {res.get('seconds')} s)", ""]
    st = res.get("settings", {})
    pkeys = [f"{b}x{t}" for b, t in st.get("prefill_shapes", [(1, 2048), (8, 512)])]
    dkeys = [f"b{b}" for b in st.get("decode_batches", [1, 16])]
    lines += ["| method | quantize s | load s | weights vs bf16 | " + " | ".join(f"prefill {k}" for k in pkeys)
              + " | " + " | ".join(f"decode {k} ms/tok" for k in dkeys) + " | top-1 vs CPU ref | KL | worst layer SQNR dB |",
              "|---" * (7 + len(pkeys) + len(dkeys)) + "|"]
    rows = [("bf16", res.get("bf16", {}))] + list(res.get("methods", {}).items())
    for name, e in rows:
        pm = e.get("prefill_model", {})
        pre = e.get("prefill", {})
        dec = e.get("decode") or {}
        ag = e.get("agreement") or {}

        def cell(k: str) -> str:
            v = pre.get(k)
            return f"{v['ms']:.2f} ms ({v['speedup']:.2f}x, {v['tflops']} TFLOP/s)" if v else "-"

        def dcell(k: str) -> str:
            v = dec.get(k)
            return f"{v['ms_per_token']:.3f} ({v['mode']}, {v['gbps']} GB/s)" if v else "-"

        lines.append(f"| {name} | {e.get('quantize_s', '-')} | {pm.get('load_s', '-')} | {e.get('memory_ratio', '-')} | "
                     + " | ".join(cell(k) for k in pkeys) + " | " + " | ".join(dcell(k) for k in dkeys)
                     + f" | {ag.get('top1', '-')} | {ag.get('kl', '-')} | {ag.get('worst_layer_sqnr_db', '-')} |")
    big = [(name, (e.get("decode_prefill_model") or {})) for name, e in rows]
    if any(d for _, d in big):
        shape = st.get("prefill_shape", "prefill model")
        lines += ["", f"Decode on the prefill model ({shape}), ms/token:", "",
                  "| method | " + " | ".join(dkeys) + " |", "|---" * (1 + len(dkeys)) + "|"]
        for name, d in big:
            lines.append(f"| {name} | " + " | ".join(
                f"{d[k]['ms_per_token']:.3f} ({d[k]['mode']}, {d[k]['gbps']} GB/s)" if d.get(k) else "-"
                for k in dkeys) + " |")
    if res.get("fusion"):
        lines += ["", "Fused 8-bit steps (LLMPACK_CUDA_FUSE): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(res["fusion"].items()))]
    if res.get("targets"):
        lines += ["", "| target (H200) | value | met |", "|---|---|---|"]
        lines += [f"| {k} | {v['value']} | {v['met']} |" for k, v in res["targets"].items()]
    for title, key in (("Errors", "errors"), ("Skipped", "skipped")):
        if res.get(key):
            lines += ["", f"## {title}", ""] + [f"- {x}" for x in res[key]]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, few runs (the CPU smoke test)")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default {DEFAULT_METHODS})")
    ap.add_argument("--out-dir", default=os.environ.get("OUT") or None, help="where gpu_check.json/.md go")
    ap.add_argument("--work-dir", default=None, help="where checkpoints are written (default: a temp dir, removed)")
    ap.add_argument("--prefill-layers", type=int, default=None, help="decoder layers of the prefill model")
    ap.add_argument("--budget-s", type=float, default=400.0, help="skip steps that would end past this (s)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64, help="decode steps timed")
    ap.add_argument("--prompt", type=int, default=128, help="prompt tokens before decoding")
    ap.add_argument("--no-graphs", action="store_true", help="decode eagerly (no CUDA graphs)")
    args = ap.parse_args(argv)
    args.prefill_shapes = [(1, 2048), (8, 512)]
    args.decode_batches = [1, 16]
    args.prefill_shape, args.decode_shape = "llama-3.1-8b", "llama-3.2-1b"
    if args.quick:
        args.prefill_shape = args.decode_shape = "tiny"
        args.prefill_shapes = [(1, 64), (2, 32)]
        args.decode_batches = [1, 2]
        args.runs, args.warmup, args.steps, args.prompt = min(args.runs, 2), min(args.warmup, 1), 6, 16
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the check; 0 when every step ran (targets are reported, not gated), 1 when a step failed, 2 on usage."""
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but CUDA is not available here: use --device cpu --quick", file=sys.stderr)
        return 2
    os.environ.setdefault("LLMPACK_PROGRESS", "0")
    if args.device == "cuda":
        os.environ.setdefault("LLMPACK_INT8_KERNEL", "dequant")  # CPU side: the reference; no native build needed
    out = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="gpu-check-out-"))
    res = run(args, out)
    md = write(res, out)
    print(md)
    gb.log(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'} in {res['seconds']} s")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
