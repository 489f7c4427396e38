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


def test_one_check_finite_for_casts_and_quantization() -> None:
    """The same check serves a float cast (source message) and int8/FP8 quantization (count + --ignore fix)."""
    from llmpack.quant.int8 import int8_per_channel

    w = torch.ones(2, 3)
    w[1, 2] = float("-inf")
    w[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError) as info:
        check_finite(w, "m.fc.weight")
    assert str(info.value) == "tensor m.fc.weight holds NaN or Inf values in the source; fix the source checkpoint"
    with pytest.raises(NonFiniteWeightError) as info:
        check_finite(w, "m.fc.weight", quantizing_to="int8")
    assert str(info.value) == ("tensor 'm.fc.weight' holds 2 NaN/Inf value(s): cannot quantize it to int8; "
                               "fix the source checkpoint or keep it in float with --ignore 'm.fc'")
    with pytest.raises(NonFiniteWeightError, match="holds 2 NaN/Inf value"):
        int8_per_channel(w, dim=0, name="m.fc.weight")
    check_finite(torch.tensor([1, 2]), "ints")  # non-float tensors always pass
    check_finite(torch.ones(0), "empty")
