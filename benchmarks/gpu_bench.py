"""Pieces of ``benchmarks/gpu_check.py``: random-init checkpoints of real shapes, timers, prefill and decode
(static cache, CUDA graphs) measurements, and the agreement of llmpack's device kernels with the CPU reference.

Everything here goes through llmpack's public API (``llmpack.quantize`` / ``llmpack.load``) and plain PyTorch /
transformers; nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

SHAPES: dict[str, dict[str, Any]] = {
    # Llama-3.1-8B (prefill, memory)
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
                         max_position_embeddings=8192, rms_norm_eps=1e-5),
    # Llama-3.2-1B (decode); the head is untied so next-token agreement is not trivially "the input token"
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=False,
                         rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5),
    # smoke test (--quick --device cpu)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=1024),
}

H200 = {"bf16_tflops": 790.0, "fp8_tflops": 1580.0, "hbm_tbps": 4.3}
"""H200 references measured on the project's machine (bf16 matmul, device copy); FP8 tensor cores ~2x bf16."""


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", flush=True)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def make_checkpoint(shape: str, out: Path, device: str, *, layers: int | None = None, seed: int = 0) -> Path:
    """Write a random-init bf16 ``LlamaForCausalLM`` checkpoint of ``SHAPES[shape]`` into ``out`` tensor by tensor
    (generated on ``device``, written through llmpack's shard writer), with ``config.json``; returns ``out``.

    Weights are N(0, 0.02) like ``initializer_range`` (embeddings and head 0.05, so logits spread over a few units
    and next-token agreement means something); norms are ones.
    """
    from transformers import LlamaConfig

    from llmpack.checkpoint.writer import OutSpec, ShardWriter
    from llmpack.runtime.load import build_meta_model

    kw = dict(SHAPES[shape])
    if layers is not None:
        kw["num_hidden_layers"] = int(layers)
    cfg = LlamaConfig(**kw, torch_dtype="bfloat16")
    config = dict(cfg.to_dict(), architectures=["LlamaForCausalLM"], dtype="bfloat16", torch_dtype="bfloat16")
    meta = build_meta_model(config, torch.bfloat16)
    specs = [OutSpec(n, tuple(p.shape), torch.bfloat16) for n, p in meta.state_dict().items()
             if not n.endswith("inv_freq")]
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator(device=device).manual_seed(seed)
    writer = ShardWriter(out, specs, "4GB")
    try:
        for spec in specs:
            if spec.name.endswith("norm.weight"):
                t = torch.ones(spec.shape, dtype=torch.bfloat16, device=device)
            else:
                std = 0.05 if ("embed" in spec.name or "lm_head" in spec.name) else 0.02
                t = torch.randn(spec.shape, generator=gen, device=device, dtype=torch.float32).mul_(std)
                t = t.to(torch.bfloat16)
            writer.write(spec.name, t.cpu())
            del t
        writer.close()
    except BaseException:
        writer.abort()
        raise
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    del meta
    return out


def linear_params(config: dict[str, Any], *, with_head: bool = True) -> int:
    """Parameters of the matmuls one token goes through (decoder linears, plus the head)."""
    h, i, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * hd
    per_layer = h * config["num_attention_heads"] * hd * 2 + 2 * h * kv + 3 * h * i
    return n * per_layer + (h * config["vocab_size"] if with_head else 0)


def prefill_flops(config: dict[str, Any], batch: int, tokens: int) -> float:
    """FLOPs of a causal prefill without the head (2 per multiply-add; causal attention counted half)."""
    attn = config["num_hidden_layers"] * 2 * batch * tokens * tokens * config["hidden_size"]
    return 2.0 * linear_params(config, with_head=False) * batch * tokens + attn


class Timer:
    """Wall-clock (CPU) or CUDA-event timing of one callable, in milliseconds."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> float:
        if self.device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return float(a.elapsed_time(b))
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000.0


def interleaved(timer: Timer, fns: dict[str, Callable[[], Any]], warmup: int, runs: int) -> dict[str, float]:
    """Median ms per callable, timed A B A B ... so machine drift cancels in the ratios."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for k, fn in fns.items():
            times[k].append(timer(fn))
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def prefill_fn(model: torch.nn.Module, batch: int, tokens: int, device: str, vocab: int) -> Callable[[], Any]:
    ids = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(1)).to(device)

    def run() -> Any:
        with torch.inference_mode():
            return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits

    return run


@contextlib.contextmanager
def peak_memory(device: str) -> Iterator[dict[str, int]]:
    """``{"max_memory_allocated": bytes}`` over the block (CUDA; RSS is not comparable, so 0 on CPU)."""
    out = {"max_memory_allocated": 0}
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield out
    if device == "cuda":
        torch.cuda.synchronize()
        out["max_memory_allocated"] = int(torch.cuda.max_memory_allocated())


def _static_cache(model: torch.nn.Module, max_len: int) -> Any:
    from transformers import StaticCache

    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:  # older signatures
        p = next(model.parameters())
        return StaticCache(config=model.config, max_batch_size=1, max_cache_len=max_len, device=p.device,
                           dtype=torch.bfloat16)


