"""Int8Linear / Int8Embedding / swap_quantized_modules against float references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llmpack.errors import ConfigError
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
    """The AVX2 path quantizes each token around its centre: round((x - c) * 64 / h) in [-64, 64] with
    c = (max + min) / 2, h = (max - min) / 2; the centre comes back as c * sum_k W[n, k]."""
    monkeypatch.setenv(M.ENV_KERNEL, "onednn")
    monkeypatch.setattr(M, "FBGEMM_MAX_TOKENS", 0)  # oneDNN at every size
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
    hi, lo = x2.amax(dim=1, keepdim=True), x2.amin(dim=1, keepdim=True)
    c, a = (hi + lo) / 2, (hi - lo) / 2 / 64
    xq = torch.round((x2 - c) / a)  # ties (measure zero for random data) may differ by one step; none here
    assert xq.abs().max() <= 64
    deq = q.weight.float() * q.weight_scale.reshape(-1, 1)
    ref = (xq @ deq.t()) * a + c * deq.sum(1) + lin.bias
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
def test_compile_int8_matches_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile of Int8Linear (all kernels' quantization + the opaque oneDNN op) = eager."""
    monkeypatch.setattr(M, "FBGEMM_MAX_TOKENS", 0)  # compiled code runs oneDNN at every size; so does eager here
    torch.manual_seed(3)
    q = Int8Linear.from_float(nn.Linear(48, 24))
    model = M.prepare_int8(nn.Sequential(q, nn.GELU()))  # (an unnamed role: 8-bit tokens on native AVX2)
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


