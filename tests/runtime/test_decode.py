"""Compiled decoding (``llmpack.load(dir, compile="decode")``): a static cache and a compiled forward give the
eager model's logits and greedy tokens."""

from __future__ import annotations

import pytest
import torch

from llmpack.errors import ConfigError
from llmpack.measure.latency import cache_kwarg
from llmpack.pipeline import quantize
from llmpack.runtime.decode import compiled_forward, decode_compile_config, enable_compiled_decode
from llmpack.runtime.load import load


def test_generate_is_set_to_decode_through_a_static_cache_compiled_on_every_device() -> None:
    from llmpack.testing import tiny_model

    model = enable_compiled_decode(tiny_model("llama"))
    gc = model.generation_config
    assert gc.cache_implementation == "static"
    assert gc.compile_config.dynamic is False and gc.compile_config._compile_all_devices
    kw = {cache_kwarg(model): _static_cache(model)}
    assert model._valid_auto_compile_criteria(kw, gc)  # transformers will compile on CPU
    cfg = decode_compile_config().to_dict()
    assert cfg["mode"] is None or cfg["options"] is None  # torch.compile refuses both


def _static_cache(model: torch.nn.Module, length: int = 32) -> object:
    from transformers import StaticCache

    return StaticCache(config=model.config, max_cache_len=length)


def test_bad_compile_value_is_one_clear_error(tiny_dirs) -> None:
    with pytest.raises(ConfigError, match="compile='fast'"):
        load(tiny_dirs["llama"], compile="fast")


def test_compiled_decode_steps_equal_the_eager_model(tiny_dirs, tmp_path) -> None:
    """int8 tiny Llama: the compiled step's logits equal the eager model's over 6 teacher-forced steps, and
    ``generate`` gives the eager greedy tokens."""
    out = quantize(tiny_dirs["llama"], "int8", out=tmp_path / "q", quiet=True).out_dir
    eager = load(out)
    fast = load(out, compile="decode")
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    steps = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(1))
    fwd = compiled_forward(fast)
    cache = _static_cache(fast, 16)
    with torch.inference_mode():
        want = eager(input_ids=torch.cat([ids, steps], 1), use_cache=False).logits[:, 10:]
        fast(input_ids=ids, past_key_values=cache, cache_position=torch.arange(10), use_cache=True)
        got = [fwd(input_ids=steps[:, i:i + 1], past_key_values=cache, cache_position=torch.tensor([10 + i]),
                   use_cache=True).logits[:, -1] for i in range(6)]
        torch.testing.assert_close(torch.stack(got, 1), want, rtol=1e-4, atol=1e-4)
        g_eager = eager.generate(ids, max_new_tokens=5, do_sample=False)
        g_fast = fast.generate(ids, max_new_tokens=5, do_sample=False)
    assert torch.equal(g_fast, g_eager)


def test_two_models_of_one_class_keep_their_own_graphs() -> None:
    """Module guards are skipped for speed, so each model must compile its own graph: a float-head model and
    an int8-head model of the same class, compiled one after the other, each give their own eager logits."""
    import warnings

    import llmpack
    from llmpack.testing import tiny_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = llmpack.quantize(tiny_model("llama"), "int8", quiet=True).model
        b = llmpack.quantize(tiny_model("llama"), "int8", quiet=True, quantize_embeddings=True).model
    ids = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(2))
    for m in (a, b):
        enable_compiled_decode(m)
        cache = _static_cache(m, 8)
        with torch.inference_mode():
            want = m(input_ids=ids, use_cache=False).logits[:, -1]
            m(input_ids=ids[:, :5], past_key_values=cache, cache_position=torch.arange(5), use_cache=True)
            got = compiled_forward(m)(input_ids=ids[:, 5:], past_key_values=cache, cache_position=torch.tensor([5]),
                                      use_cache=True).logits[:, -1]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert compiled_forward(a) is not compiled_forward(b)


