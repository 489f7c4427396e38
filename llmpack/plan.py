"""Per-tensor decisions: a pure function from names, shapes, dtypes, module types and config.

No I/O and no tensor data: unit-testable with fake shapes. Ignore patterns, "keep this module in a
wider dtype" (the FP16 activation-overflow fallback) and int8 selection land here.

Ignore patterns are ``fnmatch`` globs, or regular expressions prefixed with ``re:``; they are tried
against the tensor name and its module name (``model.layers.0.mlp.down_proj.weight`` belongs to module
``model.layers.0.mlp.down_proj``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import re
from typing import Any, Iterable, Mapping, Protocol

import torch

from llmpack.config import Method, Recipe
from llmpack.errors import ConfigError

__all__ = ["TensorDecision", "plan", "match_pattern", "module_of", "decisions_to_dict"]


class _InfoLike(Protocol):
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class TensorDecision:
    """What happens to one source tensor.

    Attributes:
        name: source tensor name.
        action: a registered action (``keep``, ``cast``, ``int8`` ...), see :mod:`llmpack.quant.registry`.
        out_dtype: ``"fp16"``/``"bf16"``/``"fp32"`` for casts, ``None`` to keep the source dtype, or an
            action-specific value (``"int8"``).
        module: owning module name (the tensor name without its last component).
        reason: a short human reason, recorded in ``llmpack.json``.
        extra: action-specific settings (JSON-ready).
        shape / in_dtype: the source tensor's shape and dtype (filled by :func:`plan`).

    Example:
        >>> TensorDecision("lm_head.weight", "cast", "bf16", "lm_head", "method bf16").to_dict()["action"]
        'cast'
    """

    name: str
    action: str
    out_dtype: str | None
    module: str
    reason: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    shape: tuple[int, ...] = ()
    in_dtype: torch.dtype | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for ``llmpack.json`` (without name, shape and source dtype)."""
        d: dict[str, Any] = {"action": self.action, "out_dtype": self.out_dtype, "module": self.module,
                             "reason": self.reason}
        if self.extra:
            d["extra"] = self.extra
        return d


def module_of(name: str) -> str:
    """The module a tensor belongs to.

    Example:
        >>> module_of("model.layers.0.mlp.down_proj.weight")
        'model.layers.0.mlp.down_proj'
    """
    return name.rsplit(".", 1)[0] if "." in name else ""


def match_pattern(pattern: str, name: str) -> bool:
    """Glob match, or ``re:``-prefixed regular expression search.

    Example:
        >>> match_pattern("*.mlp.*", "model.layers.0.mlp.up_proj")
        True
        >>> match_pattern("re:layers\\\\.(0|1)\\\\.", "model.layers.1.mlp")
        True
    """
    if pattern.startswith("re:"):
        try:
            return re.search(pattern[3:], name) is not None
        except re.error as e:
            raise ConfigError(f"invalid ignore regex {pattern!r}: {e}") from None
    return fnmatch.fnmatchcase(name, pattern)


def _ignored_by(recipe: Recipe, name: str, module: str) -> str | None:
    for p in recipe.ignore:
        if match_pattern(p, name) or (module and match_pattern(p, module)):
            return p
    return None


def _kept_by(keep_float: Mapping[str, str], module: str) -> str | None:
    for m in keep_float:
        if module == m or module.startswith(m + ".") or m == "":
            return m
    return None


