"""Per-tensor planning: a pure function from names, shapes, dtypes, module types and config to decisions.

No I/O and no tensor data: unit-testable with fake shapes. :func:`plan` decides, per tensor, which action
(:class:`~llmpack.quant.actions.ActionName`) writes it: ignore patterns, "keep this module in a wider dtype"
(the FP16 activation-overflow fallback), float casts, and for 8-bit methods which weights become int8 / fp8
(W8A8 or weight-only), which embedding tables become int8 and which stay float. What the accuracy-budget
search measured (:func:`llmpack.tune.budget.search_budget`) comes in as ``skip`` / ``weight_only``.

8-bit defaults: every ``nn.Linear`` and GPT-2 ``Conv1D`` weight is quantized per output channel, except
output heads (``lm_head``, ``embed_out``, ``output``), which stay float with embeddings and norms.
``quantize_embeddings`` (int8 methods) stores ``nn.Embedding`` tables int8 per row and an untied output head
int8 weight-only per channel (a tied head reads the int8 table). Ignore patterns keep a tensor exactly as in the
source.

Ignore patterns are ``fnmatch`` globs, or regular expressions prefixed with ``re:``; they are tried
against the tensor name and its module name (``model.layers.0.mlp.down_proj.weight`` belongs to module
``model.layers.0.mlp.down_proj``).

Example:
    >>> from llmpack.config import Recipe
    >>> class I:
    ...     def __init__(s, n, shape): s.name, s.shape, s.dtype = n, shape, torch.float32
    >>> infos = [I("fc.weight", (8, 4)), I("fc.bias", (8,)), I("lm_head.weight", (100, 8))]
    >>> [d.action for d in plan(infos, {"fc": "Linear", "lm_head": "Linear"}, Recipe(method="int8"))]
    ['int8', 'keep', 'keep']
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from enum import Enum
from typing import Any, Iterable, Mapping, Protocol, Sequence

import torch

from llmpack._dtypes import short_name, torch_name
from llmpack._nn import CONV1D, is_conv1d_name
from llmpack.config import Method, Recipe
from llmpack.errors import ConfigError
from llmpack.quant.ct_config import build_quantization_config

__all__ = [
    "ActionName", "QUANT_ACTIONS", "CONV1D_LAYOUT", "TensorDecision", "plan", "match_pattern", "ignored_by", "module_of", "decisions_to_dict", "quantized_modules",
    "quantization_config", "LINEAR_TYPES", "EMBEDDING_TYPES", "OUTPUT_HEAD_NAMES",
]

CONV1D_LAYOUT = "conv1d"
"""``decision.extra["layout"]`` of a GPT-2 ``Conv1D`` weight, transposed to ``[out, in]`` when quantized."""

class ActionName(str, Enum):
    """Every action a :class:`~llmpack.quant.plan.TensorDecision` can name (its ``action`` holds the value).

    Example:
        >>> ActionName("fp8-weight-only").is_quantized, ActionName.CAST.is_quantized
        (True, False)
    """

    KEEP = "keep"
    CAST = "cast"
    INT8 = "int8"
    INT8_WEIGHT_ONLY = "int8-weight-only"
    INT8_EMBEDDING = "int8-embedding"
    FP8 = "fp8"
    FP8_WEIGHT_ONLY = "fp8-weight-only"

    @property
    def is_quantized(self) -> bool:
        """The action stores a weight in 8 bits plus its ``weight_scale``."""
        return self not in (ActionName.KEEP, ActionName.CAST)


QUANT_ACTIONS: frozenset[str] = frozenset(a.value for a in ActionName if a.is_quantized)
"""Every action that stores a weight in 8 bits plus its ``weight_scale`` (as plain strings)."""


LINEAR_TYPES = ("Linear", CONV1D)
EMBEDDING_TYPES = ("Embedding",)
OUTPUT_HEAD_NAMES = ("lm_head", "embed_out", "output")


class _InfoLike(Protocol):
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


@dataclasses.dataclass(frozen=True)
class TensorDecision:
    """What happens to one source tensor.

    Attributes:
        name: source tensor name.
        action: an :class:`~llmpack.quant.actions.ActionName` value (``keep``, ``cast``, ``int8`` ...).
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


