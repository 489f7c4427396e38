"""The CUDA 8-bit layers' fused steps (per-token quantization, int8 rescale), checked on CPU: the compiled functions
give the op-by-op results (inductor's CPU backend compiles the same graphs here), a failing compilation is said once
and falls back, ``LLMPACK_CUDA_FUSE=0`` and an enclosing compilation never compile, and the int8 CUDA path
(padding, ``torch._int_mm``, rescale) is the reference arithmetic."""

from __future__ import annotations

import warnings
from typing import Any, Iterator

import pytest
import torch

from llmpack.quant.fp8 import quantize_per_token_fp8
from llmpack.quant.int8 import int8_per_channel, quantize_per_token
from llmpack.runtime.kernels import cuda, reference, select


@pytest.fixture
def on_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Let the fused steps compile for CPU inputs, starting from nothing compiled (restored afterwards)."""
    monkeypatch.setattr(cuda.Fused, "devices", ("cpu", "cuda"))
    for f in (cuda.per_token_fp8, cuda.per_token_int8, cuda.rescale):
        monkeypatch.setattr(f, "compiled", None)
        monkeypatch.setattr(f, "status", "not used")
    monkeypatch.delenv("LLMPACK_CUDA_FUSE", raising=False)
    yield


def _x(m: int, k: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * torch.logspace(-2, 1, m).reshape(m, 1)).to(dtype)


def test_fused_steps_compute_the_op_by_op_results(on_cpu: None) -> None:
    """Token counts 1 (specialised by dynamo), 5 and 40, two widths and two dtypes: the same FP8 / int8 tokens and
    scales bit for bit; the rescale to float rounding (one pass instead of two)."""
    for m, k, dtype in ((5, 64, torch.float32), (40, 96, torch.float32), (1, 64, torch.float32),
                        (7, 64, torch.bfloat16)):
        x = _x(m, k, m, dtype)
        q, s = cuda.per_token_fp8(x)
        q_ref, s_ref = quantize_per_token_fp8(x)
        assert q.dtype == torch.float8_e4m3fn and torch.equal(q.float(), q_ref.float()) and torch.equal(s, s_ref)
        qi, si = cuda.per_token_int8(x)
        qi_ref, si_ref = quantize_per_token(x)
        assert qi.shape[0] == max(m, cuda.INT_MM_MIN_ROWS) and not qi[m:].any()
        assert torch.equal(qi[:m], qi_ref) and torch.equal(si, si_ref)
    g = torch.Generator().manual_seed(1)
    y = torch.randint(-2**20, 2**20, (9, 40), dtype=torch.int32, generator=g)
    a, srow, b = torch.rand(9, 1, generator=g), torch.rand(1, 40, generator=g), torch.randn(40, generator=g)
    for bias in (None, b):
        for out_dtype in (torch.float32, torch.bfloat16):
            got = cuda.rescale(y, a, srow, bias, out_dtype)
            want = reference.rescale_int32(y, a, srow, bias, out_dtype)
            assert got.dtype == out_dtype
            torch.testing.assert_close(got.float(), want.float(), rtol=1e-6 if out_dtype == torch.float32 else 8e-3,
                                       atol=0)
    assert cuda.fusion_status() == {"fp8_tokens": "compiled", "int8_tokens": "compiled", "int8_rescale": "compiled"}


def test_a_failing_compilation_is_said_once_and_runs_op_by_op(on_cpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(fn: Any, **kw: Any) -> Any:
        def run(*a: Any) -> Any:
            calls.append(1)
            raise RuntimeError("Cannot find a working triton installation")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    select._warned.clear()
    x = _x(6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cuda.per_token_fp8(x)
        second = cuda.per_token_fp8(x)
    assert len(calls) == 1  # not retried
    said = [w for w in caught if "could not fuse" in str(w.message)]
    assert len(said) == 1 and "triton" in str(said[0].message) and "LLMPACK_CUDA_FUSE=0" in str(said[0].message)
    want = quantize_per_token_fp8(x)
    for got in (first, second):
        assert torch.equal(got[0].float(), want[0].float()) and torch.equal(got[1], want[1])
    assert cuda.fusion_status()["fp8_tokens"].startswith("failed: RuntimeError")


@pytest.mark.parametrize("why", ["env", "compiling", "cpu"])
def test_no_compilation_when_off_inside_a_compilation_or_off_cuda(monkeypatch: pytest.MonkeyPatch, why: str) -> None:
    def forbidden(*a: Any, **k: Any) -> Any:
        raise AssertionError("torch.compile called")

    monkeypatch.setattr(torch, "compile", forbidden)
    monkeypatch.setattr(cuda.per_token_int8, "compiled", None)
    monkeypatch.setattr(cuda.per_token_int8, "status", "not used")
    if why != "cpu":
        monkeypatch.setattr(cuda.Fused, "devices", ("cpu", "cuda"))
    if why == "env":
        monkeypatch.setenv("LLMPACK_CUDA_FUSE", "0")
    if why == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, s = cuda.per_token_int8(_x(3))
    assert torch.equal(q[:3], quantize_per_token(_x(3))[0]) and cuda.per_token_int8.status == "not used"


def test_inside_a_compiled_model_the_traced_formula_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Within an enclosing ``torch.compile`` the rescale is the formula without ``out=`` tensors (no graph break);
    the CUDA int8 path compiled whole (as in a compiled model) computes what it does op by op."""
    seen = []
    monkeypatch.setattr(cuda.rescale, "traced", lambda *a: seen.append(1) or cuda._rescale_traced(*a))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    y = torch.randint(-100, 100, (3, 4), dtype=torch.int32)
    got = cuda.rescale(y, torch.ones(3, 1), torch.full((1, 4), 0.5), None, torch.float32)
    assert seen and torch.equal(got, y.float() * 0.5)
    monkeypatch.undo()
    g = torch.Generator().manual_seed(3)
    w, s = int8_per_channel(torch.randn(48, 64, generator=g))
    b = torch.randn(48, generator=g)
    x = _x(5)

    def layer(x: torch.Tensor) -> torch.Tensor:
        return cuda.int_mm_w8a8(x, w, s.reshape(1, -1).float(), b, torch.float32)

    torch._dynamo.reset()
    got = torch.compile(layer, fullgraph=True)(x)
    torch.testing.assert_close(got, layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("m", [1, 16, 17, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_cuda_path_is_the_reference_arithmetic(m: int, bias: bool) -> None:
    """Padding below 17 rows, the exact int32 product and the rescale: the CPU reference's float32 numbers."""
    g = torch.Generator().manual_seed(m)
    w, s = int8_per_channel(torch.randn(48, 64, generator=g))
    b = torch.randn(48, generator=g) if bias else None
    x = _x(m, 64, m)
    got = cuda.int_mm_w8a8(x, w, s.reshape(1, -1).float(), b, torch.float32)
    want = reference.int_mm_w8a8(x, w, s.reshape(1, -1).float(), b)
    assert got.shape == (m, 48)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
