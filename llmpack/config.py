"""Frozen, validated configuration objects: quantization methods and recipes."""

from __future__ import annotations

import dataclasses
import re
from enum import Enum
from typing import Any, Mapping, TypeVar

from llmpack._dtypes import FLOAT_SHORT_NAMES, short_name
from llmpack.constants import DEFAULT_MAX_SHARD_SIZE
from llmpack.errors import ConfigError

__all__ = ["Method", "Recipe", "parse_size", "settings_from_keywords"]

RECIPE_VERSION = 1


class Method(str, Enum):
    """Quantization methods.

    Example:
        >>> Method.parse("int8-dynamic")
        <Method.INT8: 'int8'>
    """

    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"  # W8A8: per-channel int8 weights, per-token dynamic int8 activations
    INT8_WEIGHT_ONLY = "int8-weight-only"  # W8A16
    FP8 = "fp8"  # FP8 E4M3 weights per channel, per-token dynamic FP8 activations (compressed-tensors float-quantized)
    FP8_WEIGHT_ONLY = "fp8-weight-only"  # FP8 E4M3 weights, float activations

    @classmethod
    def parse(cls, value: "str | Method") -> "Method":
        """Parse a method name (accepts aliases such as ``int8-dynamic``, ``w8a8``, ``w8a16``)."""
        if isinstance(value, Method):
            return value
        key = str(value).strip().lower().replace("_", "-")
        aliases = {
            "int8-dynamic": "int8",
            "w8a8": "int8",
            "w8a16": "int8-weight-only",
            "int8-wo": "int8-weight-only",
            "fp8-dynamic": "fp8",
            "float8": "fp8",
            "fp8-wo": "fp8-weight-only",
        }
        key = aliases.get(key) or short_name(key)
        try:
            return cls(key)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ConfigError(f"unknown method {value!r}: choose one of {valid}") from None

    @property
    def is_int8(self) -> bool:
        """An int8 method (W8A8 or W8A16)."""
        return self in (Method.INT8, Method.INT8_WEIGHT_ONLY)

    @property
    def is_quantized(self) -> bool:
        """A method that stores linear weights in 8 bits (int8 or fp8, with or without activations).

        Example:
            >>> Method.FP8.is_quantized, Method.BF16.is_quantized
            (True, False)
        """
        return self.scheme is not None

    @property
    def scheme(self) -> str | None:
        """The 8-bit weight format: ``"int8"``, ``"fp8"`` or ``None`` (float methods).

        Example:
            >>> Method.parse("fp8-dynamic").scheme
            'fp8'
        """
        return {Method.INT8: "int8", Method.INT8_WEIGHT_ONLY: "int8",
                Method.FP8: "fp8", Method.FP8_WEIGHT_ONLY: "fp8"}.get(self)

    @property
    def act_quant(self) -> bool:
        """Activations are quantized too (W8A8: ``int8``, ``fp8``); weight-only and float methods: ``False``."""
        return self in (Method.INT8, Method.FP8)

    @property
    def weight_only_action(self) -> str | None:
        """The action of a weight-only layer of this method's scheme (``"int8-weight-only"`` ...)."""
        return None if self.scheme is None else f"{self.scheme}-weight-only"


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1, "B": 1,
    "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
    "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40,
}


