"""The int8 kernels behind every int8 module: one entry per product over a typed packed weight.

* :func:`w8a8` -- ``x W^T + b`` with per-token int8 activations, for one or several layers reading the same
  input (q/k/v, gate/up: quantized once);
* :func:`w8a16` -- weight-only int8 with float activations;
* :func:`fp8_linear` -- FP8 layers (W8A8 or weight-only): ``torch._scaled_mm`` on FP8 GPUs, else the reference;
* :class:`PackedWeight` -- an int8 ``[out, in]`` weight, its float32 scales and bias, and the packed copies
  the kernels build on first use.

Which kernel runs is :mod:`~llmpack.runtime.kernels.select`'s choice (CPU flags, ``LLMPACK_INT8_KERNEL``);
:mod:`~llmpack.runtime.kernels.native` (llmpack's AVX2 kernels), :mod:`~llmpack.runtime.kernels.reference`
(compressed-tensors' arithmetic, ``torch._int_mm``) and :mod:`~llmpack.runtime.kernels.onednn` (the opt-in 7-bit
oneDNN / FBGEMM path) implement them.

Example:
    >>> import torch
    >>> w = torch.randint(-127, 128, (16, 32), dtype=torch.int8)
    >>> p = PackedWeight(w, torch.full((16,), 0.01), None)
    >>> x = torch.randn(3, 32)
    >>> y = w8a8(x, [p], "dequant")[0]
    >>> torch.allclose(y, w8a8(x, [p], cpu_kernel())[0], atol=1e-4)
    True
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from llmpack.runtime.kernels import native, reference
from llmpack.runtime.kernels.select import (
    FEW_TOKENS,
    cpu_kernel,
    fp8_kernel_for,
    is_exact,
    is_native,
    kernel_for,
    native_float_ops_on,
    prepared_kernel,
    use,
    warn_once,
)

__all__ = ["PackedWeight", "w8a8", "w8a16", "fp8_linear", "FEW_TOKENS", "cpu_kernel", "kernel_for", "fp8_kernel_for",
           "prepared_kernel", "is_native", "is_exact", "use", "native_ops", "native_float_ops_on"]



def native_ops() -> Any | None:
    """llmpack's checked native ops, or ``None`` (see :func:`llmpack.runtime.kernels.native.checked_ops`)."""
    return native.checked_ops()


class PackedWeight:
    """One int8 layer: weight ``[out, in]`` (int8), float32 ``scale`` ``[out]`` and ``bias``, plus the copies
    the kernels read, built on first use (:meth:`native`, :meth:`onednn`).

    Example:
        >>> p = PackedWeight(torch.ones(4, 8, dtype=torch.int8), torch.ones(4), None)
        >>> p.out_features, p.in_features
        (4, 8)
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight.detach()
        self.scale = scale.detach().reshape(-1).float().contiguous()
        self.scale_row = self.scale.reshape(1, -1)
        self.bias = None if bias is None else bias.detach().float().contiguous()
        self.out_features, self.in_features = int(weight.shape[0]), int(weight.shape[1])
        self._native: tuple[torch.Tensor, torch.Tensor] | None = None
        self._full_range: bool | None = None
        self._onednn: Any = None

    def full_range(self) -> bool:
        """The weight holds -128 (files from other tools): the native 8-bit kernel moves the token's sign onto
        the weight, exact only for ``|w| <= 127``, so such layers run the reference instead."""
        if self._full_range is None:
            self._full_range = bool(self.weight.min() == -128)
        return self._full_range

    def native(self, ops: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The native W8A8 kernel's panels and zero-point correction."""
        if self._native is None:
            self._native = native.pack(ops, self.weight)
        return self._native

    def onednn(self) -> Any:
        """oneDNN's packed copy (the opt-in ``onednn-7bit`` kernel)."""
        if self._onednn is None:
            from llmpack.runtime.kernels.onednn import OneDnnWeight

            self._onednn = OneDnnWeight(self.weight, self.scale)
        return self._onednn

    def prepare(self, kernel: str) -> None:
        """Build what ``kernel`` reads now (before ``torch.compile`` traces, or to pay packing up front)."""
        if self.weight.device.type != "cpu":
            return
        if is_native(kernel):
            ops = native_ops()
            if ops is not None and (kernel != "avx2" or not self.full_range()):
                self.native(ops)
        elif kernel == "onednn-7bit":
            from llmpack.runtime.kernels.onednn import fbgemm_available

            self.onednn()
            if fbgemm_available():
                self.onednn().fbgemm()


