"""The CUDA kernels of llmpack's 8-bit layers, written in PyTorch ops so that they also run (slowly) on CPU, where
tests check their arithmetic against :mod:`~llmpack.runtime.kernels.reference`:

* :func:`scaled_mm_fp8`: FP8 W8A8 through ``torch._scaled_mm`` with row-wise scales (per-token activation scale x
  per-output-channel weight scale), bf16 output; FP8 tensor cores on compute capability >= 8.9;
* :func:`int_mm_w8a8`: int8 W8A8 through ``torch._int_mm`` and a fused rescale epilogue;
* weight-only layers (int8 or FP8) convert the weight to the activations' dtype per call
  (:func:`~llmpack.runtime.kernels.reference.w8a16_float`): one extra read of the 1-byte weight and one write and
  read of a 2-byte copy per call, so W8A16 saves memory, not time, on GPUs (``benchmarks/gpu_check.sh`` measures
  it).

**Fusion.** Op by op, a layer's per-token quantization is ~10 kernels (float conversion, two reductions, scale,
divide, clamp, cast: ~0.5 GB of traffic for an 8 x 512-token, 4096-wide input, and ten launches per layer at a
decode step), and the int8 rescale two full-size passes. On CUDA, :data:`per_token_fp8`, :data:`per_token_int8`
and :data:`rescale` run them as ``torch.compile``-generated kernels instead (a reduction and the quantization in
one or two kernels, one epilogue pass), compiled on first use (seconds, once per process and input dtype) with
dynamic shapes. ``LLMPACK_CUDA_FUSE=0`` runs them op by op; a compilation that fails is said once and that step
runs op by op from then on. Inside a ``torch.compile``-d model they are plain ops that the model's compilation
fuses. :func:`fusion_status` says which ran.

Example:
    >>> import torch
    >>> from llmpack.quant.fp8 import fp8_per_channel
    >>> w, s = fp8_per_channel(torch.randn(32, 64))
    >>> scaled_mm_fp8(torch.randn(3, 64), w, s.reshape(1, -1).float(), None).shape
    torch.Size([3, 32])
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from llmpack._env import cuda_fuse_enabled
from llmpack.quant.fp8 import quantize_per_token_fp8
from llmpack.quant.int8 import quantize_per_token
from llmpack.runtime.kernels.reference import rescale_int32
from llmpack.runtime.kernels.select import warn_once

__all__ = ["scaled_mm_fp8", "int_mm_w8a8", "Fused", "per_token_fp8", "per_token_int8", "rescale", "fusion_status",
           "INT_MM_MIN_ROWS"]

INT_MM_MIN_ROWS = 17
"""``torch._int_mm`` on CUDA wants more than 16 rows: fewer tokens are padded with zero rows to this many."""


class Fused:
    """``eager`` as a ``torch.compile``-d function for inputs on :attr:`devices` (CUDA), ``eager`` itself elsewhere,
    with ``LLMPACK_CUDA_FUSE=0``, or after a compilation failed (said once); inside an enclosing compilation the
    plain ``traced`` ops, which that compilation fuses with its neighbours.

    Args:
        name: what the one-time warning and :func:`fusion_status` call it.
        eager: the op-by-op function (the semantics).
        traced: the function to compile, where a formula without ``out=`` tensors fuses better (default ``eager``).

    Example:
        >>> f = Fused("double", lambda x: x * 2)
        >>> f(torch.ones(2)).tolist(), f.status   # a CPU input: eager, nothing compiled
        ([2.0, 2.0], 'not used')
    """

    devices: tuple[str, ...] = ("cuda",)

    def __init__(self, name: str, eager: Callable[..., Any], traced: Callable[..., Any] | None = None) -> None:
        self.name = name
        self.eager = eager
        self.traced = traced or eager
        self.compiled: Callable[..., Any] | None = None
        self.status = "not used"

    def __call__(self, x: torch.Tensor, *args: Any) -> Any:
        if torch.compiler.is_compiling():  # traced into the enclosing compilation, which fuses it
            return self.traced(x, *args)
        if self.status.startswith("failed") or x.device.type not in self.devices or not cuda_fuse_enabled():
            return self.eager(x, *args)
        try:
            if self.compiled is None:
                self.compiled = torch.compile(self.traced, dynamic=True, fullgraph=True)
            out = self.compiled(x, *args)
        except Exception as e:  # noqa: BLE001 -- no compiler, no Triton, an unsupported GPU: the eager ops still work
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            self.status = f"failed: {type(e).__name__}: {first}"
            warn_once(f"llmpack: torch.compile could not fuse {self.name} ({type(e).__name__}: {first}); it runs op "
                      f"by op (slower, same results). LLMPACK_CUDA_FUSE=0 skips the attempt.")
            return self.eager(x, *args)
        self.status = "compiled"
        return out


def _rescale_traced(y: torch.Tensor, a_scale: torch.Tensor, scale_row: torch.Tensor, bias: torch.Tensor | None,
                    out_dtype: torch.dtype) -> torch.Tensor:
    z = torch.mul(y, a_scale).mul(scale_row)
    return (z if bias is None else z + bias.float()).to(out_dtype)


def _int8_tokens_for_int_mm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~llmpack.quant.int8.quantize_per_token`, padded with zero rows to :data:`INT_MM_MIN_ROWS`."""
    q, scale = quantize_per_token(x)
    if q.shape[0] < INT_MM_MIN_ROWS:
        q = F.pad(q, (0, 0, 0, INT_MM_MIN_ROWS - q.shape[0]))
    return q, scale