def ignored_by(recipe: Recipe, name: str, module: str) -> str | None:
    """The recipe's first ignore pattern that matches the tensor ``name`` or its ``module`` (``None``: none does).

    Example:
        >>> ignored_by(Recipe(method="int8", ignore=("*.mlp.*",)), "layers.0.mlp.up.weight", "layers.0.mlp.up")
        '*.mlp.*'
    """
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
    float_storage: Mapping[str, str] | None = None,
) -> list[TensorDecision]:
    """Decide, per tensor, how it is written. Pure.

    Args:
        infos: tensor descriptions (name, shape, dtype), in write order.
        module_types: module name -> class name (``"Linear"``, ``"Conv1D"``, ``"Embedding"`` ...).
        recipe: the recipe.
        config: the model's ``config.json`` dict (may be ``None``).
        keep_float: module name -> reason: keep the tensors of those modules (and their submodules)
            in float32 (the FP16 activation-overflow fallback).
        weight_only: 8-bit methods: Linear modules stored W8A16 inside a W8A8 model
            (the budget search's :attr:`~llmpack.quant.decisions.Int8Decisions.weight_only`).
        skip: 8-bit methods: Linear modules kept in float (the budget's ``keep_float``); their tensors
            get the float decision (source dtype or ``recipe.float_dtype``).
        float_storage: 8-bit methods: skipped module -> the float dtype its weight is stored in when the source's is
            wider (the budget's :attr:`~llmpack.quant.decisions.Int8Decisions.float_storage`, e.g. bf16 for FP32).

    Returns:
        One :class:`TensorDecision` per input tensor, same order.

    Raises:
        ConfigError: ``weight_only`` / ``skip`` for a float method; an 8-bit method without module types.

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
        pat = ignored_by(recipe, name, module)
        if pat is not None:
            out.append(TensorDecision(name, ActionName.KEEP.value, None, module, f"ignored by pattern {pat!r}", **base))
            continue
        if not info.dtype.is_floating_point:
            out.append(TensorDecision(name, ActionName.KEEP.value, None, module, "not a float tensor", **base))
            continue
        kept = _kept_by(keep_float, module)
        if kept is not None:
            action = ActionName.KEEP if info.dtype == torch.float32 else ActionName.CAST
            out.append(TensorDecision(name, action.value, "fp32", module, keep_float[kept], **base))
            continue
        if method in (Method.FP16, Method.BF16):
            out.append(TensorDecision(name, ActionName.CAST.value, method.value, module, f"method {method.value}", **base))
        elif recipe.float_dtype is None:
            out.append(TensorDecision(name, ActionName.KEEP.value, None, module, "float (source dtype)", **base))
        else:
            fd = recipe.float_dtype
            out.append(TensorDecision(name, ActionName.CAST.value, fd, module, f"float_dtype {fd}", **base))
    if method.is_quantized:
        return _decide_8bit(infos, module_types, recipe, out, weight_only=weight_only, skip=skip,
                            float_storage=float_storage or {})
    if tuple(weight_only) or tuple(skip) or float_storage:
        raise ConfigError(f"weight_only / skip / float_storage apply to int8 and fp8 methods, not {method.value}")
    return out


def _is_output_head(module: str) -> bool:
    # By name only: a vocabulary-size test would also catch MLPs whose width happens to equal the vocab.
    return module.rsplit(".", 1)[-1] in OUTPUT_HEAD_NAMES


def _scale_dtype_name(recipe: Recipe, in_dtype: torch.dtype) -> str:
    if recipe.float_dtype:
        return recipe.float_dtype
    name = short_name(torch_name(in_dtype))
    return name if name in ("fp16", "bf16") else "fp32"


def _decide_8bit(
    infos: Sequence[_InfoLike],
    module_types: Mapping[str, str],
    recipe: Recipe,
    float_decisions: Sequence[TensorDecision],
    *,
    weight_only: Iterable[str] = (),
    skip: Iterable[str] = (),
    float_storage: Mapping[str, str],
) -> list[TensorDecision]:
    """Turn the float decisions into 8-bit decisions where the recipe asks for them (``skip`` stays float, its
    weights narrowed per ``float_storage`` where the source is wider)."""
    scheme = recipe.method.scheme
    if scheme is None:
        raise ConfigError(f"8-bit planning called for the float method {recipe.method.value}")
    if not module_types:
        raise ConfigError(
            f"{recipe.method.value} needs the model architecture to find Linear layers, but it could not be built from config.json "
            "(missing 'architectures'?): pass an HF model directory with a complete config.json"
        )
    wo, sk = set(weight_only), set(skip)
    wo_action = ActionName(f"{scheme}-weight-only")
    linear_action = ActionName(scheme) if recipe.method.act_quant else wo_action
    out: list[TensorDecision] = []
    for info, fd in zip(infos, float_decisions):
        name, module = info.name, module_of(info.name)
        mtype = module_types.get(module, "")
        is_weight = name.endswith(".weight") and len(tuple(info.shape)) == 2 and info.dtype.is_floating_point
        ignored = fd.action == ActionName.KEEP and fd.reason.startswith("ignored")
        if not is_weight or ignored or fd.out_dtype == "fp32" and fd.reason.startswith("FP16"):
            out.append(fd)
            continue
        base = dict(shape=tuple(info.shape), in_dtype=info.dtype)
        sdt = _scale_dtype_name(recipe, info.dtype)
        if mtype in LINEAR_TYPES:
            if module in sk:
                fd = dataclasses.replace(fd, reason=f"{fd.reason}; kept float (skip)")
                dt = float_storage.get(module)
                if dt is not None and fd.action in (ActionName.KEEP, ActionName.CAST) and info.dtype.itemsize > 2:
                    fd = dataclasses.replace(fd, action=ActionName.CAST.value, out_dtype=dt,
                                             reason=f"{fd.reason}; stored {dt} (budget fallback)")
                out.append(fd)
            elif _is_output_head(module) and not recipe.quantize_embeddings:  # (an int8-only option, Recipe checks)
                out.append(dataclasses.replace(fd, reason=f"{fd.reason}; output head stays float"))
            else:
                # an output head here is untied, with its own tensor: weight-only, like its embedding table
                head = _is_output_head(module)
                action = wo_action if head or module in wo else linear_action
                extra: dict[str, Any] = {"scale_dtype": sdt, "module_type": mtype}
                if is_conv1d_name(mtype):
                    extra["layout"] = CONV1D_LAYOUT
                mode = "w8a16" if action == wo_action else "w8a8"
                reason = f"{scheme} per-channel ({mode})" + (": output head (quantize_embeddings)" if head else "")
                out.append(TensorDecision(name, action.value, scheme, module, reason, extra, **base))
        elif mtype in EMBEDDING_TYPES and recipe.quantize_embeddings and module not in sk:
            out.append(TensorDecision(name, ActionName.INT8_EMBEDDING.value, "int8", module, "int8 embedding (per-row scale)",
                                      {"scale_dtype": sdt, "module_type": mtype}, **base))
        else:
            out.append(fd)
    return out


def quantized_modules(decisions: Iterable[TensorDecision]) -> dict[str, str]:
    """module name -> 8-bit action for the decisions that quantize a weight.

    Example:
        >>> quantized_modules([TensorDecision("fc.weight", "int8", "int8", "fc", "r")])
        {'fc': 'int8'}
    """
    return {d.module: d.action for d in decisions if d.action in QUANT_ACTIONS}


def quantization_config(cfg: Mapping[str, Any], decisions: Sequence[TensorDecision], recipe: Recipe,
                        module_types: Mapping[str, str]) -> dict[str, Any]:
    """``config.json`` with the compressed-tensors ``quantization_config`` for these decisions. Pure.

    The ``ignore`` list names every ``nn.Linear`` that stays float (output heads, ignored or skipped
    layers, tied heads that have no tensor of their own).

    Example:
        >>> cfg = quantization_config({}, [], Recipe(method="int8"), {"fc": "Linear", "lm_head": "Linear"})
        >>> cfg["quantization_config"]["ignore"]
        ['fc', 'lm_head']
    """
    mods = quantized_modules(decisions)
    linear = [m for m, t in module_types.items() if t == "Linear"]
    ignore = sorted(m for m in linear if m not in mods)
    weight_only = ([m for m, a in mods.items() if a == recipe.method.weight_only_action]
                   if recipe.method.act_quant else [])
    embeddings = [m for m, a in mods.items() if a == ActionName.INT8_EMBEDDING]
    out = dict(cfg)
    out["quantization_config"] = build_quantization_config(
        recipe.method, ignore=ignore, weight_only_modules=weight_only, embeddings=embeddings
    )
    return out


def decisions_to_dict(decisions: Iterable[TensorDecision]) -> dict[str, Any]:
    """``{tensor name: decision record}`` for ``llmpack.json``."""
    return {d.name: d.to_dict() for d in decisions}