@pytest.mark.parametrize("mask", ["bool", "float", "none"])
@pytest.mark.parametrize("groups", [1, 3])
def test_decode_sdpa_is_transformers_sdpa(mask: str, groups: int) -> None:
    """One-token steps attend the key/value heads without copying them; longer inputs take transformers' sdpa
    as it is. Both give transformers' sdpa results."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from llmpack.runtime.decode import decode_sdpa

    g = torch.Generator().manual_seed(groups)
    module = SimpleNamespace(num_key_value_groups=groups, is_causal=True)
    for q_len in (1, 4):
        q = torch.randn(2, 2 * groups, q_len, 16, generator=g)
        k, v = torch.randn(2, 2, 9, 16, generator=g), torch.randn(2, 2, 9, 16, generator=g)
        keep = torch.rand(2, 1, q_len, 9, generator=g) > 0.3
        keep[..., 0] = True
        m = {"bool": keep, "float": torch.zeros(2, 1, q_len, 9).masked_fill(~keep, float("-inf")), "none": None}[mask]
        got, _ = decode_sdpa(module, q, k, v, m, scaling=0.25)
        want, _ = sdpa_attention_forward(module, q, k, v, m, scaling=0.25)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral", "gemma"])
def test_compiled_decode_of_float_models_equals_eager(kind: str) -> None:
    """Float tiny models with grouped-query attention (where the one-token attention differs from
    transformers'): compiled steps over a static cache give the eager logits."""
    from llmpack.testing import tiny_model

    model = tiny_model("llama") if kind == "llama" else _arch_model(kind)
    eager_logits = _teacher_forced(model, compiled=False)
    enable_compiled_decode(model)
    assert model.config._attn_implementation in ("llmpack_decode_sdpa", "sdpa")
    torch.testing.assert_close(_teacher_forced(model, compiled=True), eager_logits, rtol=1e-4, atol=1e-4)


def _arch_model(kind: str) -> torch.nn.Module:
    import transformers as T

    cls = {"qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM), "mistral": (T.MistralConfig, T.MistralForCausalLM),
           "gemma": (T.GemmaConfig, T.GemmaForCausalLM)}[kind]
    cfg = cls[0](vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
    torch.manual_seed(0)
    return cls[1](cfg).eval()


def _teacher_forced(model: torch.nn.Module, *, compiled: bool) -> torch.Tensor:
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(3))
    steps = torch.randint(0, 128, (2, 4), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        if not compiled:
            return model(input_ids=torch.cat([ids, steps], 1), use_cache=False).logits[:, 7:]
        cache = _static_cache(model, 16)
        model(input_ids=ids, past_key_values=cache, cache_position=torch.arange(7), use_cache=True)
        fwd = compiled_forward(model)
        return torch.stack([fwd(input_ids=steps[:, i:i + 1], past_key_values=cache,
                                cache_position=torch.tensor([7 + i]), use_cache=True).logits[:, -1]
                            for i in range(4)], 1)


def test_compiled_siblings_share_one_kernel_call(force) -> None:
    """Under torch.compile, q/k/v and gate/up still quantize their input once: one native call per group."""
    import warnings

    import llmpack
    from llmpack.runtime import kernels
    from llmpack.runtime.swap import iter_int8_linears
    from llmpack.testing import tiny_model

    force("avx2")
    if kernels.native_ops() is None:
        pytest.skip("the native kernels are not built here (siblings group on them only)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = llmpack.quantize(tiny_model("llama"), "int8", quiet=True).model
    layers = [m for _, m in iter_int8_linears(model) if m.act_quant]
    groups = {id(m._group) for m in layers if m._group is not None}
    alone = sum(m._group is None for m in layers)
    assert groups
    step = torch.compile(model, dynamic=False)
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        want = model(input_ids=ids, use_cache=False).logits
        step(input_ids=ids, use_cache=False)
        with torch.profiler.profile() as prof:
            got = step(input_ids=ids, use_cache=False).logits
    calls = sum(e.count for e in prof.key_averages() if e.key.startswith("llmpack_avx2::w8a8"))
    assert calls == len(groups) + alone
    for m in layers:  # the same model compiled without groups: the very same logits
        m._group = None
    torch._dynamo.reset()
    with torch.inference_mode():
        separate = torch.compile(model, dynamic=False)(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, separate, rtol=1e-6, atol=1e-6)
    # (vs the eager model: float rounding of the compiled float ops, which int8 rounding can amplify)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-2)
