"""llmpack.runtime.native: the compiled AVX2 kernels against exact references, and their fallbacks."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

from llmpack.runtime import modules as M
from llmpack.runtime import native

X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture
def ops() -> object:
    """The native ops; on an x86 machine with AVX2 (CI's kind) they must build."""
    if not X86 or not M._onednn_available():
        pytest.skip("the native helper serves x86 CPUs with oneDNN (not this machine)")
    got = M._native_ops()
    if got is None:
        pytest.fail(f"native helper unavailable: {native.native_status()}")
    return got


@pytest.fixture
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the process's build result (restored afterwards)."""
    monkeypatch.setattr(native, "_state", {})
    M._native_ops.cache_clear()
    yield
    M._native_ops.cache_clear()


def _weight(k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    return w, torch.rand(n, generator=g) / 50 + 1e-4, torch.randn(n, generator=g)


SHAPES = [(1, 64, 32), (3, 13, 5), (17, 45, 24), (128, 576, 192), (9, 100, 70), (64, 768, 40), (300, 37, 33)]


@pytest.mark.parametrize("bits", [7, 8])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_w8a8_is_the_exact_integer_product(ops: object, m: int, k: int, n: int, bits: int) -> None:
    """Every shape class: K and N not multiples of 4/16, one token, more tokens than a block (256); 7- and
    8-bit tokens."""
    g = torch.Generator().manual_seed(m * 1000 + k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m).reshape(m, 1)  # tokens of very different size
    x[0, k // 2] = 0.5
    if m > 2:
        x[1] = 0.0  # an all-zero token: scale clamps to eps, output is the bias
    w1, s1, b1 = _weight(k, n, 1)
    w2, s2, _ = _weight(k, n + 3, 2)
    p1, p2 = M._avx2_pack(ops, w1, s1), M._avx2_pack(ops, w2, s2)
    got = ops.w8a8(x, [p1[0], p2[0]], [p1[1], p2[1]], [p1[2], p2[2]], [b1, None], bits)
    for y, (w, s, b) in zip(got, [(w1, s1, b1), (w2, s2, None)]):
        want = M.w8a8_reference(x, w, s, b, bits)
        assert y.shape == want.shape and y.dtype == torch.float32
        # integer accumulation is exact; only the float epilogue rounds (a few ulp)
        torch.testing.assert_close(y.double(), want, rtol=2e-6, atol=1e-6 * want.abs().max().item())


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_w8a16_is_the_weight_only_product(ops: object, m: int, k: int, n: int) -> None:
    """Two 7-bit terms per token: the float product up to ~13 bits of the activations."""
    from llmpack.quant.int8 import sqnr_db

    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)) * 4
    w, s, b = _weight(k, n, 3)
    got = ops.w8a16(x, *M._avx2_pack(ops, w, s), b)
    exact = x.double() @ (w.double() * s.double().reshape(-1, 1)).t() + b.double()
    assert got.shape == (m, n) and sqnr_db(exact, got.double()) > 65


def test_eight_bit_tokens_halve_the_error(ops: object) -> None:
    """8-bit tokens (|w| x sign-moved q through vpmaddubsw): extreme int8 weights (-128, 127) and tokens
    at full scale stay exact, and the error against the float product is ~6 dB below 7-bit's."""
    from llmpack.quant.int8 import sqnr_db

    g = torch.Generator().manual_seed(11)
    w = torch.randint(-128, 128, (48, 256), dtype=torch.int8, generator=g)
    w[0], w[1] = -128, 127  # every pair at the int16 limit: 2 * 128 * 127
    s = torch.rand(48, generator=g) / 50 + 1e-3
    x = torch.randn(20, 256, generator=g)
    x[0] = torch.where(torch.arange(256) % 2 == 0, 1.0, -1.0)  # q = +-127 everywhere
    p = M._avx2_pack(ops, w, s)
    exact = x.double() @ (w.double() * s.double().reshape(-1, 1)).t()
    y7, y8 = (ops.w8a8(x, [p[0]], [p[1]], [p[2]], [None], bits)[0] for bits in (7, 8))
    torch.testing.assert_close(y8.double(), M.w8a8_reference(x, w, s, None, 8), rtol=2e-6, atol=1e-6 * exact.abs().max().item())
    assert sqnr_db(exact, y8.double()) > sqnr_db(exact, y7.double()) + 4
    with pytest.raises(RuntimeError, match="act_bits must be 7 or 8"):
        ops.w8a8(x, [p[0]], [p[1]], [p[2]], [None], 6)


def test_nan_token_gives_nan_output_others_unchanged(ops: object) -> None:
    x = torch.randn(4, 40)
    x[2, 7] = float("nan")
    w, s, b = _weight(40, 16, 3)
    p = M._avx2_pack(ops, w, s)
    got = ops.w8a8(x, [p[0]], [p[1]], [p[2]], [b])[0]
    assert torch.isnan(got[2]).all()
    rows = [0, 1, 3]
    assert torch.equal(got[rows], ops.w8a8(x[rows].contiguous(), [p[0]], [p[1]], [p[2]], [b])[0])


def test_bad_arguments_are_refused(ops: object) -> None:
    w, s, b = _weight(8, 4, 4)
    p = M._avx2_pack(ops, w, s)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        ops.w8a8(torch.randn(3, 8, dtype=torch.float64), [p[0]], [p[1]], [p[2]], [b])
    with pytest.raises(RuntimeError, match="bias"):
        ops.w8a8(torch.randn(3, 8), [p[0]], [p[1]], [p[2]], [torch.randn(5)])
    with pytest.raises(RuntimeError, match="does not match the input size"):
        ops.w8a8(torch.randn(3, 12), [p[0]], [p[1]], [p[2]], [b])
    with pytest.raises(RuntimeError, match="int8 CPU matrix"):
        ops.pack(torch.zeros(4, 8))


def test_pack_sums_rows_exactly(ops: object) -> None:
    w = torch.full((3, 1000), -128, dtype=torch.int8)
    w[1] = 127
    w[2, ::2] = 5
    panels, corr = ops.pack(w)
    assert corr.dtype == torch.int32 and corr.tolist() == (64 * w.sum(1, dtype=torch.int64)).tolist()
    assert panels.numel() == 16 * 1000


def test_model_outputs_match_the_pytorch_path(ops: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quantized tied Llama (sibling groups, W8A16 layers and the tied int8 head included) gives the
    PyTorch path's logits with the native kernels, up to float rounding; every native op is used."""
    import llmpack
    from llmpack.quant.int8 import sqnr_db
    from llmpack.testing import tiny_model

    monkeypatch.setenv(M.ENV_KERNEL, "onednn")
    monkeypatch.setenv(M.ENV_ACT_BITS, "7")  # the PyTorch path's width on every layer
    monkeypatch.setattr(M, "FBGEMM_MAX_TOKENS", 0)  # the PyTorch path: oneDNN at every size
    M.cpu_int8_kernel.cache_clear()
    M.avx2_act_bits.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no calibration"):
            model = llmpack.quantize(tiny_model("llama"), "int8", quiet=True, quantize_embeddings=True).model
        for name, mod in M.iter_int8_linears(model):
            if name.endswith("down_proj"):
                mod.act_quant = False  # weight-only layers too
        ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(5))
        with torch.inference_mode():
            with torch.profiler.profile() as prof:
                fast = model(ids).logits
            monkeypatch.setattr(M, "_native_ops", lambda: None)
            slow = model(ids).logits
    finally:
        M.cpu_int8_kernel.cache_clear()
        M.avx2_act_bits.cache_clear()
    calls = {e.key: e.count for e in prof.key_averages() if e.key.startswith("llmpack_avx2::")}
    layers = len(model.model.layers)
    # per layer: q/k/v one call, gate/up one call, o_proj, two norms, the SwiGLU gate; the tied head weight-only
    # (the weight-only down_proj layers take the float path for inputs longer than FBGEMM_MAX_TOKENS, 0 here)
    assert calls == {"llmpack_avx2::w8a8": 3 * layers, "llmpack_avx2::w8a16": 1, "llmpack_avx2::silu_mul": layers,
                     "llmpack_avx2::rms_norm": 2 * layers + 1}  # the fused float modules (llmpack.runtime.fused)
    assert any(isinstance(m, M.TiedInt8Head) for m in model.modules())
    assert sqnr_db(slow, fast) > 45


def test_env_turns_it_off(fresh_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_NATIVE, "0")
    assert native.avx2_ops() is None
    assert native.native_status() == f"off ({native.ENV_NATIVE}=0)"
    assert M._native_ops() is None


def test_build_failure_warns_once_and_falls_back(fresh_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no AVX2: the build is never attempted here")
    monkeypatch.delenv(native.ENV_NATIVE, raising=False)

    def broken() -> None:
        raise RuntimeError("Error building extension 'x'\nlong compiler output")

    monkeypatch.setattr(native, "_build", broken)
    with pytest.warns(RuntimeWarning, match=r"could not be built \(Error building extension 'x'\)"):
        assert native.avx2_ops() is None
    assert native.native_status() == "not built: Error building extension 'x'"
    assert native.avx2_ops() is None  # remembered: no second warning, no second build
    lin = M.Int8Linear.from_float(nn.Linear(16, 8))
    assert lin(torch.randn(3, 16)).shape == (3, 8)  # the PyTorch path serves


def test_missing_compiler_is_named(fresh_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no AVX2: the build is never attempted here")
    monkeypatch.delenv(native.ENV_NATIVE, raising=False)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        assert native.avx2_ops() is None
    assert "no-such-compiler-xyz" in native.native_status()


def test_kernels_that_fail_their_self_check_are_not_used(ops: object, fresh_state: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Built kernels whose result differs from the exact reference (a miscompiling toolchain) are set
    aside with a warning; the PyTorch path serves the layers."""
    monkeypatch.delenv(native.ENV_NATIVE, raising=False)
    real = M.w8a8_reference
    monkeypatch.setattr(M, "w8a8_reference", lambda *a, **k: real(*a, **k) + 1.0)
    with pytest.warns(RuntimeWarning, match="wrong results"):
        assert M._native_ops() is None
    assert native.native_status() == "not used: wrong results on this machine"
