"""Float casts: overflow and finiteness checks."""

from __future__ import annotations

import pytest
import torch

from llmpack.errors import Fp16OverflowError, NonFiniteWeightError
from llmpack.quant.floats import cast, check_finite, float_dtype, fp16_overflows, to_bf16, to_fp16


def test_fp16_in_range_exact() -> None:
    t = torch.tensor([65504.0, -65504.0, 1.5, 0.0])
    assert torch.equal(to_fp16(t, "w").float(), t)


def test_fp16_overflow_names_tensor() -> None:
    with pytest.raises(Fp16OverflowError, match=r"tensor layer\.w .*bf16"):
        to_fp16(torch.tensor([1.0, -70000.0]), "layer.w")
    assert fp16_overflows(torch.tensor([65505.0])) and not fp16_overflows(torch.tensor([65504.0]))
    assert not fp16_overflows(torch.tensor([1, 2**20]))  # ints are never cast


def test_bf16_wide_range_and_nonfinite() -> None:
    assert torch.isfinite(to_bf16(torch.tensor([1e30]))).all()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteWeightError, match="tensor x"):
            check_finite(torch.tensor([1.0, bad]), "x")
    assert cast(torch.ones(2), torch.float32).dtype == torch.float32
    assert float_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError):
        float_dtype("int4")
