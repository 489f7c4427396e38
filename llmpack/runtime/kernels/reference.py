"""Exact int8 arithmetic in PyTorch: the file's reference semantics and the references the other kernels are
checked against.

* :func:`dequant_w8a8` is compressed-tensors' own fake-quant arithmetic, op for op (activations quantized per
  token with ``absmax / 127.5`` and ``[-128, 127]``, dequantized, one float matmul with dequantized weights and
  the bias): the ``dequant`` kernel, bit for bit what transformers + compressed-tensors run on the same CPU.
* :func:`int_mm_w8a8`: the same quantization, then ``torch._int_mm`` (exact int32 sums; VNNI/AMX CPUs, CUDA).
* :func:`w8a8_exact`: what llmpack's native kernels compute, in float64 (both token widths).
* :func:`w8a16_float`: weight-only int8 (or FP8) with float activations.
* :func:`dequant_fp8`: compressed-tensors' ``float-quantized`` arithmetic (FP8 E4M3 tokens, FP8 weights), the
  reference every FP8 kernel is checked against and what CPUs run.
* :func:`rescale_int32`: the epilogue of an integer product (token scale, channel scale, bias, output dtype) in
  two elementwise passes, the first of which is the int32 -> float conversion itself.

Example:
    >>> w = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
    >>> s = torch.tensor([[0.1], [0.2]])
    >>> y = dequant_w8a8(torch.tensor([[0.5, -1.0]]), w, s.reshape(1, -1), None)
    >>> [round(v, 2) for v in y[0].tolist()]
    [0.25, -0.5]
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from llmpack.quant.fp8 import quantize_per_token_fp8
from llmpack.quant.int8 import SCALE_EPS, midrange, quantize_per_token

__all__ = ["QMAX7", "dequant_w8a8", "int_mm_w8a8", "w8a8_exact", "w8a16_float", "centred_q", "weight_sums",
           "dequant_fp8", "rescale_int32"]

QMAX7 = 64
"""7-bit centred tokens: ``round((x - centre) * 64 / half)`` in ``[-64, 64]`` (``+ 64`` fits a uint8 in
``[0, 128]``; ``128 * 127 * 2 < 2**15``, so the u8 x s8 pair sums of AVX2's ``vpmaddubsw`` never saturate)."""


def dequant_w8a8(xf: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor,
                 bias: torch.Tensor | None, quantize_act: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                 = quantize_per_token) -> torch.Tensor:
    """compressed-tensors' W8A8 arithmetic on float32 ``xf [tokens, in]``; ``scale_row`` is ``[1, out]``.
    ``quantize_act`` is the per-token activation quantizer of the scheme (int8 by default)."""
    xq, a_scale = quantize_act(xf)
    w = weight.to(torch.float32, copy=True).mul_(scale_row.reshape(-1, 1))
    return F.linear(xq.float().mul_(a_scale), w, bias)


def dequant_fp8(xf: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor, bias: torch.Tensor | None,
                act_quant: bool = True) -> torch.Tensor:
    """compressed-tensors' ``float-quantized`` arithmetic on float32 ``xf [tokens, in]``: tokens quantized to FP8
    E4M3 per token (``absmax / 448``) when ``act_quant``, the FP8 weight dequantized with its per-channel scale,
    one float32 matmul and the bias.

    Example:
        >>> from llmpack.quant.fp8 import fp8_per_channel
        >>> q, s = fp8_per_channel(torch.tensor([[1.0, -2.0], [3.0, 4.0]]))
        >>> [round(v, 3) for v in dequant_fp8(torch.tensor([[0.5, -1.0]]), q, s.reshape(1, -1), None)[0].tolist()]
        [2.5, -2.571]
    """
    if act_quant:
        return dequant_w8a8(xf, weight, scale_row, bias, quantize_per_token_fp8)
    return F.linear(xf, weight.to(torch.float32, copy=True).mul_(scale_row.reshape(-1, 1)), bias)


def rescale_int32(y: torch.Tensor, a_scale: torch.Tensor, scale_row: torch.Tensor, bias: torch.Tensor | None,
                  out_dtype: torch.dtype) -> torch.Tensor:
    """``(y * a_scale) * scale_row + bias`` in ``out_dtype`` for an int32 product ``y [tokens, out]``, in two
    elementwise passes: the int32 -> float32 conversion carries the token scale, one ``addcmul`` / ``mul`` carries
    the channel scale, the bias and the cast (no separate full-size pass for the rescale).

    Example:
        >>> y = torch.tensor([[2, -4]], dtype=torch.int32)
        >>> rescale_int32(y, torch.tensor([[0.5]]), torch.tensor([[1.0, 0.25]]), None, torch.bfloat16).tolist()
        [[1.0, -0.5]]
    """
    z = torch.mul(y, a_scale)  # pass 1: int32 -> float32, times the token scale
    if out_dtype == z.dtype:
        return z.mul_(scale_row) if bias is None else z.mul_(scale_row).add_(bias)
    out = torch.empty(z.shape, dtype=out_dtype, device=z.device)  # pass 2 writes the output dtype directly
    if bias is None:
        return torch.mul(z, scale_row, out=out)
    return torch.addcmul(bias.float(), z, scale_row, out=out)


def int_mm_w8a8(xf: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`dequant_w8a8` with the integer product from ``torch._int_mm``, in float32, on CPU (VNNI / AMX; CUDA
    has :func:`llmpack.runtime.kernels.cuda.int_mm_w8a8`)."""
    xq, a_scale = quantize_per_token(xf)
    y = torch._int_mm(xq, weight.t()) * a_scale  # int32 * float32 -> float32
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
