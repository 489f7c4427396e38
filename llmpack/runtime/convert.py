"""In-memory int8 conversion: ``quantize_module(model, recipe)`` returns a model whose Linear /
Conv1D layers are :class:`~llmpack.runtime.linear.Int8Linear` (and embeddings
:class:`~llmpack.runtime.embedding.Int8Embedding` with ``quantize_embeddings``), without writing files.

It plans with the same :func:`llmpack.quant.plan.plan` and quantizes with the same action functions as
the streaming pipeline, so ``llmpack.quantize(model, method="int8")`` and
``llmpack.load(llmpack.quantize(model, method="int8", out=d).out_dir)`` give identical logits.

Example:
    >>> from llmpack.testing import tiny_model
    >>> from llmpack.config import Recipe
    >>> q = quantize_module(tiny_model("llama"), Recipe(method="int8"))
    >>> type(q.model.layers[0].mlp.up_proj).__name__
    'Int8Linear'
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import nn

from llmpack.config import Recipe
from llmpack.errors import ConfigError
from llmpack.quant.floats import float_dtype
from llmpack.quant.actions import QUANT_ACTIONS, get_action, scheme_of_action
from llmpack.runtime.embedding import Int8Embedding, TiedInt8Head
from llmpack.runtime.linear import Int8Linear, is_conv1d, linear_class
from llmpack.runtime.swap import set_module

__all__ = ["quantize_module"]


def quantize_module(
    model: nn.Module,
    recipe: Recipe,
    *,
    skip: Iterable[str] = (),
    weight_only: Iterable[str] = (),
    inplace: bool = False,
) -> nn.Module:
    """Quantize an in-memory model to int8 or FP8 (W8A8 or weight-only per ``recipe.method``).

    Args:
        model: a float model (``transformers`` or any ``nn.Module`` with Linear / Conv1D layers).
        recipe: an int8 / fp8 recipe (ignore patterns, ``quantize_embeddings``, ``float_dtype`` apply).
        skip: module names kept in float.
        weight_only: module names made W8A16 inside a W8A8 model.
        inplace: convert ``model`` itself instead of a deep copy.

    Returns:
        The converted model in eval mode.

    Raises:
        ConfigError: ``recipe`` is not an int8 recipe.
        NonFiniteWeightError: a weight to quantize holds NaN/Inf (named in the message).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> q = quantize_module(tiny_model("gpt2"), Recipe(method="int8-weight-only"))
        >>> q.transformer.h[0].attn.c_attn.act_quant
        False
    """
    from llmpack.checkpoint.sources import _config_of_model, _module_infos, dedupe_state_dict, module_types_of
    from llmpack.quant.plan import plan

    if not recipe.method.is_quantized:
        raise ConfigError(f"quantize_module converts to int8; method {recipe.method.value} is a float method")
    target = model if inplace else copy.deepcopy(model)
    sd, dropped = dedupe_state_dict(target)
    infos = _module_infos(sd)
    mtypes = module_types_of(target)
    config = _config_of_model(target)
    # One planning pass, as the streaming pipeline does: plan() decides skip / weight_only
    # together with the float decisions, so skipped layers really stay float.
    decisions = plan(infos, mtypes, recipe, config, weight_only=tuple(weight_only), skip=tuple(skip))
    embeddings: list[str] = []
    with torch.no_grad():
        for d in decisions:
            t = sd[d.name]
            if d.action in QUANT_ACTIONS:
                tensors = get_action(d.action)(d.name, t.detach(), d, recipe)
                old = target.get_submodule(d.module)
                q, scale = tensors[d.name], tensors[f"{d.name}_scale"]
                if d.action == "int8-embedding":
                    new: nn.Module = Int8Embedding(q.shape[0], q.shape[1], getattr(old, "padding_idx", None),
                                                   dtype=scale.dtype, device="meta")
                    embeddings.append(d.module)
                else:
                    bias = getattr(old, "bias", None)
                    scheme = scheme_of_action(d.action)
                    new = linear_class(scheme.name if scheme else "int8")(
                        q.shape[1], q.shape[0], bias is not None, act_quant=(d.action == recipe.method.scheme),
                        conv1d_layout=is_conv1d(old), dtype=scale.dtype, device="meta")
                    if bias is not None:
                        bname = f"{d.module}.bias"
                        bd = next((x for x in decisions if x.name == bname), None)
                        b = bias.detach()
                        if bd is not None and bd.action == "cast":
                            b = get_action("cast")(bname, b, bd, recipe)[bname]
                        new.bias = nn.Parameter(b.clone(), requires_grad=False)
                new.weight = nn.Parameter(q, requires_grad=False)
                new.weight_scale = nn.Parameter(scale, requires_grad=False)
                set_module(target, d.module, new)
            elif d.action == "cast":
                owner, attr = _owner(target, d.name)
                cur = getattr(owner, attr)
                if not isinstance(owner, Int8Linear):
                    val = get_action("cast")(d.name, cur.detach(), d, recipe)[d.name]
                    if isinstance(cur, nn.Parameter):
                        setattr(owner, attr, nn.Parameter(val, requires_grad=False))
                    else:
                        owner.register_buffer(attr, val)
    _retie(target, dropped, embeddings)
    if recipe.float_dtype and hasattr(target, "config"):
        target.config.dtype = float_dtype(recipe.float_dtype)
    return target.eval()


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    mod, _, attr = name.rpartition(".")
    return (model.get_submodule(mod) if mod else model), attr


def _retie(model: nn.Module, dropped: dict[str, str], embeddings: list[str]) -> None:
    """Re-establish ties: a head tied to an int8 embedding reads its table; a float tied head follows the
    (possibly cast) embedding parameter."""
    for drop, kept in dropped.items():
        dmod, _, dattr = drop.rpartition(".")
        kmod, _, kattr = kept.rpartition(".")
        if kmod in embeddings and dattr == "weight":
            emb = model.get_submodule(kmod)
            if isinstance(emb, Int8Embedding):
                set_module(model, dmod, TiedInt8Head(emb))
            continue
        try:
            owner = model.get_submodule(dmod) if dmod else model
            src = getattr(model.get_submodule(kmod) if kmod else model, kattr)
        except AttributeError:
            continue
        if isinstance(owner, (Int8Linear, Int8Embedding, TiedInt8Head)):
            continue
        if isinstance(src, nn.Parameter) and isinstance(getattr(owner, dattr, None), nn.Parameter):
            setattr(owner, dattr, src)
