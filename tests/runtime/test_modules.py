"""Int8Linear / Int8Embedding / swap_quantized_modules against float references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmpack.quant.int8 import sqnr_db
from llmpack.runtime import modules as M
from llmpack.runtime.modules import Int8Embedding, Int8Linear, TiedInt8Head, swap_quantized_modules


def _kernels() -> list[str]:
    ks = ["int_mm", "dequant"]
    if M._onednn_available():
        ks.append("onednn")
    return ks


@pytest.fixture(params=_kernels())
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(M.ENV_KERNEL, request.param)
    M.cpu_int8_kernel.cache_clear()
    yield request.param
    M.cpu_int8_kernel.cache_clear()


@pytest.mark.parametrize("tokens,k,n", [(1, 64, 32), (3, 67, 33), (17, 40, 24), (5, 13, 7), (128, 96, 80)])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_matches_float_reference(kernel: str, device: str, tokens: int, k: int, n: int, bias: bool) -> None:
    torch.manual_seed(0)
    lin = nn.Linear(k, n, bias=bias).to(device)
    q = Int8Linear.from_float(lin).to(device)
    x = torch.randn(2, tokens, k, device=device)
    ref = lin(x)
    y = q(x)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    # 8-bit activations: ~40 dB; the AVX2 oneDNN kernel uses [-64, 64] activations: ~33 dB
    floor = 28.0 if kernel == "onednn" and device == "cpu" else 33.0
    assert sqnr_db(ref, y) > floor


def test_kernels_agree_exactly_up_to_float_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    q = Int8Linear.from_float(nn.Linear(72, 40))
    x = torch.randn(9, 72)
    outs = {}
    for k in ("int_mm", "dequant"):
        monkeypatch.setenv(M.ENV_KERNEL, k)
        M.cpu_int8_kernel.cache_clear()
        outs[k] = q(x)
    M.cpu_int8_kernel.cache_clear()
    torch.testing.assert_close(outs["int_mm"], outs["dequant"], rtol=1e-5, atol=1e-5)


def test_weight_only_and_bf16_activations() -> None:
    torch.manual_seed(2)
    lin = nn.Linear(48, 24)
    q = Int8Linear.from_float(lin, act_quant=False)
    x = torch.randn(3, 48)
    assert sqnr_db(lin(x), q(x)) > 38
    qb = Int8Linear.from_float(lin)
    y = qb(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert sqnr_db(lin(x), y.float()) > 25


def test_weight_layout_and_scale_shapes() -> None:
    q = Int8Linear.from_float(nn.Linear(10, 6), scale_dtype=torch.float16)
    assert q.weight.dtype == torch.int8 and tuple(q.weight.shape) == (6, 10)
    assert q.weight_scale.dtype == torch.float16 and tuple(q.weight_scale.shape) == (6, 1)
    assert set(q.state_dict()) == {"weight", "weight_scale", "bias"}


def test_conv1d_roundtrip() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(3)
    conv = Conv1D(24, 40)  # nf=24 outputs, nx=40 inputs; weight [40, 24]
    q = Int8Linear.from_float(conv)
    assert q.conv1d_layout and tuple(q.weight.shape) == (24, 40)
    x = torch.randn(2, 5, 40)
    assert sqnr_db(conv(x), q(x)) > 33
    back = q.to_float()
    assert type(back).__name__ == "Conv1D" and back.weight.shape == conv.weight.shape
    assert sqnr_db(conv.weight, back.weight) > 38


def test_nan_weight_refused_naming_tensor() -> None:
    from llmpack.errors import NonFiniteWeightError

    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight[1, 2] = float("nan")
    with pytest.raises(NonFiniteWeightError, match="blocks.3.fc.weight"):
        Int8Linear.from_float(lin, name="blocks.3.fc.weight")


def test_embedding_and_tied_head() -> None:
    torch.manual_seed(4)
    emb = nn.Embedding(50, 16)
    q = Int8Embedding.from_float(emb)
    ids = torch.tensor([[0, 5, 49, 5]])
    assert sqnr_db(emb(ids), q(ids)) > 38
    head = TiedInt8Head(q)
    x = torch.randn(3, 16)
    assert sqnr_db(x @ emb.weight.t(), head(x)) > 35
    assert head.state_dict() == {}


def test_swap_on_meta_then_assign() -> None:
    from llmpack.quant.ct_config import build_quantization_config
    from llmpack.testing import tiny_model

    src = tiny_model("llama")
    q = Int8Linear.from_float(src.model.layers[0].mlp.up_proj)
    keys = {"model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight_scale"}
    with torch.device("meta"):
        meta = type(src)(src.config)
    names = swap_quantized_modules(meta, build_quantization_config("int8-weight-only"), keys)
    assert names == ["model.layers.0.mlp.up_proj"]
    mod = meta.model.layers[0].mlp.up_proj
    assert isinstance(mod, Int8Linear) and not mod.act_quant and mod.weight.device.type == "meta"
    meta.model.layers[0].mlp.up_proj.load_state_dict(q.state_dict(), assign=True)
    assert torch.equal(mod.weight, q.weight)


def test_swap_refuses_non_linear_module() -> None:
    from llmpack.errors import ConfigError
    from llmpack.testing import tiny_model

    m = tiny_model("llama")
    with pytest.raises(ConfigError, match="model.norm"):
        swap_quantized_modules(m, None, {"model.norm.weight_scale"}, device="cpu")


@pytest.mark.skipif(not M._onednn_available(), reason="no oneDNN int8 matmul in this PyTorch")
def test_onednn_kernel_equals_its_7bit_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused AVX2 path (x * 64/amax + 64.5, truncating u8 cast) gives the [-64, 64] quantized values."""
    monkeypatch.setenv(M.ENV_KERNEL, "onednn")
    M.cpu_int8_kernel.cache_clear()
    try:
        torch.manual_seed(1)
        lin = nn.Linear(96, 40)
        q = Int8Linear.from_float(lin)
        x = torch.randn(2, 9, 96) * torch.logspace(-2, 2, 9).reshape(1, 9, 1)  # tokens of very different size
        y = q(x)
    finally:
        M.cpu_int8_kernel.cache_clear()
    x2 = x.reshape(-1, 96)
    a = x2.abs().amax(dim=1, keepdim=True) / 64
    xq = torch.round(x2 / a)  # ties (measure zero for random data) may differ by one step; none here
    assert xq.abs().max() <= 64
    ref = (xq @ q.weight.float().t()) * a * q.weight_scale.reshape(1, -1) + lin.bias
    torch.testing.assert_close(y.reshape(-1, 40), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(not M._onednn_available(), reason="no oneDNN int8 matmul in this PyTorch")
def test_onednn_custom_op_matches_eager_kernel() -> None:
    """The llmpack::onednn_qlinear op (what torch.compile sees) computes what eager calls directly."""
    torch.manual_seed(2)
    q = Int8Linear.from_float(nn.Linear(32, 24))
    cache: dict = {"scale_row": q.weight_scale.float().reshape(1, -1)}
    M._onednn_pack(q, cache)
    xu8 = torch.randint(0, 129, (5, 32), dtype=torch.uint8)
    got = torch.ops.llmpack.onednn_qlinear(xu8, *cache["onednn_args"])
    ref = ((xu8.float() - 64) @ q.weight.float().t()) * q.weight_scale.reshape(1, -1)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


def test_prepare_int8_builds_caches() -> None:
    q = Int8Linear.from_float(nn.Linear(16, 8))
    model = M.prepare_int8(nn.Sequential(q, nn.ReLU()))
    assert q._cache and "scale_row" in q._cache
    x = torch.randn(3, 16)
    assert sqnr_db(model[0].to_float()(x), q(x)) > 25


@pytest.mark.slow
def test_compile_int8_matches_eager() -> None:
    """torch.compile of Int8Linear (all kernels' quantization + the opaque oneDNN op) = eager."""
    torch.manual_seed(3)
    q = Int8Linear.from_float(nn.Linear(48, 24))
    model = nn.Sequential(q, nn.GELU())
    x = torch.randn(6, 48)
    with torch.inference_mode():
        eager = model(x)
        compiled = M.compile_int8(model)(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_quantized_under_inference_mode_runs() -> None:
    """Modules built inside torch.inference_mode hold inference tensors (no version counter)."""
    with torch.inference_mode():
        q = Int8Linear.from_float(nn.Linear(16, 8))
        w16 = Int8Linear.from_float(nn.Linear(16, 8), act_quant=False)
        x = torch.randn(3, 16)
        assert q(x).shape == (3, 8) and w16(x).shape == (3, 8)
