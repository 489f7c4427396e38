"""Prefill and decode on CPU: llmpack's int8 runtime against llama.cpp (the runtime CPU users pick), side by side.

SmolLM2-135M (the real model that installs offline), same machine, same threads, timed round-robin:

* ``llama.cpp Q8_0`` / ``llama.cpp F16``: ``llama-cpp-python`` (the ``bench`` extra) on GGUF files made from the
  shipped GGUF with its own ``llama_model_quantize``;
* ``fp32``: transformers eager, float32;
* ``llmpack int8``: ``llmpack.quantize(model, "int8", tokenizer=tok)`` on the default kernel (``auto``);
* ``llmpack int8 avx2``: the same with ``LLMPACK_INT8_KERNEL=avx2`` forced (what AVX2-only CPUs run; on a VNNI
  machine ``auto`` picks ``int_mm``, and llmpack's native kernel for decode steps where it measures faster);
* ``llmpack int8+emb``: ``quantize_embeddings=True`` as well (the tied head reads the int8 table, as llama.cpp's
  Q8_0 file does);
* ``... compiled``: the same models decoding as ``llmpack.load(dir, compile="decode")`` makes ``generate`` decode:
  a static KV cache and the compiled forward (:mod:`llmpack.runtime.decode`; prefill stays eager).

llama.cpp runs with its default CPU buffer types (AMX, repacked weights) where a probe in a child process shows
they work, else with ``use_extra_bufts=False`` (a note says so). On a VM whose CPU lists AMX but crashes in
ggml's AMX path, a build without AMX (and with every other instruction set of the CPU) is the strongest
llama.cpp that runs; build it beside the venv and put it first on ``PYTHONPATH``::

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
      -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON \
      -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
      pip install --no-deps --no-cache-dir --target /tmp/llama-noamx llama-cpp-python==0.3.36
    PYTHONPATH=/tmp/llama-noamx python benchmarks/decode_cpu.py

Prefill: one forward pass over a 128-token prompt (the last position's logits, as in ``generate``). Decode: per
token, after that prompt, one forward pass of one new token per sequence with the KV cache, at batch 1 and 8
(llama.cpp's batch 8 through its C API: 8 sequences in one ``llama_decode`` per step). Decode figures are per step
(one token for each of the ``batch`` sequences); ratios compare candidates at the same batch. Figures are medians.

Usage:
    python benchmarks/decode_cpu.py [--threads 2] [--prompt 128] [--steps 32] [--runs 5] [--json out.json] [--no-compile]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch


def _gguf(kind: str, out_dir: str) -> str:
    """SmolLM2 as GGUF ``kind`` (``Q8_0`` or ``F16``), made with llama.cpp's own quantizer from the shipped file."""
    import llama_cpp

    from llmpack.testing import smollm2_gguf_path

    src = str(smollm2_gguf_path())
    out = os.path.join(out_dir, f"smollm2-{kind}.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"Q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16}[kind]
    params.allow_requantize = True  # the shipped file is Q4_1; the HF model llmpack reads is dequantized from it too
    params.nthread = torch.get_num_threads()
    rc = llama_cpp.llama_model_quantize(src.encode(), out.encode(), params)
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize returned {rc}")
    return out


_PROBE = """
import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, n_batch=16, verbose=False)
llm.eval(list(range(100, 116)))
"""