def parse_size(value: "int | str") -> int:
    """Parse a byte size such as ``"2GB"``, ``"512MB"``, ``"1.5GiB"`` or ``1000``.

    Example:
        >>> parse_size("512MB")
        512000000
    """
    if isinstance(value, bool):
        raise ConfigError(f"invalid size {value!r}: use e.g. '2GB' or a number of bytes")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m or m.group(2).upper() not in _UNITS:
            raise ConfigError(f"invalid size {value!r}: use e.g. '2GB', '512MB' or a number of bytes")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ConfigError(f"invalid size {value!r}: must be positive")
    return n


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides the bytes of a quantized output. Recorded in ``llmpack.json``.

    Args:
        method: the quantization method.
        max_shard_size: largest shard in bytes (``"2GB"`` style strings accepted).
        ignore: glob / regex patterns (``re:`` prefix) of tensor or module names kept as in the source.
        float_dtype: dtype for tensors that stay float in an int8 / fp8 recipe (``None`` = source dtype).
        quantize_embeddings: int8 methods: store embedding tables weight-only int8 (per-row scale), and an
            untied output head weight-only int8 (per-channel scale; a tied head reads the int8 table).
        fp16_overflow: ``"error"`` refuses a model whose FP16 weights/activations overflow;
            ``"keep"`` keeps the offending modules in float32.
        max_ppl_increase: int8 / fp8 accuracy budget, percent perplexity increase on calibration text, judged on
            the KL-implied increase ``100 (exp(KL) - 1)`` (docs/accuracy-budget.md).
        max_kl: int8 accuracy budget as mean KL divergence (nats) instead.
        smooth: SmoothQuant migration strength alpha (``None`` = chosen by the budget search / off).

    Example:
        >>> Recipe(method="bf16", max_shard_size="512MB").max_shard_size
        512000000
    """

    method: Method = Method.FP16
    max_shard_size: int = dataclasses.field(default_factory=lambda: parse_size(DEFAULT_MAX_SHARD_SIZE))
    ignore: tuple[str, ...] = ()
    float_dtype: str | None = None
    quantize_embeddings: bool = False
    fp16_overflow: str = "error"
    max_ppl_increase: float | None = None
    max_kl: float | None = None
    smooth: float | None = None
    version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", Method.parse(self.method))
        object.__setattr__(self, "max_shard_size", parse_size(self.max_shard_size))
        if isinstance(self.ignore, str):
            object.__setattr__(self, "ignore", (self.ignore,))
        object.__setattr__(self, "ignore", tuple(str(p) for p in self.ignore))
        if self.float_dtype is not None:
            fd = str(self.float_dtype).lower()
            fd = short_name(fd)
            if fd not in FLOAT_SHORT_NAMES:
                raise ConfigError(f"invalid float_dtype {self.float_dtype!r}: choose fp16, bf16 or fp32")
            object.__setattr__(self, "float_dtype", fd)
        if self.fp16_overflow not in ("error", "keep"):
            raise ConfigError(f"invalid fp16_overflow {self.fp16_overflow!r}: choose 'error' or 'keep'")
        for name in ("max_ppl_increase", "max_kl"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or v < 0):
                raise ConfigError(f"invalid {name} {v!r}: must be a non-negative number")
        if self.smooth is not None and not (0.0 <= float(self.smooth) <= 1.0):
            raise ConfigError(f"invalid smooth {self.smooth!r}: SmoothQuant alpha must lie in [0, 1]")
        if (self.max_ppl_increase is not None or self.max_kl is not None) and not self.method.is_quantized:
            raise ConfigError(
                f"max_ppl_increase / max_kl apply to int8 methods and fp8 methods, not {self.method.value}"
            )
        if self.quantize_embeddings and not self.method.is_int8:
            raise ConfigError(f"quantize_embeddings applies to int8 methods, not {self.method.value}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        d = dataclasses.asdict(self)
        d["method"] = self.method.value
        d["ignore"] = list(self.ignore)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Recipe":
        """Rebuild a recipe from :meth:`to_dict` output; unknown keys are refused."""
        return settings_from_dict(cls, d, "recipe keys")


_S = TypeVar("_S")


def settings_from_dict(cls: "type[_S]", d: Mapping[str, Any], what: str) -> _S:
    """``cls(**d)`` for a frozen settings dataclass, refusing keys it does not have (one :class:`ConfigError`
    naming ``what`` and the valid keys).

    Example:
        >>> settings_from_dict(Recipe, {"method": "int8", "speed": 2}, "recipe keys")
        Traceback (most recent call last):
        ...
        llmpack.errors.ConfigError: unknown recipe keys ['speed']: valid keys are ['float_dtype', 'fp16_overflow', 'ignore', 'max_kl', 'max_ppl_increase', 'max_shard_size', 'method', 'quantize_embeddings', 'smooth', 'version']
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown {what} {sorted(unknown)}: valid keys are {sorted(names)}")
    return cls(**dict(d))


def settings_from_keywords(cls: "type[_S]", given: "_S | None", keywords: Mapping[str, Any], *,
                           arg: str = "settings") -> _S:
    """``given``, or ``cls(**keywords)``: how a function that takes both a settings object (``arg=``) and the
    keyword arguments it bundles decides (``measure(settings=...)``, ``pack(options=...)``).

    A keyword left at the field's default does not count; any other one together with ``given`` is refused,
    so a call never silently mixes the two.

    Raises:
        ConfigError: ``given`` is not a ``cls``, or comes with a keyword that differs from its default.

    Example:
        >>> settings_from_keywords(Recipe, None, {"method": "bf16"}).method
        <Method.BF16: 'bf16'>
        >>> settings_from_keywords(Recipe, Recipe(method="bf16"), {"method": "int8"})
        Traceback (most recent call last):
        ...
        llmpack.errors.ConfigError: pass settings= or the keyword arguments, not both: method given with settings
    """
    if given is None:
        return cls(**keywords)
    if not isinstance(given, cls):
        raise ConfigError(f"{arg} must be a {cls.__name__}, got {type(given).__name__}")
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    both = sorted(k for k, v in keywords.items() if not _same(v, defaults[k]))
    if both:
        raise ConfigError(f"pass {arg}= or the keyword arguments, not both: {', '.join(both)} given with {arg}")
    return given


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        if isinstance(a, Mapping) or isinstance(b, Mapping):
            return dict(a or {}) == dict(b or {})
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return tuple(a) == tuple(b)
        return bool(a == b)
    except (RuntimeError, TypeError, ValueError):  # no usable == (tensors): only identity counts
        return False
