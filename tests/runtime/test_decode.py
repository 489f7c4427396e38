"""Compiled decoding (``llmpack.load(dir, compile="decode")``): a static cache and a compiled forward give the
eager model's logits and greedy tokens."""

from __future__ import annotations

import pytest
import torch

from llmpack.errors import ConfigError
from llmpack.pipeline import quantize
from llmpack.runtime.decode import compiled_forward, decode_compile_config, enable_compiled_decode
from llmpack.runtime.load import load


def test_generate_is_set_to_decode_through_a_static_cache_compiled_on_every_device() -> None:
    from llmpack.testing import tiny_model

    model = enable_compiled_decode(tiny_model("llama"))
    gc = model.generation_config
    assert gc.cache_implementation == "static"
    assert gc.compile_config.dynamic is False and gc.compile_config._compile_all_devices
    assert model._valid_auto_compile_criteria({"cache": _static_cache(model)}, gc)  # transformers will compile on CPU
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
