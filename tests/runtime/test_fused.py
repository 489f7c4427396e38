"""llmpack.runtime.fused: one-op GELU-tanh and RMSNorm give transformers' results and keep the state dict."""

from __future__ import annotations

import torch
from torch import nn

from llmpack.runtime.fused import FusedRMSNorm, TanhGELU, fuse_float_modules
from llmpack.testing import tiny_model


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits


def test_gpt2_gelu_swapped_same_logits() -> None:
    model = tiny_model("gpt2")
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    ref, keys = _logits(model, ids), list(model.state_dict())
    n = fuse_float_modules(model)
    assert n == model.config.n_layer and all(isinstance(b.mlp.act, TanhGELU) for b in model.transformer.h)
    torch.testing.assert_close(_logits(model, ids), ref, rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == keys
    assert fuse_float_modules(model) == 0  # idempotent


def test_llama_rmsnorm_swapped_bit_identical_and_shares_weights() -> None:
    model = tiny_model("llama")
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "LlamaRMSNorm":
                m.weight.normal_()  # not all ones, so the weight's role is checked too
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    ref, sd = _logits(model, ids), model.state_dict()
    norm_w = model.model.norm.weight
    n = fuse_float_modules(model)
    assert n == 2 * model.config.num_hidden_layers + 1
    assert isinstance(model.model.norm, FusedRMSNorm) and model.model.norm.weight is norm_w
    assert torch.equal(_logits(model, ids), ref)
    assert model.state_dict().keys() == sd.keys()


def test_rmsnorm_keeps_low_precision_semantics() -> None:
    """bf16 input: normalised in float32, cast back, then scaled by the weight (as LlamaRMSNorm)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ref = LlamaRMSNorm(32, eps=1e-5).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.normal_()
    fused = FusedRMSNorm(ref.weight, ref.variance_epsilon)
    x = (torch.randn(3, 7, 32) * 5).to(torch.bfloat16)
    assert fused(x).dtype == torch.bfloat16 and torch.equal(fused(x), ref(x))


def test_user_classes_with_the_same_name_are_left_alone() -> None:
    class LlamaRMSNorm(nn.Module):  # noqa: N801 -- a user's own class of that name
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.ones(4))
            self.variance_epsilon = 1e-6

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    m = nn.Sequential(LlamaRMSNorm())
    assert fuse_float_modules(m) == 0 and type(m[0]).__name__ == "LlamaRMSNorm"
