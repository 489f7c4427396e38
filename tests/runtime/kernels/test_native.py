"""llmpack.runtime.kernels.native: the compiled AVX2 kernels against exact references, and their fallbacks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmpack.quant.int8 import quantize_per_token
from llmpack.runtime.kernels import native, reference
from llmpack.runtime.linear import Int8Linear


@pytest.fixture
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the process's build result (restored afterwards)."""
    monkeypatch.setattr(native, "_state", {})


def _weight(k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
    return w, torch.rand(n, generator=g) / 50 + 1e-4, torch.randn(n, generator=g)


SHAPES = [(1, 64, 32), (3, 13, 5), (17, 45, 24), (128, 576, 192), (9, 100, 70), (64, 768, 40), (300, 37, 33)]


@pytest.mark.parametrize("bits", [7, 8])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_w8a8_is_the_exact_integer_product(ops: object, m: int, k: int, n: int, bits: int) -> None:
    """Every shape class: K and N not multiples of 4/16, one token, more tokens than a block (256); both widths;
    tokens whose absmax is negative (-128 after rounding), tokens of very different size, an all-zero token."""
    g = torch.Generator().manual_seed(m * 1000 + k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m).reshape(m, 1)
    x[0, k // 2] = -40.0 * x[0].abs().max()  # the absmax element negative: q = -128 in the file's semantics
    if m > 2:
        x[1] = 0.0  # scale clamps to eps, output is the bias
    w1, s1, b1 = _weight(k, n, 1)
    w2, s2, _ = _weight(k, n + 3, 2)
    (p1, c1), (p2, c2) = native.pack(ops, w1), native.pack(ops, w2)
    got = ops.w8a8(x, [p1, p2], [c1, c2], [s1, s2], [b1, None], bits)
    for y, (w, s, b) in zip(got, [(w1, s1, b1), (w2, s2, None)]):
        want = reference.w8a8_exact(x, w, s, b, bits)
        assert y.shape == want.shape and y.dtype == torch.float32
        # integer accumulation is exact; only the float epilogue rounds (a few ulp)
        torch.testing.assert_close(y.double(), want, rtol=2e-6, atol=1e-6 * want.abs().max().item())


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_vnni_is_the_exact_integer_product(ops: object, m: int, k: int, n: int) -> None:
    """The AVX512-VNNI kernel: the file's 8-bit tokens times every int8 weight (-128 included), exactly."""
    if not native.has_vnni():
        pytest.skip("no AVX512-VNNI on this CPU (the AVX2 kernels are tested above)")
    g = torch.Generator().manual_seed(m + k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m).reshape(m, 1)
    x[0, k // 2] = -40.0 * x[0].abs().max()
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    s, b = torch.rand(n, generator=g) / 50 + 1e-4, torch.randn(n, generator=g)
    p, c = native.pack(ops, w)
    y = ops.w8a8_vnni(x, [p], [c], [s], [b])[0]
    want = reference.w8a8_exact(x, w, s, b, 8)
    torch.testing.assert_close(y.double(), want, rtol=2e-6, atol=1e-6 * want.abs().max().item())


def test_eight_bit_tokens_are_the_files_quantization(ops: object) -> None:
    """The 8-bit kernel quantizes exactly as compressed-tensors does (absmax / 127.5, round half even, clamp to
    [-128, 127]): against a weight that is the identity, the output is the dequantized token."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 48, generator=g) * 3
    x[2, 5] = -x[2].abs().max() * 2  # -> -128
    x[3, 9] = x[3].abs().max() * 2  # -> 127 (127.5 rounds to 128, clamped)
    eye = torch.eye(48, dtype=torch.int8)
    p, c = native.pack(ops, eye)
    got = ops.w8a8(x, [p], [c], [torch.ones(48)], [None], 8)[0]
    q, s = quantize_per_token(x)
    assert q[2, 5] == -128 and q[3, 9] == 127
    torch.testing.assert_close(got, q.float() * s, rtol=0, atol=0)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("k,n", [(64, 32), (13, 5), (576, 1536), (100, 70), (200, 33)])
@pytest.mark.parametrize("wide", [True, False])  # AVX512 rows where the CPU has them / the AVX2 rows
def test_w8a16_is_the_weight_only_product(ops: object, m: int, k: int, n: int, wide: bool) -> None:
    """Float activations times the int8 weight read as it is: the weight-only product up to float rounding
    (k = 13, 100, 200: the tails of the 8-, 16- and 64-wide loops)."""
    w, s, b = _weight(k, n, 5)
    x = torch.randn(m, k) * torch.logspace(-4, 2, m).reshape(m, 1)
    got = ops.w8a16(x, w, s, b, wide)
    want = x.double() @ (w.double() * s.double().reshape(-1, 1)).t() + b.double()
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    yf = ops.few_token_linear(x, (w.float() * s.reshape(-1, 1)).contiguous(), wide)
    torch.testing.assert_close(yf.double(), want - b.double(), rtol=1e-5, atol=1e-5 * want.abs().max().item())
    with pytest.raises(RuntimeError, match="1 to 8 tokens"):
        ops.w8a16(torch.randn(9, k), w, s, b)


def test_nan_token_gives_nan_output_others_unchanged(ops: object) -> None:
    x = torch.randn(4, 40)
    x[2, 7] = float("nan")
    w, s, b = _weight(40, 16, 3)
    p, c = native.pack(ops, w)
    for bits in (7, 8):
        got = ops.w8a8(x, [p], [c], [s], [b], bits)[0]
        assert torch.isnan(got[2]).all()
        rows = [0, 1, 3]
        assert torch.equal(got[rows], ops.w8a8(x[rows].contiguous(), [p], [c], [s], [b], bits)[0])


def test_bad_arguments_are_refused(ops: object) -> None:
    w, s, b = _weight(8, 4, 4)
    p, c = native.pack(ops, w)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        ops.w8a8(torch.randn(3, 8, dtype=torch.float64), [p], [c], [s], [b])
    with pytest.raises(RuntimeError, match="bias"):
        ops.w8a8(torch.randn(3, 8), [p], [c], [s], [torch.randn(5)])
    with pytest.raises(RuntimeError, match="does not match the input size"):
        ops.w8a8(torch.randn(3, 12), [p], [c], [s], [b])
    with pytest.raises(RuntimeError, match="act_bits must be 7 or 8"):
        ops.w8a8(torch.randn(3, 8), [p], [c], [s], [b], 6)
    with pytest.raises(RuntimeError, match="int8 CPU matrix"):
        ops.pack(torch.zeros(4, 8))
    with pytest.raises(RuntimeError, match="int8 CPU matrix"):
        ops.w8a16(torch.randn(2, 8), w.float(), s, b)


def test_pack_sums_rows_exactly(ops: object) -> None:
    w = torch.full((3, 1000), -127, dtype=torch.int8)
    w[1] = 127
    w[2, ::2] = 5
    panels, corr = ops.pack(w)
    assert corr.dtype == torch.int32 and corr.tolist() == (64 * w.sum(1, dtype=torch.int64)).tolist()
    assert panels.numel() == 16 * 1000


def test_weights_of_minus_128_run_the_reference(ops: object, force) -> None:
    """Files from other tools may hold -128 weights, which the 8-bit kernel's sign trick cannot negate: those
    layers run the reference arithmetic, so the result is still the file's."""
    from llmpack.runtime import kernels

    force("avx2")
    w, s, b = _weight(40, 24, 6)
    w[3, 4] = -128
    p = kernels.PackedWeight(w, s, b)
    x = torch.randn(5, 40)
    x[1, 4] = -x[1].abs().max() * 3  # q = -128 meets w = -128
    got = kernels.w8a8(x, [p], "avx2")[0]
    assert p.full_range() and p._native is None
    torch.testing.assert_close(got.double(), reference.w8a8_exact(x, w, s, b, 8), rtol=1e-5, atol=1e-5)


def test_forced_reference_kernel_never_builds(fresh_state: None, force) -> None:
    force("dequant")
    assert native.avx2_ops() is None
    assert native.native_status() == "off (LLMPACK_INT8_KERNEL=dequant)"
    assert native.checked_ops() is None


def test_build_failure_warns_once_and_falls_back(fresh_state: None, force, monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no AVX2: the build is never attempted here")
    force("avx2")

    def broken() -> None:
        raise RuntimeError("Error building extension 'x'\nlong compiler output")

    monkeypatch.setattr(native, "_build", broken)
    with pytest.warns(RuntimeWarning, match=r"could not be built \(Error building extension 'x'\)"):
        assert native.avx2_ops() is None
    assert native.native_status() == "not built: Error building extension 'x'"
    assert native.avx2_ops() is None  # remembered: no second warning, no second build
    lin = Int8Linear.from_float(nn.Linear(16, 8))
    x = torch.randn(3, 16)
    torch.testing.assert_close(lin(x), reference.dequant_w8a8(x, lin.weight, lin.weight_scale.reshape(1, -1),
                                                              lin.bias.detach()))  # the reference serves


def test_missing_compiler_is_named(fresh_state: None, force, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no AVX2: the build is never attempted here")
    force("avx2")
    monkeypatch.setenv("LLMPACK_CACHE", str(tmp_path))  # nothing prebuilt there (a prebuilt library needs no compiler)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        assert native.avx2_ops() is None
    assert "no-such-compiler-xyz" in native.native_status()


def test_kernels_that_fail_their_self_check_are_not_used(ops: object, fresh_state: None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Built kernels whose result differs from the exact reference (a miscompiling toolchain) are set aside
    with a warning; the reference serves the layers."""
    real = reference.w8a8_exact
    monkeypatch.setattr(reference, "w8a8_exact", lambda *a, **k: real(*a, **k) + 1.0)
    with pytest.warns(RuntimeWarning, match="wrong results"):
        assert native.checked_ops() is None
    assert native.native_status() == "not used: wrong results on this machine"


@pytest.mark.parametrize("m,k,n", [(1, 64, 40), (9, 576, 33), (130, 128, 256)])
def test_int_mm_with_native_quantization_is_the_reference(ops: object, m: int, k: int, n: int) -> None:
    """The int_mm kernel with llmpack's one-pass quantization and rescale gives the reference's bits."""
    from llmpack.runtime.kernels import PackedWeight, w8a8

    w, s, b = _weight(k, n, 7)
    x = torch.randn(m, k) * torch.logspace(-3, 2, m).reshape(m, 1)
    x[0, 3] = 80.0  # a dominant value
    p = PackedWeight(w, s, b)
    want = reference.int_mm_w8a8(x, w, p.scale_row, p.bias)
    assert torch.equal(w8a8(x, [p], "int_mm")[0], want)
    q, tok = ops.quantize_rows(x)
    q_ref, tok_ref = quantize_per_token(x)
    assert torch.equal(q, q_ref) and torch.equal(tok, tok_ref.reshape(-1))
    with pytest.raises(RuntimeError, match="multiple of 4"):
        ops.quantize_rows(torch.randn(2, 6))
