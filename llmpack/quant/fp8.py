"""Pure FP8 (E4M3) tensor functions: per-channel weight quantization and per-token dynamic activation
quantization with compressed-tensors' ``float-quantized`` semantics.

* weights: ``scale = absmax / 448`` per output channel (stored in the model's float dtype),
  ``q = clamp(w / scale, -448, 448)`` cast to ``torch.float8_e4m3fn`` (round to nearest even);
* activations: the same per token, computed on the fly (``scale = absmax / 448``), what llm-compressor's
  ``FP8_DYNAMIC`` scheme declares and vLLM runs.

Example:
    >>> import torch
    >>> w = torch.randn(16, 32)
    >>> q, scale = fp8_per_channel(w)
    >>> q.dtype, tuple(scale.shape)
    (torch.float8_e4m3fn, (16, 1))
    >>> from llmpack.quant.int8 import dequantize, sqnr_db
    >>> sqnr_db(w, dequantize(q, scale)) > 25
    True
"""

from __future__ import annotations

import torch

from llmpack.quant.int8 import SCALE_EPS, absmax, per_channel

__all__ = ["FP8_DTYPE", "FP8_MAX", "fp8_per_channel", "quantize_per_token_fp8", "fake_quant_fp8"]

FP8_DTYPE = torch.float8_e4m3fn
"""The stored weight dtype (safetensors ``F8_E4M3``)."""

FP8_MAX = 448.0
"""Largest finite E4M3 magnitude: compressed-tensors' symmetric range is ``[-448, 448]``, scale ``absmax / 448``."""


def _fp8_grid(t: torch.Tensor) -> torch.Tensor:
    return t.clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def fp8_per_channel(
    w: torch.Tensor, dim: int = 0, *, scale_dtype: torch.dtype | None = None, name: str = "weight"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric FP8 E4M3 quantization with one scale per slice along ``dim`` (``dim=0``: per output channel
    of an ``[out, in]`` weight).

    Args:
        w: a floating-point 2-D tensor.
        dim: the channel dimension that gets its own scale.
        scale_dtype: dtype of the returned scale (default: ``w.dtype``).
        name: tensor name used in error messages.

    Returns:
        ``(q, scale)``: ``q`` ``float8_e4m3fn`` with ``w``'s shape, ``scale`` ``[out, 1]`` (``dim=0``).

    Raises:
        NonFiniteWeightError: ``w`` holds NaN or Inf (named).
        BadInputError: ``w`` is not a 2-D floating-point tensor.

    Example:
        >>> q, s = fp8_per_channel(torch.tensor([[448.0, -1.0], [0.5, 0.25]]))
        >>> q.float().tolist(), s.flatten().tolist()
        ([[448.0, -1.0], [448.0, 224.0]], [1.0, 0.0011160714784637094])
    """
    return per_channel(w, dim, qmax=FP8_MAX, to_grid=_fp8_grid, scale_dtype=scale_dtype, name=name, what="fp8")


def quantize_per_token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-token (per-row) FP8 quantization of a 2-D activation, compressed-tensors'
    arithmetic: ``scale = absmax / 448``, ``q = fp8(clamp(x / scale, -448, 448))``.

    Returns:
        ``(q, scale)``: ``q`` ``float8_e4m3fn`` ``[tokens, features]``, ``scale`` float32 ``[tokens, 1]``.

    Example:
        >>> q, s = quantize_per_token_fp8(torch.tensor([[0.5, -2.0]]))
        >>> q.float().tolist(), round(s.item() * 448, 6)
        ([[112.0, -448.0]], 2.0)
    """
    xf = x.float()
    scale = absmax(xf, -1).clamp_min_(SCALE_EPS).div_(FP8_MAX)
    return _fp8_grid(xf / scale), scale


def fake_quant_fp8(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Quantize-dequantize ``x`` on the FP8 E4M3 grid with one scale per slice, reducing ``dim`` (``-1``: per
    token / per output row of an ``[out, in]`` weight; ``0``: per column of a ``Conv1D`` ``[in, out]`` weight),
    in ``x``'s dtype. The simulator of the accuracy budget.

    Example:
        >>> x = torch.tensor([[1.0, 0.3]])
        >>> fake_quant_fp8(x).tolist()
        [[1.0, 0.2857142984867096]]
    """
    xf = x.float()
    scale = absmax(xf, dim).clamp_min_(SCALE_EPS).div_(FP8_MAX)
    return _fp8_grid(xf / scale).float().mul_(scale).to(x.dtype)
