"""llmpack.runtime.fused: the one-op GELU-tanh gives transformers' results and keeps the state dict."""

from __future__ import annotations

import torch
from torch import nn

from llmpack.runtime.fused import TanhGELU, fuse_float_modules
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


def test_user_classes_with_the_same_name_are_left_alone() -> None:
    class NewGELUActivation(nn.Module):  # a user's own class of that name
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    m = nn.Sequential(NewGELUActivation())
    assert fuse_float_modules(m) == 0 and type(m[0]).__name__ == "NewGELUActivation"


def test_llama_untouched() -> None:
    model = tiny_model("llama")
    assert fuse_float_modules(model) == 0