def _extra_buffers_work(path: str) -> tuple[bool, str]:
    """Whether llama.cpp's default CPU buffer types (AMX / repacked weights) run here: on some virtual machines
    that list AMX the AMX path crashes the process, so it is probed in a child first."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", _PROBE, path], capture_output=True, text=True, timeout=300)
    if r.returncode == 0:
        return True, ""
    return False, (f"llama.cpp's default CPU buffers (AMX/repack) crash here (exit {r.returncode}): "
                   f"run with use_extra_bufts=False")


def _llama_cpp(path: str, prompt: list[int], threads: int,
               extra_bufts: bool = True) -> tuple[Callable[[], float], Callable[[], float]]:
    import llama_cpp.llama as llama_mod

    default_params = llama_mod.llama_cpp.llama_model_default_params

    def params() -> Any:
        p = default_params()
        p.use_extra_bufts = extra_bufts
        return p

    llama_mod.llama_cpp.llama_model_default_params = params
    try:
        llm = llama_mod.Llama(model_path=path, n_ctx=len(prompt) + 256, n_threads=threads, n_threads_batch=threads,
                              n_batch=len(prompt), verbose=False)
    finally:
        llama_mod.llama_cpp.llama_model_default_params = default_params

    def prefill() -> float:
        llm.reset()
        llm._ctx.kv_cache_clear() if hasattr(llm._ctx, "kv_cache_clear") else None
        t = time.perf_counter()
        llm.eval(prompt)
        return time.perf_counter() - t

    def decode(steps: int = 16) -> float:
        prefill()
        tok = prompt[-1]
        t = time.perf_counter()
        for _ in range(steps):
            llm.eval([tok])
        return (time.perf_counter() - t) / steps

    return prefill, decode


def _torch(model: torch.nn.Module, ids: torch.Tensor) -> tuple[Callable[[], float], Callable[[], float]]:
    def prefill() -> float:
        with torch.inference_mode():
            t = time.perf_counter()
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
            return time.perf_counter() - t

    def decode(steps: int = 16) -> float:
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
            return (time.perf_counter() - t) / steps

    return prefill, decode


def _llama_cpp_batched(path: str, prompt: list[int], threads: int, batch: int,
                       extra_bufts: bool = True) -> tuple[Callable[[], float], Callable[[], float]]:
    """llama.cpp decoding ``batch`` sequences per step through its C API (llama-cpp-python's ``Llama`` decodes
    one): the prompt as ``batch`` sequences in one prefill, then one token per sequence per step."""
    import llama_cpp as lc

    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    mp.use_extra_bufts = extra_bufts
    model = lc.llama_model_load_from_file(path.encode(), mp)
    if not model:
        raise RuntimeError(f"llama.cpp could not load {path}")
    n = len(prompt)
    cp = lc.llama_context_default_params()
    cp.n_ctx = batch * (n + 256)
    cp.n_batch = cp.n_ubatch = batch * n
    cp.n_seq_max = batch
    cp.n_threads = cp.n_threads_batch = threads
    ctx = lc.llama_init_from_model(model, cp)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a context")
    b = lc.llama_batch_init(batch * n, 0, batch)
    keep = (model, ctx, b)  # referenced by the closures below, freed with the process

    def fill(tokens: list[list[int]], start: int) -> None:
        j = 0
        for seq, toks in enumerate(tokens):
            for i, tok in enumerate(toks):
                b.token[j], b.pos[j], b.n_seq_id[j] = tok, start + i, 1
                b.seq_id[j][0] = seq
                b.logits[j] = i == len(toks) - 1
                j += 1
        b.n_tokens = j

    def prefill() -> float:
        lc.llama_memory_clear(lc.llama_get_memory(keep[1]), True)
        fill([prompt] * batch, 0)
        t = time.perf_counter()
        if lc.llama_decode(ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - t

    def decode(steps: int = 16) -> float:
        prefill()
        t = time.perf_counter()
        for step in range(steps):
            fill([[prompt[-1]]] * batch, n + step)
            if lc.llama_decode(ctx, b) != 0:
                raise RuntimeError("llama_decode failed")
        return (time.perf_counter() - t) / steps

    return prefill, decode


def _torch_compiled(model: torch.nn.Module, ids: torch.Tensor,
                    max_steps: int) -> tuple[Callable[[], float], Callable[[], float]]:
    """Decode through a static KV cache and the compiled forward ``generate`` uses after
    ``llmpack.load(..., compile="decode")`` (prefill eager, as in ``generate``)."""
    from transformers import StaticCache

    from llmpack.runtime.decode import compiled_forward, enable_compiled_decode

    enable_compiled_decode(model)
    fwd = compiled_forward(model)
    n = ids.shape[1]
    cache = StaticCache(config=model.config, max_cache_len=n + max_steps + 1)

    def prefill() -> float:
        with torch.inference_mode():
            cache.reset()
            t = time.perf_counter()
            model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(n), use_cache=True,
                  logits_to_keep=1)
            return time.perf_counter() - t

    def decode(steps: int = 16) -> float:
        with torch.inference_mode():
            cache.reset()
            out = model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(n), use_cache=True,
                        logits_to_keep=1)
            nxt = out.logits[:, -1:].argmax(-1)
            t = time.perf_counter()
            for i in range(steps):
                out = fwd(input_ids=nxt, past_key_values=cache, cache_position=torch.tensor([n + i]), use_cache=True)
                nxt = out.logits[:, -1:].argmax(-1)
            return (time.perf_counter() - t) / steps

    return prefill, decode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-compile", action="store_true", help="skip the compiled-decode candidates")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    os.environ.setdefault("LLMPACK_PROGRESS", "0")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import llmpack
    from llmpack.measure.text import default_text
    from llmpack.runtime import kernels
    from llmpack.testing import smollm2_dir

    d = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(d)
    fp32 = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = tok(default_text("eval", 8192), return_tensors="pt", add_special_tokens=False).input_ids[:, :a.prompt]
    q = llmpack.quantize(copy.deepcopy(fp32), "int8", tokenizer=tok, quiet=True).model
    qe = llmpack.quantize(copy.deepcopy(fp32), "int8", tokenizer=tok, quiet=True, quantize_embeddings=True).model
    cands: dict[str, dict[int, tuple[Callable, Callable]]] = {}
    errors: dict[str, str] = {}
    tmp = tempfile.mkdtemp(prefix="llmpack-decode-")
    notes: list[str] = []
    extra: bool | None = None
    for kind in ("Q8_0", "F16"):
        try:
            path = _gguf(kind, tmp)
            if extra is None:
                extra, why = _extra_buffers_work(path)
                if why:
                    notes.append(why)
            cands[f"llama.cpp {kind}"] = {1: _llama_cpp(path, ids[0].tolist(), a.threads, extra),
                                          8: _llama_cpp_batched(path, ids[0].tolist(), a.threads, 8, extra)}
        except Exception as e:  # noqa: BLE001 -- a peer that does not install is reported, never dropped
            errors[f"llama.cpp {kind}"] = f"{type(e).__name__}: {e}"[:200]
    batches = {1: ids, 8: ids.repeat(8, 1)}
    cands["fp32"] = {b: _torch(fp32, x) for b, x in batches.items()}
    cands["llmpack int8"] = {b: _torch(q, x) for b, x in batches.items()}
    cands["llmpack int8+emb"] = {b: _torch(qe, x) for b, x in batches.items()}
    if not a.no_compile:
        qc, qec = copy.deepcopy(q), copy.deepcopy(qe)
        cands["llmpack int8 compiled"] = {b: _torch_compiled(qc, x, a.steps) for b, x in batches.items()}
        cands["llmpack int8+emb compiled"] = {b: _torch_compiled(qec, x, a.steps) for b, x in batches.items()}

    def forced(fn: Callable[..., float]) -> Callable[..., float]:
        def run(*args: Any) -> float:
            with kernels.use("avx2"):
                return fn(*args)
        return run

    if kernels.native_ops() is not None:
        cands["llmpack int8 avx2"] = {b: tuple(forced(f) for f in _torch(q, x)) for b, x in batches.items()}  # type: ignore[misc]
    times: dict[tuple[str, int, str], list[float]] = {}
    for name, per_b in cands.items():  # warm up (first calls pack weights, build the native kernels)
        for b, (pf, dc) in per_b.items():
            pf(), dc(2)
    for _ in range(a.runs):
        for name, per_b in cands.items():
            for b, (pf, dc) in per_b.items():
                times.setdefault((name, b, "prefill"), []).append(pf())
                times.setdefault((name, b, "decode"), []).append(dc(a.steps))
    rows = []
    ref = {(b, s): statistics.median(times[("llama.cpp Q8_0", b, s)]) for b in (1, 8) for s in ("prefill", "decode")
           if ("llama.cpp Q8_0", b, s) in times}
    print(f"SmolLM2-135M, {a.threads} threads, {a.prompt}-token prompt, kernel auto = {kernels.cpu_kernel()}")
    print("| candidate | batch | prefill ms | decode ms/step | decode vs llama.cpp Q8_0, same batch |")
    print("|---|---|---|---|---|")
    for name, per_b in cands.items():
        for b in per_b:
            pf = 1000 * statistics.median(times[(name, b, "prefill")])
            dc = 1000 * statistics.median(times[(name, b, "decode")])
            vs = f"{dc / 1000 / ref[(b, 'decode')]:.2f}x" if (b, "decode") in ref else "-"
            rows.append({"candidate": name, "batch": b, "prefill_ms": round(pf, 1), "decode_ms": round(dc, 2)})
            print(f"| {name} | {b} | {pf:.1f} | {dc:.2f} | {vs} |")
    for name, err in errors.items():
        print(f"| {name} | - | failed: {err} | | |")
    for note in notes:
        print(f"\nnote: {note}")
    if a.json:
        a.json.write_text(json.dumps({"threads": a.threads, "prompt": a.prompt, "kernel": kernels.cpu_kernel(),
                                      "rows": rows, "errors": errors, "notes": notes}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
