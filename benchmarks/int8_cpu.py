"""INT8 on CPU: llmpack against the libraries a user would pick instead, in one interleaved run.

Candidates (same inputs, same threads, timed round-robin so machine drift cancels in the ratios):

* ``fp32``            the float model, eager (the baseline of every ratio);
* ``bf16``            the float model cast to bfloat16, eager;
* ``llmpack``         ``llmpack.quantize(model, method="int8", tokenizer=tok)`` (W8A8, ``Int8Linear``; with the
                      tokenizer of a real model, the defaults calibrate and smooth), eager;
* ``llmpack+compile`` the same under ``torch.compile``;
* ``llmpack+avx2``    ``llmpack`` on llmpack's native AVX2 kernel (``LLMPACK_INT8_KERNEL=avx2``: what AVX2-only CPUs
                      run by default; a VNNI machine's default is ``int_mm``), eager;
* ``llmpack+7bit``    ``llmpack`` on the opt-in, less exact 7-bit centred tokens (``LLMPACK_INT8_KERNEL=avx2-7bit``,
                      see ``docs/int8-format.md``), eager;
* ``llmpack+qemb``    ``llmpack`` with ``quantize_embeddings=True``: embeddings int8 and, for tied models, the
                      output head reads that int8 table (torch.ao quantizes the head too), eager;
* ``torch.ao``        ``torch.ao.quantization.quantize_dynamic`` (GPT-2 ``Conv1D`` converted to ``nn.Linear`` first);
* ``quanto``          optimum-quanto W8A8 (``weights=qint8, activations=qint8``, calibrated on the inputs);
* ``torchao``         torchao ``Int8DynamicActivationInt8WeightConfig`` (``Conv1D`` converted first);
* ``onnxruntime``     ``torch.onnx.export`` + ``onnxruntime.quantization.quantize_dynamic`` (QInt8).

Models: a GPT-2-small-size random model (768 wide, 12 layers) and SmolLM2-135M; batch 1 and 8 of 128
tokens. Columns: median prefill latency (last position's logits, as in ``generate``), speedup over fp32,
the paired latency ratio to torch.ao (median over rounds of each round's ratio; < 1 is faster), mean
KL(fp32 ‖ candidate) and top-1 agreement of
next-token distributions, size of the weights, and whether the quantized model saves to safetensors
and reloads with the same logits. A candidate that fails to install, quantize, run or save is listed
with its error, never dropped.

Usage:
    python benchmarks/int8_cpu.py [--models gpt2,smollm2] [--batches 1,8] [--seq 128] [--threads 2]
                                  [--runs 10] [--only fp32,llmpack,...] [--json out.json] [--md out.md]

Example:
    $ python benchmarks/int8_cpu.py --models gpt2 --batches 1 --runs 5
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

SLOW_S = 5.0  # a candidate whose prefill takes longer is warmed up and timed once (reported as n=1)
CANDIDATES = ("fp32", "bf16", "llmpack", "llmpack+compile", "llmpack+avx2", "llmpack+7bit", "llmpack+qemb", "torch.ao",
              "quanto", "torchao", "onnxruntime")


@dataclasses.dataclass
class Cand:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None  # input ids -> logits of every position (float32)
    prefill: Callable[[torch.Tensor], torch.Tensor] | None = None  # input ids -> last position's logits (timed)
    size: int | None = None
    saves: str = ""
    error: str = ""
    setup_s: float = 0.0
    times: dict[int, list[float]] = dataclasses.field(default_factory=dict)
    kl: dict[int, float] = dataclasses.field(default_factory=dict)
    top1: dict[int, float] = dataclasses.field(default_factory=dict)


def _err(e: BaseException) -> str:
    msg = f"{type(e).__name__}: {e}".replace("\n", " ")
    return msg[:300]


def _param_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


def _logits_fn(model: torch.nn.Module, keep: int = 0, kernel: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``input ids -> logits``; ``keep=1``: the last position only (a prefill step of ``generate``); ``kernel``:
    llmpack's int8 kernel forced for the call."""
    import contextlib

    def fn(x: torch.Tensor) -> torch.Tensor:
        ctx = contextlib.nullcontext()
        if kernel is not None:
            from llmpack.runtime import kernels

            ctx = kernels.use(kernel)
        with torch.inference_mode(), ctx:
            out = model(input_ids=x, use_cache=False, logits_to_keep=keep)
        return (out.logits if hasattr(out, "logits") else out[0]).float()
    fn.model = model  # type: ignore[attr-defined]
    fn.kernel = kernel  # type: ignore[attr-defined]
    return fn


