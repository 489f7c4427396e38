"""Float casts with overflow and finiteness checks (pure tensor functions).

``max``/``min`` are used instead of ``abs()``/``isnan()`` so a check allocates nothing the size of the tensor.
"""

from __future__ import annotations

import math

import torch

from llmpack._dtypes import short_name
from llmpack.constants import FP16_MAX
from llmpack.errors import Fp16OverflowError, NonFiniteWeightError

__all__ = ["FLOAT_DTYPES", "float_dtype", "check_finite", "to_fp16", "to_bf16", "cast", "fp16_overflows"]

FLOAT_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def float_dtype(name: "str | torch.dtype") -> torch.dtype:
    """``"fp16"``/``"bf16"``/``"fp32"`` (or a torch dtype) -> torch dtype.

    Example:
        >>> float_dtype("bf16")
        torch.bfloat16
    """
    if isinstance(name, torch.dtype):
        return name
    key = short_name(name)
    try:
        return FLOAT_DTYPES[key]
    except KeyError:
        raise ValueError(f"unknown float dtype {name!r}: choose fp16, bf16 or fp32") from None


def _extremes(t: torch.Tensor) -> tuple[float, float]:
    if t.numel() == 0:
        return 0.0, 0.0
    return float(t.max()), float(t.min())


def check_finite(t: torch.Tensor, name: str, *, quantizing_to: str | None = None) -> None:
    """Raise :class:`NonFiniteWeightError` if a float tensor holds NaN or Inf (the one finiteness check).

    Args:
        t: the tensor (non-float tensors always pass).
        name: the tensor's name, for the message.
        quantizing_to: the format being made (``"int8"``, ``"FP8"``); the message then counts the bad values
            and names the ``--ignore`` that keeps the layer in float.

    Example:
        >>> check_finite(torch.ones(2), "w")
        >>> check_finite(torch.tensor([float("nan")]), "m.fc.weight", quantizing_to="int8")
        Traceback (most recent call last):
        ...
        llmpack.errors.NonFiniteWeightError: tensor 'm.fc.weight' holds 1 NaN/Inf value(s): cannot quantize it to int8; fix the source checkpoint or keep it in float with --ignore 'm.fc'
    """
    if not t.is_floating_point():
        return
    hi, lo = _extremes(t)
    if math.isfinite(hi) and math.isfinite(lo):
        return
    if quantizing_to is None:
        raise NonFiniteWeightError(f"tensor {name} holds NaN or Inf values in the source; fix the source checkpoint")
    bad = int((~torch.isfinite(t)).sum())
    raise NonFiniteWeightError(
        f"tensor {name!r} holds {bad} NaN/Inf value(s): cannot quantize it to {quantizing_to}; "
        f"fix the source checkpoint or keep it in float with --ignore {name.rsplit('.', 1)[0]!r}"
    )


def fp16_overflows(t: torch.Tensor) -> bool:
    """True if any value of ``t`` lies beyond FP16's range (|x| > 65504).

    Example:
        >>> fp16_overflows(torch.tensor([70000.0]))
        True
    """
    if not t.is_floating_point():
        return False
    hi, lo = _extremes(t)
    return hi > FP16_MAX or lo < -FP16_MAX


def to_fp16(t: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """Cast to float16, refusing values beyond +-65504 (they would become inf).

    Raises:
        Fp16OverflowError: names the tensor and suggests bf16 or ``fp16_overflow="keep"``.

    Example:
        >>> to_fp16(torch.tensor([1.5])).dtype
        torch.float16
    """
    check_finite(t, name)
    if fp16_overflows(t):
        hi, lo = _extremes(t)
        raise Fp16OverflowError(
            f"tensor {name} has values up to {max(abs(hi), abs(lo)):.4g}, beyond FP16's +-65504: "
            "use method='bf16', or fp16_overflow='keep' (--fp16-overflow keep) to keep it in float32"
        )
    return t.to(torch.float16)


def to_bf16(t: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """Cast to bfloat16 (same exponent range as float32, so no overflow).

    Example:
        >>> to_bf16(torch.tensor([1e30])).dtype
        torch.bfloat16
    """
    check_finite(t, name)
    return t.to(torch.bfloat16)


def cast(t: torch.Tensor, dtype: torch.dtype, name: str = "tensor") -> torch.Tensor:
    """Cast a float tensor to ``dtype`` with the checks of :func:`to_fp16` / :func:`to_bf16`.

    Example:
        >>> cast(torch.ones(1), torch.bfloat16).dtype
        torch.bfloat16
    """
    if dtype == torch.float16:
        return to_fp16(t, name)
    if dtype == torch.bfloat16:
        return to_bf16(t, name)
    check_finite(t, name)
    return t.to(dtype)
