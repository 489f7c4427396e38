"""The CUDA kernels of llmpack's 8-bit layers, written in PyTorch ops so that they also run (slowly) on CPU, where
tests check their arithmetic against :mod:`~llmpack.runtime.kernels.reference`:

* :func:`scaled_mm_fp8`: FP8 W8A8 through ``torch._scaled_mm`` with row-wise scales (per-token activation scale x
  per-output-channel weight scale), bf16 output; FP8 tensor cores on compute capability >= 8.9;
* int8 W8A8 on CUDA is :func:`~llmpack.runtime.kernels.reference.int_mm_w8a8` (``torch._int_mm`` and a two-pass
  epilogue, :func:`~llmpack.runtime.kernels.reference.rescale_int32`);
* weight-only layers (int8 or FP8) convert the weight to the activations' dtype per call
  (:func:`~llmpack.runtime.kernels.reference.w8a16_float`): one extra read of the 1-byte weight and one write and
  read of a 2-byte copy per call, so W8A16 saves memory, not time, on GPUs (``benchmarks/gpu_check.sh`` measures
  it).

Example:
    >>> import torch
    >>> from llmpack.quant.fp8 import fp8_per_channel
    >>> w, s = fp8_per_channel(torch.randn(32, 64))
    >>> scaled_mm_fp8(torch.randn(3, 64), w, s.reshape(1, -1).float(), None).shape
    torch.Size([3, 32])
"""

from __future__ import annotations

import torch

from llmpack.quant.fp8 import quantize_per_token_fp8

__all__ = ["scaled_mm_fp8"]


def scaled_mm_fp8(x2: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """``x2 W^T + b`` with ``x2 [tokens, in]`` quantized to FP8 per token, ``weight`` FP8 ``[out, in]`` and
    float32 ``scale_row [1, out]``; the result in ``x2``'s dtype.

    ``torch._scaled_mm`` takes the second operand column-major (``weight.t()`` of a row-major weight is), float32
    scales of shapes ``[tokens, 1]`` and ``[1, out]``, and writes bf16 (what row-wise scaling supports); the bias is
    added afterwards (one pass over the output, only for layers that have one).
    """
    xq, a_scale = quantize_per_token_fp8(x2)
    y = torch._scaled_mm(xq, weight.t(), scale_a=a_scale, scale_b=scale_row.float().reshape(1, -1).contiguous(),
                         out_dtype=torch.bfloat16)
    if bias is not None:
        y = y.add_(bias.to(y.dtype))
    return y if x2.dtype == torch.bfloat16 else y.to(x2.dtype)