def conv1d_to_linear(model: torch.nn.Module) -> torch.nn.Module:
    """Replace transformers' ``Conv1D`` (weight ``[in, out]``) by equivalent ``nn.Linear`` layers, in place."""
    for name, mod in list(model.named_modules()):
        for cname, child in list(mod.named_children()):
            if type(child).__name__ == "Conv1D":
                w = child.weight.detach()
                lin = torch.nn.Linear(w.shape[0], w.shape[1], bias=child.bias is not None, dtype=w.dtype)
                lin.weight = torch.nn.Parameter(w.t().contiguous(), requires_grad=False)
                if child.bias is not None:
                    lin.bias = torch.nn.Parameter(child.bias.detach().clone(), requires_grad=False)
                setattr(mod, cname, lin)
    return model


def _safetensors_roundtrip(model: torch.nn.Module, rebuild: Callable[[dict], torch.nn.Module] | None,
                           x: torch.Tensor, ref: torch.Tensor) -> str:
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.safetensors")
        try:
            raw = model.state_dict()
            odd = sorted({type(v).__name__ for v in raw.values() if not isinstance(v, torch.Tensor)})
            if odd:
                return f"no: state_dict holds non-tensor values ({', '.join(odd)})"
            sd, seen = {}, set()
            for k, v in raw.items():  # tied tensors (embeddings / head) once, like save_pretrained
                key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if type(v) is torch.Tensor else None
                if key is not None and key in seen:
                    continue
                seen.add(key)
                sd[k] = v.contiguous()
            save_file(sd, p)
        except Exception as e:  # noqa: BLE001 - the failure is the measurement
            return "no: " + _err(e)
        if rebuild is None:
            return "saves; reload not attempted"
        try:
            back = rebuild(load_file(p))
            y = _logits_fn(back)(x)
        except Exception as e:  # noqa: BLE001
            return "saves, reload fails: " + _err(e)
        return "yes" if torch.allclose(y, ref, atol=1e-3, rtol=1e-3) else f"reloads, logits differ (max {float((y - ref).abs().max()):.3g})"


