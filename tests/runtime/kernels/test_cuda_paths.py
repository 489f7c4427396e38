"""The CUDA paths' decisions and arithmetic, checked on CPU: which kernel an FP8 / int8 layer gets for a device,
compute capability and shape (pure functions), the one-time warnings, and the kernels' arithmetic (``_scaled_mm``
with row-wise scales and the int8 epilogue run on CPU too) against the reference semantics. ``device="cuda"``
without CUDA is one line and exit 2."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from llmpack.quant.fp8 import fp8_per_channel
from llmpack.quant.int8 import int8_per_channel, quantize_per_token, sqnr_db
from llmpack.runtime import kernels
from llmpack.runtime.kernels import reference, select
from llmpack.runtime.kernels.cuda import scaled_mm_fp8


@pytest.mark.parametrize("device,cap,shape,act,want", [
    ("cuda", (9, 0), (4096, 4096), True, "scaled_mm"),     # H100 / H200
    ("cuda", (8, 9), (2048, 8192), True, "scaled_mm"),     # Ada
    ("cuda", (10, 0), (64, 128), True, "scaled_mm"),       # Blackwell
    ("cuda", (8, 0), (4096, 4096), True, "dequant"),       # A100: no FP8 tensor cores
    ("cuda", (9, 0), (4096, 4100), True, "dequant"),       # out not a multiple of 16
    ("cuda", (9, 0), (24, 4096), True, "dequant"),         # in not a multiple of 16
    ("cuda", None, (4096, 4096), True, "dequant"),
    ("cpu", None, (4096, 4096), True, "dequant"),
    ("cpu", None, (4096, 4096), False, "weight_only"),
    ("cuda", (9, 0), (4096, 4096), False, "weight_only"),
])
def test_fp8_dispatch_is_a_pure_function(device: str, cap: tuple[int, int] | None, shape: tuple[int, int],
                                         act: bool, want: str) -> None:
    assert kernels.fp8_kernel_for(device, cap, shape[0], shape[1], act) == want


def test_int8_cuda_dispatch_and_reference_override() -> None:
    assert kernels.kernel_for("cuda", 4096, 4096) == "int_mm"
    assert kernels.kernel_for("cuda", 4096, 4100) == "dequant"
    with kernels.use("dequant"):
        assert kernels.kernel_for("cuda", 4096, 4096) == "dequant"
        assert kernels.fp8_kernel_for("cuda", (9, 0), 4096, 4096) == "dequant"


def test_fallback_reasons() -> None:
    assert "CPU" in select.fallback_reason("fp8", "cpu", None, "dequant")
    assert "8.0" in select.fallback_reason("fp8", "cuda", (8, 0), "dequant")
    assert "multiples of 16" in select.fallback_reason("fp8", "cuda", (9, 0), "dequant")
    assert "multiples of 8" in select.fallback_reason("int8", "cuda", (9, 0), "dequant")
    assert select.fallback_reason("int8", "cpu", None, "dequant") is None
    assert select.fallback_reason("fp8", "cuda", (9, 0), "scaled_mm") is None
    with kernels.use("dequant"):  # asked for: nothing to warn about
        assert select.fallback_reason("fp8", "cpu", None, "dequant") is None


def test_warn_once() -> None:
    select._warned.discard("test: once")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            select.warn_once("test: once")
    assert len(caught) == 1 and caught[0].category is RuntimeWarning


def _fp8_layer(out: int = 48, inp: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    q, s = fp8_per_channel(w)
    return q, s.reshape(1, -1).float(), torch.randn(out, generator=g)


def _cpu_scaled_mm_has_row_wise_scales() -> bool:
    """PyTorch's CPU ``_scaled_mm`` takes row-wise scales from 2.13 on (before: per-tensor only; CUDA has both)."""
    a = torch.ones(2, 16).to(torch.float8_e4m3fn)
    b = torch.ones(16, 16).to(torch.float8_e4m3fn)
    try:
        torch._scaled_mm(a, b.t(), scale_a=torch.ones(2, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
    except RuntimeError:
        return False
    return True


@pytest.mark.skipif(not _cpu_scaled_mm_has_row_wise_scales(),
                    reason=f"torch {torch.__version__}'s CPU _scaled_mm has per-tensor scales only (2.13 on: row-wise)")
@pytest.mark.parametrize("tokens", [1, 7, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaled_mm_fp8_agrees_with_the_reference(tokens: int, dtype: torch.dtype) -> None:
    """``torch._scaled_mm`` with row-wise scales (run here on CPU) computes compressed-tensors' FP8 arithmetic: the
    same FP8 tokens and weights, so only accumulation order and the bf16 output rounding differ."""
    q, s, b = _fp8_layer()
    x = (torch.randn(tokens, 64, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    ref = reference.dequant_fp8(x.float(), q, s, b)
    got = scaled_mm_fp8(x, q, s, b)
    assert got.dtype == dtype and got.shape == (tokens, 48)
    assert sqnr_db(ref, got.float()) > 40  # bf16 output rounding: ~50 dB
    assert torch.equal(kernels.fp8_linear(x, kernels.PackedWeight(q, s, b), "scaled_mm").float(), got.float())


def test_fp8_linear_falls_back_once_when_scaled_mm_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    q, s, b = _fp8_layer()
    pack = kernels.PackedWeight(q, s, b)
    x = torch.randn(3, 64)

    def boom(*a: object, **k: object) -> torch.Tensor:
        raise RuntimeError("CUDA error: no kernel image")

    monkeypatch.setattr(torch, "_scaled_mm", boom)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y1 = kernels.fp8_linear(x, pack, "scaled_mm")
        y2 = kernels.fp8_linear(x, pack, "scaled_mm")
    assert len([w for w in caught if "_scaled_mm failed" in str(w.message)]) == 1
    torch.testing.assert_close(y1, reference.dequant_fp8(x, q, s, b))
    torch.testing.assert_close(y1, y2)


def test_fp8_weight_only_kernel_runs_in_the_activation_dtype() -> None:
    q, s, b = _fp8_layer()
    x = torch.randn(5, 64).to(torch.bfloat16)
    y = kernels.fp8_linear(x, kernels.PackedWeight(q, s, b), "weight_only", act_quant=False)
    ref = reference.dequant_fp8(x.float(), q, s, b, act_quant=False)
    assert y.dtype == torch.bfloat16 and sqnr_db(ref, y.float()) > 35


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_epilogue_is_the_reference_rescale(bias: bool, out_dtype: torch.dtype) -> None:
    """The CUDA int8 path's epilogue (token scale fused into the int32 -> float conversion, then channel scale,
    bias and output dtype in one pass) equals the reference's three passes up to the output rounding."""
    g = torch.Generator().manual_seed(0)
    w, s = int8_per_channel(torch.randn(40, 64, generator=g))
    x = torch.randn(9, 64, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    xq, a = quantize_per_token(x)
    y = torch._int_mm(torch.nn.functional.pad(xq, (0, 0, 0, 8)), w.t())[:9]
    got = reference.rescale_int32(y, a, s.reshape(1, -1).float(), b, out_dtype)
    ref = reference.int_mm_w8a8(x, w, s.reshape(1, -1).float(), b)  # the CPU path: three passes, float32
    assert got.dtype == out_dtype
    torch.testing.assert_close(got.float(), ref, rtol=1e-2 if out_dtype != torch.float32 else 1e-6,
                               atol=1e-2 if out_dtype != torch.float32 else 1e-6)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_without_cuda_is_one_line_and_exit_2(tmp_path: Path) -> None:
    from llmpack.testing import tiny_model

    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    for argv in (["quantize", str(src), "--method", "fp8", "--out", str(tmp_path / "o"), "--device", "cuda"],
                 ["measure", str(src), str(src), "--device", "cuda", "--quick"]):
        p = subprocess.run([sys.executable, "-m", "llmpack", *argv], capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, p.stderr
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "CUDA is not available" in lines[0], p.stderr
