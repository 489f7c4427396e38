"""The one table of dtype names: torch names, llmpack's short names, safetensors codes and element sizes.

Every place that turns one dtype name into another reads this table: recipes (``float_dtype="bfloat16"``
-> ``"bf16"``), the output ``config.json`` (``"bf16"`` -> ``"bfloat16"``), report labels, the ModelPack
precision, and the safetensors reader/validator (``"BF16"`` -> ``torch.bfloat16``, 2 bytes).
This module imports no torch: it maps names to names; :func:`torch_dtype` resolves a name lazily.

Example:
    >>> short_name("bfloat16"), long_name("fp16"), ST_SIZES["BF16"]
    ('bf16', 'float16', 2)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FLOAT_SHORT_NAMES",
    "ST_SIZES",
    "ST_TORCH_NAMES",
    "short_name",
    "long_name",
    "torch_name",
    "torch_dtype",
]

# torch name, short name, safetensors code, bytes per element
_TABLE: tuple[tuple[str, str, str, int], ...] = (
    ("float64", "fp64", "F64", 8),
    ("float32", "fp32", "F32", 4),
    ("float16", "fp16", "F16", 2),
    ("bfloat16", "bf16", "BF16", 2),
    ("float8_e4m3fn", "float8_e4m3fn", "F8_E4M3", 1),
    ("float8_e5m2", "float8_e5m2", "F8_E5M2", 1),
    ("int64", "int64", "I64", 8),
    ("int32", "int32", "I32", 4),
    ("int16", "int16", "I16", 2),
    ("int8", "int8", "I8", 1),
    ("uint8", "uint8", "U8", 1),
    ("bool", "bool", "BOOL", 1),
)
# torch's own aliases (``torch.float is torch.float32``, ``torch.half is torch.float16``)
_ALIASES = {"float": "float32", "half": "float16"}

FLOAT_SHORT_NAMES = ("fp16", "bf16", "fp32")
"""The float dtypes a recipe may name (``method``, ``float_dtype``)."""

ST_SIZES: dict[str, int] = {st: size for _, _, st, size in _TABLE}
"""safetensors dtype code -> bytes per element, for every dtype llmpack reads."""

ST_TORCH_NAMES: dict[str, str] = {st: name for name, _, st, _ in _TABLE}
"""safetensors dtype code -> torch dtype name (``"BF16"`` -> ``"bfloat16"``)."""

_SHORT: dict[str, str] = {name: short for name, short, _, _ in _TABLE}
_SHORT.update({alias: _SHORT[name] for alias, name in _ALIASES.items()})
_LONG: dict[str, str] = {short: name for name, short, _, _ in _TABLE}


def short_name(name: str) -> str:
    """A torch dtype name (or alias) -> llmpack's short name; any other string is returned unchanged.

    Example:
        >>> short_name("float32"), short_name("half"), short_name("int8"), short_name("fp16"), short_name("x")
        ('fp32', 'fp16', 'int8', 'fp16', 'x')
    """
    return _SHORT.get(name, name)


def long_name(short: str) -> str:
    """llmpack's short name -> the torch dtype name (as ``config.json`` writes it).

    Raises:
        KeyError: ``short`` is not a short name of this table.

    Example:
        >>> long_name("bf16")
        'bfloat16'
    """
    return _LONG[short]


def torch_name(dtype: Any) -> str:
    """A ``torch.dtype`` -> its name without the ``torch.`` prefix.

    Example:
        >>> import torch
        >>> torch_name(torch.int8), torch_name(torch.half)
        ('int8', 'float16')
    """
    return str(dtype).replace("torch.", "")


def torch_dtype(name: str) -> Any:
    """A torch dtype name, alias or short name -> the ``torch.dtype`` (``None`` when this torch lacks it).

    Example:
        >>> torch_dtype("bf16")
        torch.bfloat16
    """
    import torch

    dt = getattr(torch, _LONG.get(name, _ALIASES.get(name, name)), None)
    return dt if isinstance(dt, torch.dtype) else None