# ---------------------------------------------------------------------------- candidates
def build(name: str, model: torch.nn.Module, calib: torch.Tensor, probe: torch.Tensor, tok: Any = None) -> Cand:
    c = Cand(name)
    t0 = time.perf_counter()
    try:
        if name == "fp32":
            c.fn, c.size, c.saves = _logits_fn(model), _param_bytes(model), "yes"
        elif name == "bf16":
            m = copy.deepcopy(model).to(torch.bfloat16)
            c.fn, c.size, c.saves = _logits_fn(m), _param_bytes(m), "yes"
        elif name in ("llmpack", "llmpack+compile", "llmpack+avx2", "llmpack+7bit", "llmpack+qemb"):
            import llmpack

            compiled, qemb = name == "llmpack+compile", name == "llmpack+qemb"
            kernel = {"llmpack+avx2": "avx2", "llmpack+7bit": "avx2-7bit"}.get(name)
            q = llmpack.quantize(model, method="int8", tokenizer=tok, quiet=True, compile=compiled,
                                 quantize_embeddings=qemb).model
            c.fn, c.size = _logits_fn(q, kernel=kernel), _param_bytes(q)
            if kernel is not None:
                c.saves = "yes (the llmpack files; a runtime setting)"
            else:
                c.saves = "yes (as llmpack)" if compiled else _llmpack_roundtrip(model, probe, c.fn(probe), tok, qemb)
        elif name == "torch.ao":
            from torch.ao.quantization import quantize_dynamic

            m = conv1d_to_linear(copy.deepcopy(model))
            q = quantize_dynamic(m, {torch.nn.Linear}, dtype=torch.qint8)
            c.fn, c.size = _logits_fn(q), _qbytes(q)
            c.saves = _safetensors_roundtrip(q, None, probe, c.fn(probe))
        elif name == "quanto":
            from optimum.quanto import Calibration, freeze, qint8, quantization_map, quantize, requantize

            m = conv1d_to_linear(copy.deepcopy(model))
            quantize(m, weights=qint8, activations=qint8, exclude=["lm_head"])
            with Calibration(), torch.inference_mode():
                m(input_ids=calib, use_cache=False)
            freeze(m)
            c.fn, c.size = _logits_fn(m), _qbytes(m)
            qmap = quantization_map(m)

            def rebuild(sd: dict) -> torch.nn.Module:
                fresh = conv1d_to_linear(copy.deepcopy(model))
                requantize(fresh, sd, qmap)
                return fresh

            c.saves = _safetensors_roundtrip(m, rebuild, probe, c.fn(probe))
            if c.saves == "yes":
                c.saves = "yes (needs quanto's quantization map side-car)"
        elif name == "torchao":
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            m = conv1d_to_linear(copy.deepcopy(model))
            head = m.get_output_embeddings()
            quantize_(m, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and mod is not head)
            c.fn, c.size = _logits_fn(m), _qbytes(m)
            c.saves = _safetensors_roundtrip(m, None, probe, c.fn(probe))
        elif name == "onnxruntime":
            c.fn, c.prefill, c.size, c.saves = _onnx(model, calib)
        else:
            raise ValueError(f"unknown candidate {name}")
        if c.prefill is None:
            c.prefill = _prefill_of(c.fn)
    except Exception as e:  # noqa: BLE001
        c.fn, c.error = None, _err(e)
        if os.environ.get("LLMPACK_DEBUG"):
            traceback.print_exc()
    c.setup_s = time.perf_counter() - t0
    return c