per_token_fp8 = Fused("the per-token FP8 quantization", quantize_per_token_fp8)
""":func:`~llmpack.quant.fp8.quantize_per_token_fp8`, fused on CUDA."""
per_token_int8 = Fused("the per-token int8 quantization", _int8_tokens_for_int_mm)
"""The int8 tokens of :func:`int_mm_w8a8` (padded to :data:`INT_MM_MIN_ROWS` rows), fused on CUDA."""
rescale = Fused("the int8 rescale", rescale_int32, _rescale_traced)
""":func:`~llmpack.runtime.kernels.reference.rescale_int32`, one fused pass on CUDA."""


def fusion_status() -> dict[str, str]:
    """Each fused step's state in this process: ``not used``, ``compiled`` or ``failed: ...``.

    Example:
        >>> sorted(fusion_status())
        ['fp8_tokens', 'int8_rescale', 'int8_tokens']
    """
    return {"fp8_tokens": per_token_fp8.status, "int8_tokens": per_token_int8.status, "int8_rescale": rescale.status}


def scaled_mm_fp8(x2: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """``x2 W^T + b`` with ``x2 [tokens, in]`` quantized to FP8 per token, ``weight`` FP8 ``[out, in]`` and
    float32 ``scale_row [1, out]``; the result in ``x2``'s dtype.

    ``torch._scaled_mm`` takes the second operand column-major (``weight.t()`` of a row-major weight is), float32
    scales of shapes ``[tokens, 1]`` and ``[1, out]``, and writes bf16 (what row-wise scaling supports); the bias is
    added afterwards (one pass over the output, only for layers that have one).
    """
    xq, a_scale = per_token_fp8(x2)
    y = torch._scaled_mm(xq, weight.t(), scale_a=a_scale, scale_b=scale_row.float().reshape(1, -1).contiguous(),
                         out_dtype=torch.bfloat16)
    if bias is not None:
        y = y.add_(bias.to(y.dtype))
    return y if x2.dtype == torch.bfloat16 else y.to(x2.dtype)


def int_mm_w8a8(x2: torch.Tensor, weight: torch.Tensor, scale_row: torch.Tensor, bias: torch.Tensor | None,
                out_dtype: torch.dtype) -> torch.Tensor:
    """``x2 W^T + b`` in ``out_dtype`` for an int8 W8A8 layer on CUDA: tokens quantized per token (compressed-
    tensors' arithmetic, :func:`~llmpack.quant.int8.quantize_per_token`; fewer than :data:`INT_MM_MIN_ROWS` padded),
    the exact int32 product of ``torch._int_mm``, then the rescale (token scale, channel scale, bias, output dtype).

    Example:
        >>> from llmpack.quant.int8 import int8_per_channel
        >>> w, s = int8_per_channel(torch.randn(32, 64))
        >>> int_mm_w8a8(torch.randn(3, 64), w, s.reshape(1, -1).float(), None, torch.float32).shape
        torch.Size([3, 32])
    """
    m = x2.shape[0]
    xq, a_scale = per_token_int8(x2)
    return rescale(torch._int_mm(xq, weight.t())[:m], a_scale, scale_row, bias, out_dtype)
