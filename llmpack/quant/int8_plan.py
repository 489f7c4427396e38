"""8-bit planning: which tensors become int8 / fp8 (W8A8 / weight-only), which embedding tables become int8,
and which stay float. Called by :func:`llmpack.plan.plan` for int8 and fp8 methods (the scheme follows from the
method, :mod:`llmpack.quant.schemes`); pure (no tensor data).

Defaults: every ``nn.Linear`` and GPT-2 ``Conv1D`` weight is quantized per output channel, except
output heads (``lm_head``, ``embed_out``, ``output``), which stay float with
embeddings and norms. ``quantize_embeddings`` stores ``nn.Embedding`` tables int8 per row. Ignore
patterns keep a tensor exactly as in the source.

Example:
    >>> import torch
    >>> from llmpack.config import Recipe
    >>> from llmpack.plan import plan
    >>> class I:
    ...     def __init__(s, n, shape): s.name, s.shape, s.dtype = n, shape, torch.float32
    >>> infos = [I("fc.weight", (8, 4)), I("fc.bias", (8,)), I("lm_head.weight", (100, 8))]
    >>> [d.action for d in plan(infos, {"fc": "Linear", "lm_head": "Linear"}, Recipe(method="int8"))]
    ['int8', 'keep', 'keep']
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import llmpack.quant.int8_actions  # noqa: F401  (registers the int8 actions)
from llmpack._dtypes import short_name, torch_name
from llmpack._nn import CONV1D, is_conv1d_name
from llmpack.config import Recipe
from llmpack.errors import ConfigError
from llmpack.plan import TensorDecision, module_of
from llmpack.quant.int8_actions import CONV1D_LAYOUT
from llmpack.quant.schemes import QUANT_ACTIONS

__all__ = ["decide", "update_config", "LINEAR_TYPES", "EMBEDDING_TYPES", "OUTPUT_HEAD_NAMES", "int8_modules"]

LINEAR_TYPES = ("Linear", CONV1D)
EMBEDDING_TYPES = ("Embedding",)
OUTPUT_HEAD_NAMES = ("lm_head", "embed_out", "output")
INT8_ACTIONS = QUANT_ACTIONS  # (every 8-bit action, int8 and fp8)


def _is_output_head(module: str, shape: Sequence[int], mtype: str, config: Mapping[str, Any] | None) -> bool:
    # By name only: a vocabulary-size test would also catch MLPs whose width happens to equal the vocab.
    return module.rsplit(".", 1)[-1] in OUTPUT_HEAD_NAMES


def _scale_dtype_name(recipe: Recipe, in_dtype: Any) -> str:
    if recipe.float_dtype:
        return recipe.float_dtype
    name = short_name(torch_name(in_dtype))
    return name if name in ("fp16", "bf16") else "fp32"


def decide(
    *,
    infos: Iterable[Any],
    module_types: Mapping[str, str],
    recipe: Recipe,
    config: Mapping[str, Any] | None,
    float_decisions: Sequence[TensorDecision],
    weight_only: Iterable[str] = (),
    skip: Iterable[str] = (),
) -> list[TensorDecision]:
    """Turn the core's float decisions into int8 decisions where the recipe asks for int8. Pure.

    Args:
        infos: tensor descriptions (name, shape, dtype), in the same order as ``float_decisions``.
        module_types: module name -> class name.
        recipe: an int8 or fp8 recipe.
        config: the model's ``config.json`` dict.
        float_decisions: what :func:`llmpack.plan.plan` decided for a float method (ignore patterns applied).
        weight_only: module names stored W8A16 inside a W8A8 model.
        skip: module names kept in float (besides ignore patterns).

    Returns:
        One decision per tensor, same order.

    Raises:
        ConfigError: the recipe is not int8 / fp8, or the model's module types are unknown.
    """
    scheme = recipe.method.scheme
    if scheme is None:
        raise ConfigError(f"int8 planning called for method {recipe.method.value}")
    infos = list(infos)
    if not module_types:
        raise ConfigError(
            f"{recipe.method.value} needs the model architecture to find Linear layers, but it could not be built from config.json "
            "(missing 'architectures'?): pass an HF model directory with a complete config.json"
        )
    wo = set(weight_only)
    sk = set(skip)
    wo_action = f"{scheme}-weight-only"
    linear_action = scheme if recipe.method.act_quant else wo_action
    out: list[TensorDecision] = []
    for info, fd in zip(infos, float_decisions):
        name, module = info.name, module_of(info.name)
        mtype = module_types.get(module, "")
        is_weight = name.endswith(".weight") and len(tuple(info.shape)) == 2 and info.dtype.is_floating_point
        ignored = fd.action == "keep" and fd.reason.startswith("ignored")
        if not is_weight or ignored or fd.out_dtype == "fp32" and fd.reason.startswith("FP16"):
            out.append(fd)
            continue
        base = dict(shape=tuple(info.shape), in_dtype=info.dtype)
        sdt = _scale_dtype_name(recipe, info.dtype)
        if mtype in LINEAR_TYPES:
            if module in sk:
                out.append(dataclasses.replace(fd, reason=f"{fd.reason}; kept float (skip)"))
                continue
            if _is_output_head(module, tuple(info.shape), mtype, config):
                out.append(dataclasses.replace(fd, reason=f"{fd.reason}; output head stays float"))
                continue
            action = wo_action if module in wo else linear_action
            extra: dict[str, Any] = {"scale_dtype": sdt, "module_type": mtype}
            if is_conv1d_name(mtype):
                extra["layout"] = CONV1D_LAYOUT
            mode = "w8a16" if action == wo_action else "w8a8"
            out.append(TensorDecision(name, action, scheme, module, f"{scheme} per-channel ({mode})", extra, **base))
        elif mtype in EMBEDDING_TYPES and recipe.quantize_embeddings and module not in sk:
            out.append(TensorDecision(name, "int8-embedding", "int8", module, "int8 embedding (per-row scale)",
                                      {"scale_dtype": sdt, "module_type": mtype}, **base))
        else:
            out.append(fd)
    return out


def int8_modules(decisions: Iterable[TensorDecision]) -> dict[str, str]:
    """module name -> int8 action for the decisions that quantize a weight."""
    return {d.module: d.action for d in decisions if d.action in INT8_ACTIONS}


def update_config(cfg: Mapping[str, Any], decisions: Sequence[TensorDecision], recipe: Recipe,
                  module_types: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``config.json`` with the compressed-tensors ``quantization_config`` for these decisions.

    The ``ignore`` list names every ``nn.Linear`` that stays float (output heads, ignored or skipped
    layers, tied heads that have no tensor of their own). Module types are taken from
    ``module_types`` or rebuilt from ``cfg`` on the meta device.

    Example:
        >>> from llmpack.testing import tiny_config
        >>> cfg = dict(tiny_config("llama").to_dict(), architectures=["LlamaForCausalLM"])
        >>> update_config(cfg, [], Recipe(method="int8"))["quantization_config"]["ignore"][:1]
        ['lm_head']
    """
    from llmpack.quant.ct_config import build_quantization_config

    if module_types is None:
        from llmpack.checkpoint.sources import module_types_of
        from llmpack.runtime.load import build_meta_model

        c = dict(cfg)
        c.pop("quantization_config", None)
        if not c.get("architectures"):
            raise ConfigError("config.json has no 'architectures': cannot list the float Linear layers for int8")
        module_types = module_types_of(build_meta_model(c))
    mods = int8_modules(decisions)
    linear = [m for m, t in module_types.items() if t == "Linear"]
    ignore = sorted(m for m in linear if m not in mods)
    weight_only = ([m for m, a in mods.items() if a == recipe.method.weight_only_action]
                   if recipe.method.act_quant else [])
    embeddings = [m for m, a in mods.items() if a == "int8-embedding"]
    out = dict(cfg)
    out["quantization_config"] = build_quantization_config(
        recipe.method, ignore=ignore, weight_only_modules=weight_only, embeddings=embeddings
    )
    return out