def _prefill_of(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The last-position variant of a ``_logits_fn`` (same model)."""
    return _logits_fn(fn.model, keep=1, kernel=getattr(fn, "kernel", None))  # type: ignore[attr-defined]


def _qbytes(model: torch.nn.Module) -> int | None:
    """Bytes of a quantized model's state as torch serialises it (works for packed params and subclasses)."""
    buf = io.BytesIO()
    try:
        torch.save(model.state_dict(), buf)
    except Exception:  # noqa: BLE001
        return None
    return buf.tell()


def _llmpack_roundtrip(model: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor, tok: Any = None,
                       quantize_embeddings: bool = False) -> str:
    import llmpack

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "q"
        try:
            llmpack.quantize(model, method="int8", out=out, tokenizer=tok, quiet=True,
                             quantize_embeddings=quantize_embeddings)
            back = llmpack.load(out)
            y = _logits_fn(back)(x)
        except Exception as e:  # noqa: BLE001
            return "no: " + _err(e)
        same = torch.allclose(y, ref, atol=1e-3, rtol=1e-3)
        return "yes (compressed-tensors safetensors)" if same else f"reloads, logits differ (max {float((y - ref).abs().max()):.3g})"


def _onnx(model: torch.nn.Module, probe: torch.Tensor):
    """ONNX export (dynamic batch and sequence; ``probe`` must have batch > 1 or export specialises it)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    class Wrap(torch.nn.Module):
        def __init__(self, m: torch.nn.Module, keep: int) -> None:
            super().__init__()
            self.m, self.keep = m, keep

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.m(input_ids=input_ids, use_cache=False, logits_to_keep=self.keep).logits

    tmp = tempfile.mkdtemp(prefix="llmpack-bench-onnx-")
    fns, size = [], 0
    for keep in (0, 1):  # every position (accuracy) and the last one (timed), like the torch candidates
        f32, q8 = os.path.join(tmp, f"model{keep}.onnx"), os.path.join(tmp, f"model{keep}.int8.onnx")
        w = Wrap(model, keep).eval()
        batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
        with torch.no_grad():
            try:
                torch.onnx.export(w, (probe,), f32, input_names=["input_ids"], output_names=["logits"],
                                  dynamic_shapes={"input_ids": {0: batch, 1: seq}}, dynamo=True, external_data=True)
            except TypeError:
                torch.onnx.export(w, (probe,), f32, input_names=["input_ids"], output_names=["logits"],
                                  dynamic_axes={"input_ids": {0: "b", 1: "s"}}, dynamo=True)
        quantize_dynamic(f32, q8, weight_type=QuantType.QInt8, use_external_data_format=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(q8, so, providers=["CPUExecutionProvider"])

        def fn(x: torch.Tensor, sess: Any = sess) -> torch.Tensor:
            return torch.from_numpy(sess.run(["logits"], {"input_ids": x.numpy()})[0]).float()

        fns.append(fn)
        size = os.path.getsize(q8)
    return fns[0], fns[1], size, "no (ONNX file, not safetensors)"


# ---------------------------------------------------------------------------- models and inputs
def make_model(kind: str) -> tuple[torch.nn.Module, torch.Tensor, Any]:
    """(model, token ids [1, >= 8*128]) for ``gpt2`` (GPT-2-small size, random init) or ``smollm2``."""
    if kind == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        m = GPT2LMHeadModel(GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)).eval()
        ids = torch.randint(0, 50257, (1, 4096), generator=torch.Generator().manual_seed(1))
        return m, ids, None
    if kind == "tiny":  # a smoke test of the harness itself
        from llmpack.testing import tiny_model

        return tiny_model("gpt2"), torch.randint(0, 256, (1, 4096), generator=torch.Generator().manual_seed(1)), None
    if kind == "smollm2":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llmpack.measure.text import default_text
        from llmpack.testing import smollm2_dir

        d = smollm2_dir()
        m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(d)
        text = default_text("eval", 32768)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        return m, ids, tok
    raise ValueError(f"unknown model {kind!r}: choose gpt2 or smollm2")


def run_model(kind: str, names: list[str], batches: list[int], seq: int, runs: int, warmup: int) -> dict[str, Any]:
    model, ids, tok = make_model(kind)
    need = max(batches) * seq
    if ids.shape[1] < need:
        ids = ids.repeat(1, need // ids.shape[1] + 1)
    inputs = {b: ids[0, :b * seq].reshape(b, seq).contiguous() for b in batches}
    calib = inputs[max(batches)]
    probe = inputs[min(batches)][:, :32]
    cands = []
    for n in names:
        print(f"[{kind}] setting up {n} ...", file=sys.stderr, flush=True)
        cands.append(build(n, model, calib, probe, tok))
        if cands[-1].error:
            print(f"[{kind}]   {n} failed: {cands[-1].error}", file=sys.stderr, flush=True)
    live = [c for c in cands if c.fn is not None]
    fp32 = next((c for c in live if c.name == "fp32"), None)
    for b, x in inputs.items():
        ref = fp32.fn(x) if fp32 is not None else None
        for c in list(live):
            try:
                y = c.fn(x)
                t = time.perf_counter()
                c.prefill(x)
                for _ in range(warmup - 1 if time.perf_counter() - t < SLOW_S else 0):
                    c.prefill(x)
                if ref is not None:
                    p = torch.log_softmax(ref, -1)
                    q = torch.log_softmax(y.float(), -1)
                    c.kl[b] = float((p.exp() * (p - q)).sum(-1).mean())
                    c.top1[b] = float((ref.argmax(-1) == y.argmax(-1)).float().mean())
            except Exception as e:  # noqa: BLE001
                c.error, c.fn = f"batch {b}: " + _err(e), None
                live.remove(c)
        for i in range(runs):  # interleaved: A B C ... A B C ...
            for c in live:
                if i > 0 and c.times[b][0] > SLOW_S:
                    continue  # e.g. BF16 without hardware support: one timed run is enough to rank it
                t = time.perf_counter()
                c.prefill(x)
                c.times.setdefault(b, []).append(time.perf_counter() - t)
        print(f"[{kind}] batch {b} timed", file=sys.stderr, flush=True)
    rows = []
    base = {b: statistics.median(fp32.times[b]) for b in batches} if fp32 is not None and fp32.times else {}
    ao = next((c for c in cands if c.name == "torch.ao" and c.times), None)
    for c in cands:
        row: dict[str, Any] = {"model": kind, "candidate": c.name, "size_mb": round(c.size / 1e6, 1) if c.size else None,
                               "saves": c.saves, "error": c.error, "setup_s": round(c.setup_s, 1)}
        for b in batches:
            if b in c.times:
                med = statistics.median(c.times[b])
                row[f"b{b}_ms"] = round(1000 * med, 1)
                row[f"b{b}_n"] = len(c.times[b])
                row[f"b{b}_speedup"] = round(base[b] / med, 2) if b in base else None
                row[f"b{b}_kl"] = float(f"{c.kl.get(b, float('nan')):.3g}")
                row[f"b{b}_top1"] = round(c.top1.get(b, float("nan")), 4)
                peer = ao.times.get(b, []) if ao is not None else []
                if len(peer) == len(c.times[b]) > 1:
                    # paired: each round's ratio to torch.ao (timed right next to it), then the median;
                    # machine drift between rounds cancels
                    row[f"b{b}_vs_ao"] = round(statistics.median(t / a for t, a in zip(c.times[b], peer)), 3)
        rows.append(row)
    return {"model": kind, "rows": rows}


def to_markdown(results: list[dict[str, Any]], batches: list[int], seq: int, threads: int) -> str:
    lines = [f"Threads {threads}, {seq} tokens per sequence; latency: median of interleaved prefill steps "
             "(forward pass, logits of the last position, as in `generate`); speedup vs fp32 eager; "
             "KL / top-1 vs fp32 over every position of the same inputs.", ""]
    head = ["model", "candidate"]
    for b in batches:
        head += [f"b{b} ms", f"b{b} x", f"b{b} vs torch.ao", f"b{b} KL", f"b{b} top1"]
    head += ["size MB", "saves to safetensors + reloads", "error"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for res in results:
        for r in res["rows"]:
            cells = [r["model"], r["candidate"]]
            for b in batches:
                ms = str(r.get(f"b{b}_ms", "-")) + (" (n=1)" if r.get(f"b{b}_n") == 1 else "")
                cells += [ms, str(r.get(f"b{b}_speedup", "-")), str(r.get(f"b{b}_vs_ao", "-")),
                          str(r.get(f"b{b}_kl", "-")), str(r.get(f"b{b}_top1", "-"))]
            cells += [str(r["size_mb"] or "-"), r["saves"] or "-", r["error"] or ""]
            lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="gpt2,smollm2")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidates")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))
    os.environ.setdefault("LLMPACK_PROGRESS", "0")
    names = [n for n in a.only.split(",") if n]
    bad = [n for n in names if n not in CANDIDATES]
    if bad:
        ap.error(f"unknown candidates {bad}: choose from {', '.join(CANDIDATES)}")
    if "fp32" not in names:
        names.insert(0, "fp32")
    batches = [int(b) for b in a.batches.split(",")]
    results = []
    for k in (k for k in a.models.split(",") if k):
        results.append(run_model(k, names, batches, a.seq, a.runs, a.warmup))
        print(to_markdown(results[-1:], batches, a.seq, a.threads), file=sys.stderr, flush=True)  # partial results
    md = to_markdown(results, batches, a.seq, a.threads)
    print(md)
    if a.json:
        a.json.write_text(json.dumps({"threads": a.threads, "seq": a.seq, "results": results}, indent=2) + "\n")
    if a.md:
        a.md.write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