def decode(model: torch.nn.Module, batch: int, prompt: int, steps: int, device: str, vocab: int,
           graphs: bool) -> dict[str, Any]:
    """ms per decode step at ``batch`` after a ``prompt``-token prefill, with a static KV cache; on CUDA one step is
    captured in a CUDA graph and replayed (``graphs``), else (or when capture fails) run eagerly. Greedy tokens are
    not fed back (the input id is fixed): the work per step is the same, and the graph needs static inputs."""
    import inspect

    sig = inspect.signature(model.forward).parameters
    cache = _static_cache(model, prompt + steps + 8)
    ids = torch.randint(0, vocab, (batch, prompt), generator=torch.Generator().manual_seed(2)).to(device)
    step_ids = ids[:, -1:].clone()
    pos = torch.full((batch, 1), prompt, dtype=torch.long, device=device)
    cpos = torch.tensor([prompt], dtype=torch.long, device=device)

    cache_kw = "cache" if "cache" in sig else "past_key_values"  # (renamed in transformers 5.2x)

    def kwargs(p: int) -> dict[str, Any]:
        kw: dict[str, Any] = {cache_kw: cache, "use_cache": True}
        if "cache_position" in sig:
            kw["cache_position"] = cpos
        return kw

    with torch.inference_mode():
        pre = {cache_kw: cache, "use_cache": True}
        if "cache_position" in sig:
            pre["cache_position"] = torch.arange(prompt, device=device)
        model(input_ids=ids, **pre)

        def step() -> Any:
            return model(input_ids=step_ids, position_ids=pos, **kwargs(0)).logits

        mode, error = "eager", ""
        fn: Callable[[], Any] = step
        if graphs and device == "cuda":
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(2):
                        step()
                        pos.add_(1)
                        cpos.add_(1)
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    step()
                fn, mode = g.replay, "cuda-graph"
            except Exception as e:  # noqa: BLE001 - recorded: the eager timing below still runs
                error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
                torch.cuda.synchronize()
        timer = Timer(device)
        n = max(1, steps - 4)
        total = 0.0
        for i in range(n):
            ms = timer(fn)
            pos.add_(1)
            cpos.add_(1)
            if i >= 1:  # the first replay warms up
                total += ms
    return {"ms_per_token": total / max(n - 1, 1), "mode": mode, "graph_error": error, "batch": batch}


def _kl_top1(ref: torch.Tensor, cand: torch.Tensor) -> tuple[float, float]:
    r, c = ref.float().reshape(-1, ref.shape[-1]), cand.float().reshape(-1, cand.shape[-1])
    lr, lc = torch.log_softmax(r, -1), torch.log_softmax(c, -1)
    kl = float((lr.exp() * (lr - lc)).sum(-1).mean())
    top1 = float((r.argmax(-1) == c.argmax(-1)).float().mean())
    return kl, top1


def agreement(model_dir: Path, device_model: torch.nn.Module, device: str, vocab: int, *, tokens: int = 64,
              batch: int = 2) -> dict[str, Any]:
    """The device kernels vs the CPU reference semantics on the same weights and inputs: logits of ``device_model``
    (as loaded on ``device``) against ``llmpack.load(model_dir)`` on CPU in float32 with the reference kernel
    (``dequant``: compressed-tensors' arithmetic); next-token top-1 agreement and mean KL. Also the worst per-layer
    SQNR (dB) of the 8-bit layers of the first block on one random input."""
    import llmpack
    from llmpack.quant.int8 import sqnr_db
    from llmpack.runtime import kernels
    from llmpack.runtime.linear import Int8Linear

    ids = torch.randint(0, vocab, (batch, tokens), generator=torch.Generator().manual_seed(3))
    with kernels.use("dequant"):
        ref_model = llmpack.load(model_dir, device="cpu", dtype=torch.float32, lazy=False)
        with torch.inference_mode():
            ref = ref_model(input_ids=ids).logits
    with torch.inference_mode():
        cand = device_model(input_ids=ids.to(device)).logits.cpu()
    kl, top1 = _kl_top1(ref, cand)
    layers: dict[str, float] = {}
    dev_mods = dict(device_model.named_modules())
    with torch.inference_mode():
        for name, mod in ref_model.named_modules():
            if ".layers.0." not in name or not isinstance(mod, Int8Linear):
                continue
            x = torch.randn(32, mod.in_features, generator=torch.Generator().manual_seed(4))
            with kernels.use("dequant"):
                y_ref = mod(x)
            dm = dev_mods[name]
            y = dm(x.to(device=device, dtype=dm.weight_scale.dtype)).float().cpu()
            layers[name.rsplit(".", 1)[-1]] = round(float(sqnr_db(y_ref, y)), 2)
    del ref_model
    gc.collect()
    worst = min(layers.values()) if layers else math.inf
    return {"top1": round(top1, 4), "kl": round(kl, 6), "layer_sqnr_db": layers,
            "worst_layer_sqnr_db": None if math.isinf(worst) else worst}