def _use_avx2_kernel(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    if not M._onednn_available():
        pytest.fail("this PyTorch has no oneDNN int8 matmul (x86 CPU builds do)")
    monkeypatch.setenv(M.ENV_KERNEL, "onednn")
    M.cpu_int8_kernel.cache_clear()
    if native:
        if M._native_ops() is None:
            from llmpack.runtime.native import native_status

            pytest.fail(f"llmpack's native AVX2 kernels are unavailable: {native_status()}")
    else:
        monkeypatch.setattr(M, "_native_ops", lambda: None)


@pytest.fixture(params=["native", "pytorch"])
def onednn(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The AVX2 kernel, through llmpack's native kernels and through the PyTorch fallback (oneDNN/FBGEMM)."""
    _use_avx2_kernel(monkeypatch, request.param == "native")
    yield request.param
    M.cpu_int8_kernel.cache_clear()


@pytest.fixture
def onednn_pytorch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AVX2 kernel's PyTorch fallback only (what runs where the native kernels cannot be built)."""
    _use_avx2_kernel(monkeypatch, False)
    yield
    M.cpu_int8_kernel.cache_clear()


def _int8_llama() -> nn.Module:
    import llmpack
    from llmpack.testing import tiny_model

    return llmpack.quantize(tiny_model("llama"), "int8", quiet=True).model


def _groups(model: nn.Module) -> dict[str, object]:
    return {n: m._group for n, m in M.iter_int8_linears(model)}


def test_siblings_share_input_quantization_with_identical_results(onednn: str) -> None:
    """q/k/v and gate/up quantize their input once on the AVX2 kernels; logits equal the separate layers'."""
    model = _int8_llama()
    groups = _groups(model)
    grouped = sorted(n.rsplit(".", 1)[1] for n, g in groups.items() if g is not None)
    layers = len(model.model.layers)
    assert grouped == sorted(["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"] * layers)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj._group is attn.v_proj._group is not model.model.layers[0].mlp.up_proj._group
    assert attn.o_proj._group is None  # its input is not q/k/v's
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    assert ids.numel() > M.FBGEMM_MAX_TOKENS  # long input: members' own oneDNN matmuls, one quantization
    with torch.inference_mode():
        fused = model(input_ids=ids, use_cache=False).logits
        assert all(g is None or g._state is None for g in groups.values())  # nothing held after the forward
        short = model(input_ids=ids[:, :3], use_cache=False).logits  # few tokens: one FBGEMM matmul per group
        for _, m in M.iter_int8_linears(model):
            m._group = None
        alone = model(input_ids=ids, use_cache=False).logits
        short_alone = model(input_ids=ids[:, :3], use_cache=False).logits
    assert torch.equal(fused, alone)
    torch.testing.assert_close(short, short_alone, rtol=1e-5, atol=1e-5)


def test_sibling_group_follows_weight_changes_and_input_edits(onednn: str) -> None:
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


@pytest.mark.parametrize("tokens", [1, 7, 100])  # FBGEMM (few tokens) and oneDNN
def test_tied_int8_head_avx2_is_the_dequantized_product(onednn: str, tokens: int) -> None:
    """The AVX2 head splits activations in two 7-bit terms: ~13 bits, the weight-only result."""
    torch.manual_seed(5)
    emb = nn.Embedding(300, 48)
    q = Int8Embedding.from_float(emb)
    head = TiedInt8Head(q).prepare()
    assert (head._avx2 if onednn == "native" else head._onednn_args) is not None
    x = torch.randn(2, tokens, 48) * torch.logspace(-3, 1, tokens).reshape(1, tokens, 1)
    deq = (q.weight.float() * q.weight_scale.float()).t()
    got = head(x)
    for t in range(tokens):  # every token, whatever its magnitude
        assert sqnr_db(x[:, t] @ deq, got[:, t]) > 65
    assert sqnr_db(x @ emb.weight.t(), got) > 35
    fbgemm = onednn == "pytorch" and M._fbgemm_available() and 2 * tokens <= M.FBGEMM_MAX_TOKENS
    assert (head._fbgemm is not None) == fbgemm


@pytest.mark.parametrize("tokens", [3, 100])  # FBGEMM (pytorch fallback, few tokens) and oneDNN / native
def test_one_sided_tokens_keep_their_resolution(onednn: str, tokens: int) -> None:
    """Centred 7-bit tokens: a one-sided input (GELU output, a large offset) is quantized over its own
    [min, max], not over [-absmax, absmax]: the error is that of a symmetric input of the same spread."""
    torch.manual_seed(9)
    lin = nn.Linear(128, 48)
    q = Int8Linear.from_float(lin)
    deq = q.to_float()
    z = torch.randn(tokens, 128)
    errs = {}
    for name, x in {"symmetric": z, "gelu": F.gelu(z * 3), "offset": z + 40.0}.items():
        ref, got = deq(x), q(x)
        errs[name] = sqnr_db(ref - ref.mean(1, keepdim=True), got - ref.mean(1, keepdim=True))
    assert errs["symmetric"] > 30
    # the offset token's spread equals the symmetric one's: the same resolution of its variation
    assert errs["offset"] > errs["symmetric"] - 3
    assert errs["gelu"] > 30


def test_act_bits_env_selects_eight_bit_tokens(onednn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """LLMPACK_AVX2_ACT_BITS=8: the native kernels quantize tokens to 255 levels (the PyTorch fallback keeps
    7 bits); any other value is refused with the variable's name."""
    torch.manual_seed(12)
    lin = nn.Linear(256, 64)
    q = Int8Linear.from_float(lin)
    ref = q.to_float()
    x = torch.randn(100, 256)
    errs = {}
    try:
        for bits in ("7", "8"):
            monkeypatch.setenv(M.ENV_ACT_BITS, bits)
            M.avx2_act_bits.cache_clear()
            errs[bits] = sqnr_db(ref(x), q(x))
        monkeypatch.setenv(M.ENV_ACT_BITS, "9")  # neither 7, 8 nor auto
        M.avx2_act_bits.cache_clear()
        with pytest.raises(ConfigError, match=M.ENV_ACT_BITS):
            M.avx2_act_bits()
    finally:
        M.avx2_act_bits.cache_clear()
    if onednn == "native":
        assert errs["8"] > errs["7"] + 4
    else:
        assert abs(errs["8"] - errs["7"]) < 1e-9


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_auto_act_bits_by_layer_role(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare_int8: layers reading a norm's output (q/k/v, gate/up, c_attn, c_fc) and attention outputs keep
    7-bit tokens, MLP outputs get 8; the environment overrides both."""
    import llmpack
    from llmpack.testing import tiny_model

    monkeypatch.delenv(M.ENV_ACT_BITS, raising=False)
    M.avx2_act_bits.cache_clear()
    with pytest.warns(UserWarning, match="no calibration"):
        model = llmpack.quantize(tiny_model(kind), "int8", quiet=True).model
    bits = {name.rsplit(".", 1)[-1] if "mlp" not in name else "mlp." + name.rsplit(".", 1)[-1]: mod._act_bits()
            for name, mod in M.iter_int8_linears(model)}
    if kind == "llama":
        assert bits == {"q_proj": 7, "k_proj": 7, "v_proj": 7, "o_proj": 7, "mlp.gate_proj": 7, "mlp.up_proj": 7,
                        "mlp.down_proj": 8}
    else:
        assert bits == {"c_attn": 7, "c_proj": 7, "mlp.c_fc": 7, "mlp.c_proj": 8}
    try:
        for forced in ("7", "8"):
            monkeypatch.setenv(M.ENV_ACT_BITS, forced)
            M.avx2_act_bits.cache_clear()
            assert {m._act_bits() for _, m in M.iter_int8_linears(model)} == {int(forced)}
    finally:
        M.avx2_act_bits.cache_clear()


def test_short_inputs_run_fbgemm_per_token(onednn_pytorch: None) -> None:
    """Up to FBGEMM_MAX_TOKENS tokens the AVX2 kernel calls FBGEMM on absmax-normalised tokens: its
    per-tensor 7-bit range is then each token's own (tokens of very different size all keep their bits)."""
    if not M._fbgemm_available():  # PyTorch without the quantized ops: oneDNN serves every size
        assert not M._small_batch(1)
        return
    torch.manual_seed(6)
    lin = nn.Linear(96, 40)
    q = Int8Linear.from_float(lin)
    x = torch.randn(9, 96) * torch.logspace(-3, 2, 9).reshape(9, 1)
    y = q(x)
    assert "fbgemm" in q._cache and "onednn_args" not in q._cache
    deq = q.weight.float() * q.weight_scale.float()
    for t in range(9):
        ref = x[t:t + 1] @ deq.t() + lin.bias
        assert sqnr_db(ref, y[t:t + 1]) > 30, t  # 7-bit activations per token
    big = q(torch.randn(M.FBGEMM_MAX_TOKENS + 1, 96))  # longer inputs: oneDNN
    assert "onednn_args" in q._cache and big.shape == (M.FBGEMM_MAX_TOKENS + 1, 40)


@pytest.mark.parametrize("tokens", [1, 5, 100])  # FBGEMM two-term (few tokens) and the float path
def test_w8a16_avx2_is_the_weight_only_product(onednn: str, tokens: int) -> None:
    torch.manual_seed(8)
    lin = nn.Linear(80, 56)
    q = Int8Linear.from_float(lin, act_quant=False)
    x = torch.randn(tokens, 80) * torch.logspace(-3, 1, tokens).reshape(tokens, 1)
    got = q(x)
    deq = q.weight.float() * q.weight_scale.float()
    for t in range(tokens):
        assert sqnr_db(x[t:t + 1] @ deq.t() + lin.bias, got[t:t + 1]) > 65
    assert ("fbgemm" in q._cache) == (onednn == "pytorch" and M._fbgemm_available() and tokens <= M.FBGEMM_MAX_TOKENS)
    # native two-term for few tokens; long inputs of weight-only layers keep exact float activations
    assert ("avx2" in q._cache) == (onednn == "native" and tokens <= M.FBGEMM_MAX_TOKENS)


@pytest.mark.parametrize("name, bits", [
    ("model.layers.3.mlp.down_proj", 8), ("model.layers.3.self_attn.o_proj", 7), ("model.layers.3.mlp.gate_proj", 7),
    ("transformer.h.1.mlp.c_proj", 8), ("transformer.h.1.attn.c_proj", 7), ("model.decoder.layers.0.fc2", 8),
    ("gpt_neox.layers.0.attention.dense", 7), ("gpt_neox.layers.0.mlp.dense_4h_to_h", 8),
    ("bert.encoder.layer.0.attention.output.dense", 7), ("bert.encoder.layer.0.output.dense", 8),
    ("model.layers.0.block_sparse_moe.experts.1.w2", 8), ("custom.mystery", 8),
])
def test_act_bits_for_roles(name: str, bits: int) -> None:
    """8-bit tokens for MLP outputs and unknown roles, 7 for attention/MLP inputs and attention outputs."""
    assert M.act_bits_for(name) == bits
