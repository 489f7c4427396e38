"""Exact int8 arithmetic in PyTorch: the file's reference semantics and the references the other kernels are
checked against.

* :func:`dequant_w8a8` is compressed-tensors' own fake-quant arithmetic, op for op (activations quantized per
  token with ``absmax / 127.5`` and ``[-128, 127]``, dequantized, one float matmul with dequantized weights and
  the bias): the ``dequant`` kernel, bit for bit what transformers + compressed-tensors run on the same CPU.
* :func:`int_mm_w8a8`: the same quantization, then ``torch._int_mm`` (exact int32 sums; VNNI/AMX CPUs, CUDA).
* :func:`w8a8_exact`: what llmpack's native kernels compute, in float64 (both token widths).
* :func:`w8a16_float`: weight-only int8 with float activations.

Example:
    >>> w = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
    >>> s = torch.tensor([[0.1], [0.2]])
    >>> y = dequant_w8a8(torch.tensor([[0.5, -1.0]]), w, s.reshape(1, -1), None)
    >>> [round(v, 2) for v in y[0].tolist()]
    [0.25, -0.5]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmpack.quant.int8 import SCALE_EPS, midrange, quantize_per_token

__all__ = ["QMAX7", "dequant_w8a8", "int_mm_w8a8", "w8a8_exact", "w8a16_float", "centred_q", "weight_sums"]

QMAX7 = 64
"""7-bit centred tokens: ``round((x - centre) * 64 / half)`` in ``[-64, 64]`` (``+ 64`` fits a uint8 in
``[0, 128]``; ``128 * 127 * 2 < 2**15``, so the u8 x s8 pair sums of AVX2's ``vpmaddubsw`` never saturate)."""


def dequant_w8a8(xf: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """compressed-tensors' W8A8 arithmetic on float32 ``xf [tokens, in]``; ``scale_row`` is ``[1, out]``."""
    xq, a_scale = quantize_per_token(xf)
    w = weight.float().mul_(scale_row.reshape(-1, 1))
    return F.linear(xq.float().mul_(a_scale), w, bias)


def int_mm_w8a8(xf: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`dequant_w8a8` with the integer product from ``torch._int_mm`` (on CUDA ``tokens <= 16`` is padded,
    and ``in`` / ``out`` must be multiples of 8)."""
    xq, a_scale = quantize_per_token(xf)
    m = xf.shape[0]
    if xf.device.type == "cuda" and m <= 16:
        xq = F.pad(xq, (0, 0, 0, 17 - m))
    y = torch._int_mm(xq, weight.t())[:m] * a_scale  # int32 * float32 -> float32
    y.mul_(scale_row)
    return y if bias is None else y.add_(bias)


def centred_q(xf: torch.Tensor, qmax: int = QMAX7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(round((x - centre) * qmax / half)`` (float, integer-valued, in ``[-qmax, qmax]``), token scales
    ``half / qmax``, centres``)``, the last two ``[tokens, 1]``; centre and half-range are each token's mid-range
    and half-range (at least ``SCALE_EPS``). The native 7-bit kernel's float operations, in the same order."""
    centre, half = midrange(xf, 1)
    half = half.clamp_min_(SCALE_EPS)
    inv = torch.reciprocal(half).mul_(qmax)
    return xf.sub(centre).mul_(inv).round_(), half.div_(qmax), centre


def weight_sums(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``sum_k W[n, k] * scale[n]`` as float32 ``[out]``: what a token's centre contributes per unit."""
    return (weight.sum(1, dtype=torch.int64).double() * scale.reshape(-1).double()).float()


def w8a8_exact(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
               act_bits: int = 8) -> torch.Tensor:
    """What the native kernels compute, in float64: ``act_bits=8`` the file's tokens (:func:`quantize_per_token`)
    times the int8 weight exactly, then the scales (and bias); ``act_bits=7`` the centred 7-bit tokens
    (:func:`centred_q`) plus the centres' term.

    Example:
        >>> w = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
        >>> y = w8a8_exact(torch.tensor([[0.5, -1.0]]), w, torch.tensor([0.1, 0.2]))
        >>> [round(v, 4) for v in y[0].tolist()]
        [0.2494, -0.4957]
    """
    xf = x.float()
    wd = weight.double()
    s = scale.double().reshape(1, -1)
    if act_bits == 8:
        q, tok = quantize_per_token(xf)
        y = (q.double() @ wd.t()) * tok.double() * s
    else:
        q7, tok, centre = centred_q(xf)
        y = (q7.double() @ wd.t()) * tok.double() * s
        y += centre.double() * (wd.sum(1) * scale.double().reshape(-1)).reshape(1, -1)
    return y if bias is None else y + bias.double()


def w8a16_float(x2: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """Weight-only int8: ``x (W * s)^T + b`` in ``x``'s dtype (one int8 -> float conversion of ``W``, then the
    per-output-channel scale, which commutes with the matmul)."""
    dt = x2.dtype
    y = F.linear(x2, weight.to(dt))
    if bias is not None:
        return torch.addcmul(bias.to(dt), y, scale_row.to(dt))  # one pass: b + y * s
    return y.mul_(scale_row.to(dt))
