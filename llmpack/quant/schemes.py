"""The 8-bit weight schemes llmpack writes, in one table: int8 (compressed-tensors ``int-quantized``) and FP8 E4M3
(``float-quantized``). Everything scheme-specific -- the stored dtype, the per-channel quantizer, the simulator's
fake quantization, the compressed-tensors type and format -- is looked up here, so planning,
the streaming write, the accuracy budget, the config and the runtime share one code path over the scheme.

Example:
    >>> get_scheme("fp8").ct_format, get_scheme("int8").dtype
    ('float-quantized', torch.int8)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from llmpack.constants import CT_FORMAT_FLOAT, CT_FORMAT_INT
from llmpack.errors import ConfigError

__all__ = ["Scheme", "SCHEMES", "get_scheme", "scheme_of_dtype"]


def _int8_weight(w: torch.Tensor, dim: int = 0, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    from llmpack.quant.int8 import int8_per_channel

    return int8_per_channel(w, dim, **kw)  # type: ignore[arg-type]


def _fp8_weight(w: torch.Tensor, dim: int = 0, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    from llmpack.quant.fp8 import fp8_per_channel

    return fp8_per_channel(w, dim, **kw)  # type: ignore[arg-type]


def _int8_fake_weight(w: torch.Tensor, out_dim: int = 0) -> torch.Tensor:
    from llmpack.quant.int8 import fake_quant_weight

    return fake_quant_weight(w, out_dim)


def _fp8_fake_weight(w: torch.Tensor, out_dim: int = 0) -> torch.Tensor:
    from llmpack.quant.fp8 import fake_quant_fp8

    return fake_quant_fp8(w, 1 - out_dim)


def _int8_fake_act(x: torch.Tensor, grid: "tuple[float, float, float, bool] | None" = None) -> torch.Tensor:
    from llmpack.quant.int8 import fake_quant_act

    return fake_quant_act(x, grid)


def _fp8_fake_act(x: torch.Tensor, grid: "tuple[float, float, float, bool] | None" = None) -> torch.Tensor:
    from llmpack.quant.fp8 import fake_quant_fp8

    return fake_quant_fp8(x, -1)


@dataclasses.dataclass(frozen=True)
class Scheme:
    """One 8-bit weight scheme.

    Attributes:
        name: ``"int8"`` or ``"fp8"`` (also the W8A8 action's name).
        dtype: the stored weight dtype.
        ct_type: compressed-tensors ``QuantizationArgs.type`` (``"int"`` / ``"float"``).
        ct_format: compressed-tensors format (``"int-quantized"`` / ``"float-quantized"``).
        quantize_weight: ``(w, dim, scale_dtype=, name=) -> (q, scale)``, per channel along ``dim``.
        fake_weight: ``(w, out_dim) -> w'`` quantize-dequantize per output channel (the budget's simulator).
        fake_act: ``(x, grid) -> x'`` quantize-dequantize per token; ``grid`` is the int8 activation grid the
            runtime uses (``(divisor, lo, hi, centred)``, ``None``: the file's), FP8 has one grid and ignores it.
    """

    name: str
    dtype: torch.dtype
    ct_type: str
    ct_format: str
    quantize_weight: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    fake_weight: Callable[[torch.Tensor, int], torch.Tensor]
    fake_act: Callable[..., torch.Tensor]

    @property
    def w8a8_action(self) -> str:
        return self.name

    @property
    def weight_only_action(self) -> str:
        return f"{self.name}-weight-only"


SCHEMES: dict[str, Scheme] = {
    "int8": Scheme("int8", torch.int8, "int", CT_FORMAT_INT, _int8_weight, _int8_fake_weight, _int8_fake_act),
    "fp8": Scheme("fp8", torch.float8_e4m3fn, "float", CT_FORMAT_FLOAT, _fp8_weight, _fp8_fake_weight, _fp8_fake_act),
}

def get_scheme(name: str) -> Scheme:
    """The scheme called ``name``; an unknown name lists the valid ones.

    Example:
        >>> get_scheme("int4")
        Traceback (most recent call last):
        ...
        llmpack.errors.ConfigError: unknown weight scheme 'int4': choose one of fp8, int8
    """
    try:
        return SCHEMES[name]
    except KeyError:
        raise ConfigError(f"unknown weight scheme {name!r}: choose one of {', '.join(sorted(SCHEMES))}") from None


def scheme_of_dtype(dtype: torch.dtype) -> Scheme | None:
    """The scheme whose weights are stored as ``dtype`` (``None`` for float dtypes).

    Example:
        >>> scheme_of_dtype(torch.float8_e4m3fn).name
        'fp8'
    """
    return next((s for s in SCHEMES.values() if s.dtype == dtype), None)
