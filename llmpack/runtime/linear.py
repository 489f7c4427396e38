""":class:`Int8Linear`: a linear layer with int8 per-output-channel weights, W8A8 or W8A16; :class:`Fp8Linear`:
the same with FP8 E4M3 weights (compressed-tensors ``float-quantized``), W8A8 with per-token FP8 activations or
weight-only.

State-dict layout (compressed-tensors ``int-quantized``, see ``docs/int8-format.md``): ``P.weight`` int8
``[out, in]`` and ``P.weight_scale`` ``[out, 1]`` in the model's float dtype, plus ``P.bias`` when the layer has
one. GPT-2 ``Conv1D`` layers are stored in the same ``[out, in]`` layout (transposed once at quantization time),
so one module serves both. The products run on :mod:`llmpack.runtime.kernels`.

Example:
    >>> import torch
    >>> q = Int8Linear.from_float(torch.nn.Linear(64, 32))
    >>> q(torch.randn(2, 5, 64)).shape
    torch.Size([2, 5, 32])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmpack._nn import is_conv1d
from llmpack.errors import BadInputError
from llmpack.quant.schemes import get_scheme
from llmpack.runtime import kernels

__all__ = ["Int8Linear", "Fp8Linear", "is_conv1d", "linear_class"]


class Int8Linear(nn.Module):
    """A linear layer with int8 per-output-channel weights; W8A8 (dynamic per-token int8 activations)
    or W8A16 (``act_quant=False``: weights int8, activations stay float).

    Computes ``y = x W^T + b`` like ``nn.Linear`` (and like GPT-2's ``Conv1D`` when it replaces one:
    ``conv1d_layout=True`` only records that origin; the stored weight is ``[out, in]`` either way).

    Args:
        in_features: input size.
        out_features: output size.
        bias: whether the layer has a bias.
        act_quant: quantize activations per token (W8A8); ``False`` keeps them float (W8A16).
        conv1d_layout: the layer replaced a ``Conv1D`` (for :meth:`to_float` and reporting).
        dtype: float dtype of ``weight_scale`` and ``bias``.
        device: where to allocate (``"meta"`` while loading).

    Example:
        >>> m = Int8Linear(8, 4, bias=True)
        >>> m.weight.dtype, tuple(m.weight_scale.shape)
        (torch.int8, (4, 1))
    """

    scheme = "int8"
    """The weight scheme (:mod:`llmpack.quant.schemes`)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        act_quant: bool = True,
        conv1d_layout: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.act_quant = bool(act_quant)
        self.conv1d_layout = bool(conv1d_layout)
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=get_scheme(self.scheme).dtype, device=device),
            requires_grad=False,
        )
        self.weight_scale = nn.Parameter(torch.ones(out_features, 1, dtype=dtype, device=device), requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._packed: kernels.PackedWeight | None = None
        self._packed_key: tuple[Any, ...] | None = None
        self._kernel: str | None = None  # chosen by prepare() (read as is under torch.compile)
        self._kernel_few: str | None = None  # the same for 1 to FEW_TOKENS tokens
        self._group: Any = None  # a SiblingGroup (llmpack.runtime.siblings), set by prepare_int8

    @classmethod
    def from_float(
        cls, module: nn.Module, *, act_quant: bool = True, name: str = "weight", scale_dtype: torch.dtype | None = None
    ) -> "Int8Linear":
        """Quantize an ``nn.Linear`` or ``Conv1D`` (per output channel, symmetric).

        Raises:
            NonFiniteWeightError: the weight holds NaN/Inf (``name`` is used in the message).

        Example:
            >>> Int8Linear.from_float(torch.nn.Linear(4, 2), act_quant=False).act_quant
            False
        """
        w = module.weight.detach()
        conv = is_conv1d(module)
        if conv:
            w = w.t()  # Conv1D stores [in, out]; quantize per output channel in [out, in]
        elif not isinstance(module, nn.Linear):
            raise BadInputError(f"{name}: cannot quantize a {type(module).__name__} as Int8Linear (Linear/Conv1D only)")
        sdt = scale_dtype or w.dtype
        q, scale = get_scheme(cls.scheme).quantize_weight(w, 0, scale_dtype=sdt, name=name)
        bias = getattr(module, "bias", None)
        out = cls(
            q.shape[1], q.shape[0], bias is not None, act_quant=act_quant, conv1d_layout=conv, dtype=sdt, device="meta"
        )
        out.weight = nn.Parameter(q.contiguous(), requires_grad=False)
        out.weight_scale = nn.Parameter(scale.contiguous(), requires_grad=False)
        if bias is not None:
            out.bias = nn.Parameter(bias.detach().to(sdt).clone(), requires_grad=False)
        return out

    def to_float(self) -> nn.Module:
        """The dequantized float layer (``nn.Linear``, or ``Conv1D`` when it replaced one).

        Example:
            >>> type(Int8Linear.from_float(torch.nn.Linear(4, 2)).to_float()).__name__
            'Linear'
        """
        w = self.weight.float() * self.weight_scale.float()
        dt = self.weight_scale.dtype
        if self.conv1d_layout:
            from transformers.pytorch_utils import Conv1D

            m: nn.Module = Conv1D(self.out_features, self.in_features)
            m.weight = nn.Parameter(w.t().contiguous().to(dt))
            if self.bias is not None:
                m.bias = nn.Parameter(self.bias.detach().clone())
            return m
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=dt)
        lin.weight = nn.Parameter(w.to(dt))
        if self.bias is not None:
            lin.bias = nn.Parameter(self.bias.detach().clone())
        return lin

    def extra_repr(self) -> str:
        mode = ("w8a8" if self.act_quant else "w8a16") + ("" if self.scheme == "int8" else f" {self.scheme}")
        extra = ", from_conv1d=True" if self.conv1d_layout else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {mode}{extra}"

    # ------------------------------------------------------------------ kernels
    def weights_key(self) -> tuple[Any, ...]:
        """Identity of the current weight/scale/bias tensors (changes when they are reassigned or edited)."""
        params = self._parameters  # (not self.weight: nn.Module.__getattr__ is slow on a per-call path)
        w, s, b = params["weight"], params["weight_scale"], params["bias"]
        # Inference tensors (made under torch.inference_mode) have no version counter.
        return (w.data_ptr(), s.data_ptr(), w.device, s.dtype,
                None if w.is_inference() else w._version, None if s.is_inference() else s._version,
                None if b is None else b.data_ptr())

    def packed(self) -> kernels.PackedWeight:
        """The :class:`~llmpack.runtime.kernels.PackedWeight` of the current tensors (rebuilt when they change)."""
        if torch.compiler.is_compiling() and self._packed is not None:
            return self._packed  # built by prepare(); the version checks would break the graph
        key = self.weights_key()
        if key != self._packed_key or self._packed is None:
            self._packed = kernels.PackedWeight(self.weight, self.weight_scale, self.bias)
            self._packed_key = key
        return self._packed

    def kernel(self, device_type: str, tokens: int | None = None) -> str:
        """The kernel this layer runs on a ``device_type`` input of ``tokens`` tokens."""
        if torch.compiler.is_compiling() and self._kernel is not None:
            return kernels.prepared_kernel(self._kernel, self._kernel_few, tokens)
        return kernels.kernel_for(device_type, self.in_features, self.out_features, tokens)

    def prepare(self) -> "Int8Linear":
        """Choose the kernel and build what it reads now instead of on the first forward (:func:`prepare_int8`
        and ``torch.compile`` need it).

        Example:
            >>> Int8Linear.from_float(torch.nn.Linear(8, 4)).prepare().out_features
            4
        """
        dev = self.weight.device.type
        self._kernel = kernels.kernel_for(dev, self.in_features, self.out_features)
        self._kernel_few = kernels.kernel_for(dev, self.in_features, self.out_features, 1)
        packed = self.packed()
        if self.act_quant:
            packed.prepare(self._kernel)
            if self._kernel_few != self._kernel:
                packed.prepare(self._kernel_few)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = x W^T + b`` with int8 weights (and int8 per-token activations when ``act_quant``)."""
        if self._group is not None:
            if torch.compiler.is_compiling():
                if self._kernel is not None and id(self) in self._group._index:
                    tokens = x.numel() // x.shape[-1]
                    return self._group.traced_output(self, x, self.kernel(x.device.type, tokens))
            else:
                y = self._group.output(self, x)
                if y is not None:
                    return y
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        kernel = self.kernel(x2.device.type, x2.shape[0])
        if self.act_quant:
            y = kernels.w8a8(x2, [self.packed()], kernel, x.dtype)[0].to(x.dtype)
        else:
            y = kernels.w8a16(x2, self.packed(), kernel)
        return y.reshape(*shape[:-1], self.out_features)


class Fp8Linear(Int8Linear):
    """An :class:`Int8Linear` whose weight is FP8 E4M3 (``torch.float8_e4m3fn``) with one scale per output channel;
    W8A8 quantizes activations to FP8 per token (compressed-tensors ``float-quantized``, llm-compressor's
    ``FP8_DYNAMIC``), ``act_quant=False`` keeps them float.

    Kernels (:func:`~llmpack.runtime.kernels.fp8_kernel_for`): ``torch._scaled_mm`` with row-wise scales on CUDA
    GPUs with FP8 tensor cores; elsewhere the reference arithmetic, said once per process (correct, slow).

    Example:
        >>> m = Fp8Linear.from_float(torch.nn.Linear(64, 32))
        >>> m.weight.dtype, m(torch.randn(2, 64)).shape
        (torch.float8_e4m3fn, torch.Size([2, 32]))
    """

    scheme = "fp8"

    def kernel(self, device_type: str, tokens: int | None = None) -> str:
        """The FP8 kernel for a ``device_type`` input (the same for every token count)."""
        if torch.compiler.is_compiling() and self._kernel is not None:
            return self._kernel
        from llmpack.runtime.kernels.select import cuda_capability, fallback_reason, warn_once

        dev = self.weight.device
        cap = cuda_capability(dev.index or 0) if device_type == "cuda" else None
        kernel = kernels.fp8_kernel_for(device_type, cap, self.in_features, self.out_features, self.act_quant)
        reason = fallback_reason("fp8", device_type, cap, kernel)
        if reason is not None:
            warn_once(reason)
        return kernel

    def prepare(self) -> "Fp8Linear":
        """Choose the kernel now (nothing to pack: the kernels read the FP8 weight as stored)."""
        self._kernel = self.kernel(self.weight.device.type)
        self.packed()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = x W^T + b`` with FP8 weights (and FP8 per-token activations when ``act_quant``)."""
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = kernels.fp8_linear(x2, self.packed(), self.kernel(x2.device.type), self.act_quant)
        return y.reshape(*shape[:-1], self.out_features)


def linear_class(scheme: str) -> type[Int8Linear]:
    """The module class of a weight scheme.

    Example:
        >>> linear_class("fp8").__name__
        'Fp8Linear'
    """
    return {"int8": Int8Linear, "fp8": Fp8Linear}[get_scheme(scheme).name]
