"""llmpack.runtime.fused: the one-op GELU-tanh and the fused RMSNorm give transformers' results and keep the
state dict."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmpack.runtime import fused
from llmpack.runtime.kernels import native
from llmpack.runtime.fused import FewTokenLinear, FusedRMSNorm, FusedSwiGLU, TanhGELU, fuse_float_modules
from llmpack.testing import tiny_model


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits



@pytest.fixture(autouse=True)
def _native_kernels(force) -> None:
    """The swaps call llmpack's native float ops where its AVX2 int8 kernels run: force them (a VNNI machine
    would pick int_mm and the PyTorch formulas)."""
    force("avx2")

def test_gpt2_gelu_swapped_same_logits() -> None:
    model = tiny_model("gpt2")
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    ref, keys = _logits(model, ids), list(model.state_dict())
    n = fuse_float_modules(model)
    assert n == model.config.n_layer and all(isinstance(b.mlp.act, TanhGELU) for b in model.transformer.h)
    torch.testing.assert_close(_logits(model, ids), ref, rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == keys
    assert fuse_float_modules(model) == 0  # idempotent


def test_tanh_gelu_matches_the_formula() -> None:
    x = torch.cat([torch.randn(5000, generator=torch.Generator().manual_seed(4)) * 4,
                   torch.tensor([0.0, -0.0, 1e-30, 5.0, -5.0, 20.0, -20.0, 100.0, -100.0, 1e20, -1e20])]).reshape(1, -1)
    exact = F.gelu(x.double(), approximate="tanh")
    got = TanhGELU()(x)
    torch.testing.assert_close(got.double(), exact, rtol=2e-6, atol=1e-6)
    special = torch.tensor([float("nan"), float("inf"), -float("inf")])
    torch.testing.assert_close(TanhGELU()(special), F.gelu(special, approximate="tanh"), equal_nan=True)  # nan, inf, nan
    ops = native.avx2_ops()
    if ops is not None:
        with torch.profiler.profile() as prof:
            TanhGELU()(x)
        used = any(e.key == "llmpack_avx2::gelu_tanh" for e in prof.key_averages())
        assert used == (fused._native_float_ops() is not None)
        torch.testing.assert_close(ops.gelu_tanh(x).double(), exact, rtol=2e-6, atol=1e-6)


def test_user_classes_with_the_same_name_are_left_alone() -> None:
    class NewGELUActivation(nn.Module):  # a user's own class of that name
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    m = nn.Sequential(NewGELUActivation())
    assert fuse_float_modules(m) == 0 and type(m[0]).__name__ == "NewGELUActivation"


def test_llama_rms_norms_swapped_same_logits() -> None:
    model = tiny_model("llama")
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    ref, keys = _logits(model, ids), list(model.state_dict())
    weights = [m.weight for m in model.modules() if type(m).__name__ == "LlamaRMSNorm"]
    downs = [layer.mlp.down_proj for layer in model.model.layers]
    assert fuse_float_modules(model) == 3 * model.config.num_hidden_layers + 1  # 2 norms + 1 MLP per layer, final norm
    norms = [m for m in model.modules() if isinstance(m, FusedRMSNorm)]
    assert [n.weight for n in norms] == weights  # the same parameter objects
    assert all(isinstance(layer.mlp, FusedSwiGLU) for layer in model.model.layers)
    assert [layer.mlp.down_proj for layer in model.model.layers] == downs
    torch.testing.assert_close(_logits(model, ids), ref, rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == keys
    assert fuse_float_modules(model) == 0


@pytest.mark.parametrize("shape", [(1, 1, 576), (2, 7, 37), (128, 64), (3, 16)])
def test_fused_rms_norm_matches_transformers(shape: tuple[int, ...]) -> None:
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    k = shape[-1]
    ref = LlamaRMSNorm(k, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.randn(k, generator=torch.Generator().manual_seed(k)))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2)) * 5
    fused = FusedRMSNorm(ref.weight, ref.variance_epsilon)
    torch.testing.assert_close(fused(x), ref(x), rtol=2e-6, atol=1e-6)
    ops = native.avx2_ops()
    if ops is not None:  # the native kernel itself (what FusedRMSNorm calls on the AVX2 int8 kernel)
        torch.testing.assert_close(ops.rms_norm(x, ref.weight.detach(), 1e-5), ref(x).detach(), rtol=2e-6, atol=1e-6)
    ref.to(torch.bfloat16)  # converts the shared parameter in place
    half = x.to(torch.bfloat16)  # other dtypes: transformers' own formula
    assert fused.weight.dtype == torch.bfloat16 and torch.equal(fused(half), ref(half))


def test_native_float_ops_refuse_bad_arguments() -> None:
    ops = native.avx2_ops()
    if ops is None:
        assert native.native_status() != "ok"
        return
    with pytest.raises(RuntimeError, match="contiguous float32"):
        ops.rms_norm(torch.randn(2, 8, dtype=torch.float64), torch.ones(8), 1e-6)
    with pytest.raises(RuntimeError, match="weight"):
        ops.rms_norm(torch.randn(2, 8), torch.ones(7), 1e-6)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        ops.gelu_tanh(torch.randn(4, 8).t())
    with pytest.raises(RuntimeError, match="1 to 8 tokens"):
        ops.few_token_linear(torch.randn(9, 8), torch.randn(4, 8))
    with pytest.raises(RuntimeError, match="weight"):
        ops.few_token_linear(torch.randn(2, 8), torch.randn(4, 7))


def test_silu_mul_matches_the_formula() -> None:
    g = torch.cat([torch.randn(4000, generator=torch.Generator().manual_seed(5)) * 6,
                   torch.tensor([0.0, -0.0, 1e-30, 20.0, -20.0, 90.0, -90.0, 200.0, -200.0, 1e20, -1e20])]).reshape(1, -1)
    u = torch.randn(g.shape, generator=torch.Generator().manual_seed(6))
    exact = F.silu(g.double()) * u.double()
    mlp = FusedSwiGLU(nn.Identity(), nn.Identity(), nn.Identity(), nn.SiLU())
    ops = native.avx2_ops()
    if ops is None:
        assert native.native_status() != "ok"
        return
    torch.testing.assert_close(ops.silu_mul(g, u).double(), exact, rtol=2e-6, atol=1e-30)
    special = torch.tensor([float("nan"), float("inf"), -float("inf")])
    torch.testing.assert_close(ops.silu_mul(special, torch.ones(3)), F.silu(special), equal_nan=True)  # nan, inf, nan
    with pytest.raises(RuntimeError, match="same shape"):
        ops.silu_mul(torch.randn(2, 8), torch.randn(2, 7))
    with pytest.raises(RuntimeError, match="contiguous float32"):
        ops.silu_mul(torch.randn(8, 2).t(), torch.randn(2, 8))
    with torch.profiler.profile() as prof:
        y = mlp(g)  # gate and up are the same tensor here: silu(g) * g (1e20 * 1e20 overflows to inf)
    used = any(e.key == "llmpack_avx2::silu_mul" for e in prof.key_averages())
    assert used == (fused._native_float_ops() is not None)
    torch.testing.assert_close(y, F.silu(g) * g, rtol=2e-6, atol=1e-30)


def test_changed_upstream_mlp_is_not_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformers release whose Llama MLP computes something else keeps its own module."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    monkeypatch.setattr(LlamaMLP, "forward", lambda self, x: self.down_proj(self.act_fn(self.up_proj(x))))
    model = tiny_model("llama")
    fuse_float_modules(model)
    assert not any(isinstance(m, FusedSwiGLU) for m in model.modules())


def test_changed_upstream_norm_is_not_swapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformers release whose RMSNorm computes something else keeps its own module."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    monkeypatch.setattr(LlamaRMSNorm, "forward", lambda self, x: self.weight * x)
    model = tiny_model("llama")
    fuse_float_modules(model)
    assert not any(isinstance(m, FusedRMSNorm) for m in model.modules())


@pytest.mark.parametrize("tokens", [1, 3, 8, 9])  # 9: more than FEW_TOKENS, plain F.linear
@pytest.mark.parametrize("bias", [False, True])
def test_few_token_linear_matches_linear(tokens: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(tokens)
    lin = nn.Linear(37, 300, bias=bias)  # K not a multiple of 8
    x = torch.randn(1, tokens, 37, generator=g)
    fast = FewTokenLinear(lin)
    assert fast.weight is lin.weight and fast.bias is lin.bias
    with torch.profiler.profile() as prof:
        got = fast(x)
    torch.testing.assert_close(got, lin(x), rtol=1e-5, atol=1e-5)
    used = any(e.key == "llmpack_avx2::few_token_linear" for e in prof.key_averages())
    assert used == (fused._native_float_ops() is not None and tokens <= fused.FEW_TOKENS)
    ops = native.avx2_ops()
    if ops is not None and tokens <= fused.FEW_TOKENS:
        y = ops.few_token_linear(x.reshape(tokens, 37), lin.weight.detach())
        torch.testing.assert_close(y, x.reshape(tokens, 37) @ lin.weight.detach().t(), rtol=1e-5, atol=1e-5)


def test_wide_tied_head_swapped_and_still_tied(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused, "WIDE_OUT", 200)  # the tiny model's vocabulary (256) counts as wide
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(3))
    ref, keys = _logits(model, ids), list(model.state_dict())
    fuse_float_modules(model)
    assert isinstance(model.lm_head, FewTokenLinear)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(_logits(model, ids), ref, rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == keys