def w8a8(x2: torch.Tensor, packs: Sequence[PackedWeight], kernel: str,
         out_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """``[x2 W^T + b for each layer]`` in float32 (CUDA ``int_mm``: in ``out_dtype``, written by the epilogue),
    tokens quantized per token on ``kernel``.

    Args:
        x2: ``[tokens, in]`` activations (any float dtype).
        packs: the layers reading ``x2`` (same ``in``).
        kernel: a kernel name (:func:`kernel_for`).
        out_dtype: the dtype the caller wants (CUDA ``int_mm`` writes it directly).
    """
    if kernel == "int_mm" and x2.device.type == "cuda":  # (quantizes x2 as it is: the float conversion fuses)
        from llmpack.runtime.kernels.cuda import int_mm_w8a8

        return [int_mm_w8a8(x2, p.weight, p.scale_row, p.bias, out_dtype or torch.float32) for p in packs]
    xf = x2.float()
    if kernel == "vnni" and xf.device.type == "cpu":
        ops = native_ops()
        if ops is not None and native.has_vnni():
            natives = [p.native(ops) for p in packs]
            return list(ops.w8a8_vnni(xf.contiguous(), [n[0] for n in natives], [n[1] for n in natives],
                                      [p.scale for p in packs], [p.bias for p in packs]))
        kernel = "dequant"
    if is_native(kernel) and xf.device.type == "cpu":
        ops = native_ops()
        if ops is not None:
            bits = 8 if kernel == "avx2" else 7
            if bits == 8 and any(p.full_range() for p in packs):  # (files from other tools only)
                return [w8a8(xf, [p], "dequant" if p.full_range() else kernel)[0] for p in packs]
            natives = [p.native(ops) for p in packs]
            return list(ops.w8a8(xf.contiguous(), [n[0] for n in natives], [n[1] for n in natives],
                                 [p.scale for p in packs], [p.bias for p in packs], bits))
        kernel = "dequant" if kernel == "avx2" else "onednn-7bit"
    if kernel == "onednn-7bit" and xf.device.type == "cpu":
        from llmpack.runtime.kernels.onednn import onednn_available, w8a8_7bit

        if onednn_available():
            return w8a8_7bit(xf, [p.onednn() for p in packs], [p.bias for p in packs])
        kernel = "dequant"
    if kernel == "int_mm":
        ops = native_ops() if xf.device.type == "cpu" and xf.shape[-1] % 4 == 0 else None
        if ops is not None:  # the same arithmetic, quantization and rescale in one pass each
            q, tok = ops.quantize_rows(xf.contiguous())
            return [ops.int_mm_epilogue(torch._int_mm(q, p.weight.t()), tok, p.scale, p.bias) for p in packs]
        return [reference.int_mm_w8a8(xf, p.weight, p.scale_row, p.bias) for p in packs]
    return [reference.dequant_w8a8(xf, p.weight, p.scale_row, p.bias) for p in packs]


def w8a16(x2: torch.Tensor, pack: PackedWeight, kernel: str) -> torch.Tensor:
    """``x2 (W * s)^T + b`` with float activations, in ``x2``'s dtype: the native kernel reads the int8 weight as
    it is for 1 to :data:`FEW_TOKENS` float32 CPU tokens (decode); otherwise one conversion of ``W`` and a float
    matmul.
    """
    tokens = x2.shape[0]
    if is_native(kernel) and x2.device.type == "cpu" and 1 <= tokens <= FEW_TOKENS and x2.dtype == torch.float32:
        ops = native_ops()
        if ops is not None and pack.weight.is_contiguous():
            return ops.w8a16(x2.contiguous(), pack.weight, pack.scale, pack.bias)
    return reference.w8a16_float(x2, pack.weight, pack.scale_row, pack.bias)


def fp8_linear(x2: torch.Tensor, pack: PackedWeight, kernel: str, act_quant: bool = True) -> torch.Tensor:
    """``x2 W^T + b`` for an FP8 layer, in ``x2``'s dtype, on ``kernel`` (:func:`fp8_kernel_for`): ``scaled_mm``
    (CUDA FP8 tensor cores; a failure there is said once and the layer falls back to the reference),
    ``weight_only`` (float activations) or ``dequant`` (compressed-tensors' arithmetic in float32).

    Example:
        >>> from llmpack.quant.fp8 import fp8_per_channel
        >>> q, s = fp8_per_channel(torch.randn(16, 32))
        >>> fp8_linear(torch.randn(2, 32), PackedWeight(q, s, None), "dequant").shape
        torch.Size([2, 16])
    """
    if kernel == "weight_only":
        return reference.w8a16_float(x2, pack.weight, pack.scale_row, pack.bias)
    if kernel == "scaled_mm" and not getattr(pack, "scaled_mm_failed", False):
        from llmpack.runtime.kernels.cuda import scaled_mm_fp8

        try:
            return scaled_mm_fp8(x2, pack.weight, pack.scale_row, pack.bias)
        except RuntimeError as e:
            pack.scaled_mm_failed = True  # type: ignore[attr-defined]
            warn_once(f"torch._scaled_mm failed on a {tuple(pack.weight.shape)} FP8 layer ({str(e).splitlines()[0]}): "
                      "such layers run the reference path")
    return reference.dequant_fp8(x2.float(), pack.weight, pack.scale_row, pack.bias, act_quant).to(x2.dtype)
