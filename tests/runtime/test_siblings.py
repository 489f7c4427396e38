"""Shared-input siblings (q/k/v, gate/up): one quantization, the separate layers' results."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from llmpack.runtime.linear import Int8Linear
from llmpack.runtime.swap import iter_int8_linears


def _int8_llama() -> nn.Module:
    import llmpack
    from llmpack.testing import tiny_model

    with pytest.warns(UserWarning, match="no calibration"):
        return llmpack.quantize(tiny_model("llama"), "int8", quiet=True).model


def _groups(model: nn.Module) -> dict[str, object]:
    return {n: m._group for n, m in iter_int8_linears(model)}


@pytest.mark.parametrize("name", ["avx2", "avx2-7bit", "onednn-7bit"])
def test_siblings_share_input_quantization_with_identical_results(force, name: str) -> None:
    """q/k/v and gate/up quantize their input once; logits equal the separate layers' (long and short inputs)."""
    force(name)
    model = _int8_llama()
    groups = _groups(model)
    grouped = sorted(n.rsplit(".", 1)[1] for n, g in groups.items() if g is not None)
    layers = len(model.model.layers)
    assert grouped == sorted(["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"] * layers)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj._group is attn.v_proj._group is not model.model.layers[0].mlp.up_proj._group
    assert attn.o_proj._group is None  # its input is not q/k/v's
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fused = model(input_ids=ids, use_cache=False).logits
        assert all(g is None or g._state is None for g in groups.values())  # nothing held after the forward
        short = model(input_ids=ids[:, :3], use_cache=False).logits
        for _, m in iter_int8_linears(model):
            m._group = None
        alone = model(input_ids=ids, use_cache=False).logits
        short_alone = model(input_ids=ids[:, :3], use_cache=False).logits
    torch.testing.assert_close(fused, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(short, short_alone, rtol=1e-5, atol=1e-5)


def test_no_groups_where_the_kernel_gains_nothing(force) -> None:
    force("dequant")
    assert all(g is None for g in _groups(_int8_llama()).values())


def test_sibling_group_follows_weight_changes_and_input_edits(force) -> None:
    force("avx2")
    model = _int8_llama()
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 5, attn.q_proj.in_features)
    ref_k = attn.k_proj.to_float()
    # An input edited in place between sibling calls is noticed (autograd-tracked tensors have versions).
    q_out = attn.q_proj(x)
    x.mul_(2)
    torch.testing.assert_close(attn.k_proj(x), ref_k(x), rtol=0.05, atol=0.05)
    assert q_out.shape == (1, 5, attn.q_proj.out_features)
    # Replacing a member's weight dissolves the group: the new weight is used, never the stale packed one.
    new = Int8Linear.from_float(nn.Linear(attn.v_proj.in_features, attn.v_proj.out_features, bias=False))
    attn.v_proj.weight, attn.v_proj.weight_scale = new.weight, new.weight_scale
    torch.testing.assert_close(attn.v_proj(x), new(x))
    assert attn.q_proj._group is None and attn.v_proj._group is None


def test_a_deep_copy_of_a_grouped_model_runs_and_matches(force) -> None:
    """copy.deepcopy of a prepared model (groups and all) runs, with the original's logits."""
    import copy

    force("avx2")
    model = _int8_llama()
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(input_ids=ids, use_cache=False).logits
        twin = copy.deepcopy(model)
        got = twin(input_ids=ids, use_cache=False).logits
        again = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, want, rtol=0, atol=0)
    assert any(m._group is not None for _, m in iter_int8_linears(twin))


@pytest.mark.parametrize("method", ["fp8", "int8-weight-only"])
def test_models_without_cpu_w8a8_siblings_never_ask_for_a_cpu_kernel(monkeypatch, method: str) -> None:
    """Choosing the CPU kernel may build the native extension (seconds); FP8 and weight-only models (and models
    on a GPU) have nothing to group, so loading them never asks."""
    import llmpack
    from llmpack.runtime import kernels
    from llmpack.runtime.siblings import group_siblings
    from llmpack.testing import tiny_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp8: no calibration, no smoothing
        model = llmpack.quantize(tiny_model("llama"), method, quiet=True).model

    def asked() -> str:
        raise AssertionError("cpu_kernel() asked for a model with no CPU W8A8 siblings")

    monkeypatch.setattr(kernels, "cpu_kernel", asked)
    assert group_siblings(model) == 0