def plan(
    infos: Iterable[_InfoLike],
    module_types: Mapping[str, str],
    recipe: Recipe,
    config: Mapping[str, Any] | None = None,
    *,
    keep_float: Mapping[str, str] | None = None,
    weight_only: Iterable[str] = (),
    skip: Iterable[str] = (),
) -> list[TensorDecision]:
    """Decide, per tensor, how it is written. Pure.

    Args:
        infos: tensor descriptions (name, shape, dtype), in write order.
        module_types: module name -> class name (``"Linear"``, ``"Conv1D"``, ``"Embedding"`` ...).
        recipe: the recipe.
        config: the model's ``config.json`` dict (may be ``None``).
        keep_float: module name -> reason: keep the tensors of those modules (and their submodules)
            in float32 (the FP16 activation-overflow fallback).
        weight_only: int8 methods: Linear modules stored W8A16 inside a W8A8 model
            (the accuracy budget's :attr:`~llmpack.quant.budget.Int8Decisions.weight_only`).
        skip: int8 methods: Linear modules kept in float (the budget's ``keep_float``); their tensors
            get the float decision (source dtype or ``recipe.float_dtype``).

    Returns:
        One :class:`TensorDecision` per input tensor, same order.

    Example:
        >>> class I:  # any object with name / shape / dtype
        ...     def __init__(s, n): s.name, s.shape, s.dtype = n, (4, 4), torch.float32
        >>> [d.out_dtype for d in plan([I("a.weight"), I("b.weight")], {}, Recipe(method="bf16", ignore=("b",)))]
        ['bf16', None]
    """
    infos = list(infos)
    keep_float = dict(keep_float or {})
    method = recipe.method
    out: list[TensorDecision] = []
    for info in infos:
        name, module = info.name, module_of(info.name)
        base = dict(shape=tuple(info.shape), in_dtype=info.dtype)
        pat = _ignored_by(recipe, name, module)
        if pat is not None:
            out.append(TensorDecision(name, "keep", None, module, f"ignored by pattern {pat!r}", **base))
            continue
        if not info.dtype.is_floating_point:
            out.append(TensorDecision(name, "keep", None, module, "not a float tensor", **base))
            continue
        kept = _kept_by(keep_float, module)
        if kept is not None:
            action = "keep" if info.dtype == torch.float32 else "cast"
            out.append(TensorDecision(name, action, "fp32", module, keep_float[kept], **base))
            continue
        if method in (Method.FP16, Method.BF16):
            out.append(TensorDecision(name, "cast", method.value, module, f"method {method.value}", **base))
        else:
            fd = recipe.float_dtype
            if fd is None:
                out.append(TensorDecision(name, "keep", None, module, "float (source dtype)", **base))
            else:
                out.append(TensorDecision(name, "cast", fd, module, f"float_dtype {fd}", **base))
    if method.is_quantized:
        out = _int8_decide(infos, module_types, recipe, config, out, weight_only=weight_only, skip=skip)
    elif tuple(weight_only) or tuple(skip):
        raise ConfigError(f"weight_only / skip apply to int8 and fp8 methods, not {method.value}")
    return out


def _int8_decide(infos: list[Any], module_types: Mapping[str, str], recipe: Recipe,
                 config: Mapping[str, Any] | None, float_decisions: list[TensorDecision], *,
                 weight_only: Iterable[str] = (), skip: Iterable[str] = ()) -> list[TensorDecision]:
    try:
        mod = importlib.import_module("llmpack.quant.int8_plan")
    except ModuleNotFoundError as e:
        if e.name != "llmpack.quant.int8_plan":
            raise
        raise ConfigError(f"method {recipe.method.value} is not available in this build (llmpack.quant.int8_plan is missing)") from None
    decided = mod.decide(infos=infos, module_types=dict(module_types), recipe=recipe, config=config,
                         float_decisions=float_decisions, weight_only=weight_only, skip=skip)
    by_name = {i.name: i for i in infos}
    fixed = []
    for d in decided:
        if not d.shape and d.name in by_name:
            d = dataclasses.replace(d, shape=tuple(by_name[d.name].shape), in_dtype=by_name[d.name].dtype)
        elif d.in_dtype is None and d.name in by_name:
            d = dataclasses.replace(d, in_dtype=by_name[d.name].dtype)
        fixed.append(d)
    return fixed


def decisions_to_dict(decisions: Iterable[TensorDecision]) -> dict[str, Any]:
    """``{tensor name: decision record}`` for ``llmpack.json``."""
    return {d.name: d.to_dict() for d in decisions}
