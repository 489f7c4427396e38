"""Preparing an int8 model to run: kernels chosen and packed, siblings grouped, float modules swapped.

Example:
    >>> import torch
    >>> from llmpack.runtime.linear import Int8Linear
    >>> m = torch.nn.Sequential(Int8Linear.from_float(torch.nn.Linear(8, 4)))
    >>> prepare_int8(m) is m
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from llmpack.runtime.embedding import TiedInt8Head
from llmpack.runtime.fused import fuse_float_modules
from llmpack.runtime.linear import Int8Linear
from llmpack.runtime.siblings import group_siblings

__all__ = ["prepare_int8", "compile_int8"]


def prepare_int8(model: nn.Module) -> nn.Module:
    """Choose every int8 layer's kernel and build what it reads now (:meth:`Int8Linear.prepare`); let
    shared-input siblings such as q/k/v and gate/up quantize their input once
    (:func:`~llmpack.runtime.siblings.group_siblings`); swap float modules for exact one-pass equivalents
    (:func:`~llmpack.runtime.fused.fuse_float_modules`; not in FP8-only models, which run the reference
    arithmetic end to end). Returns ``model``.

    Example:
        >>> m = torch.nn.Sequential(Int8Linear.from_float(torch.nn.Linear(8, 4)))
        >>> prepare_int8(m)[0].weight.dtype
        torch.int8
    """
    schemes = set()
    for mod in model.modules():
        if isinstance(mod, (Int8Linear, TiedInt8Head)):
            mod.prepare()
            schemes.add(getattr(mod, "scheme", "int8"))
    group_siblings(model)
    if schemes != {"fp8"}:
        # FP8 models on CPU run the reference end to end: the native float swaps round differently, and FP8's
        # coarse grid turns such differences into different tokens (SmolLM2: top-1 0.91 vs transformers, 1.0 without).
        fuse_float_modules(model)
    return model


def compile_int8(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile(model)`` after :func:`prepare_int8`. Inductor fuses the float parts of the model (norms,
    activations, residual adds) into generated kernels; the int8 layers stay opaque kernel calls.

    The first call of the compiled model compiles (tens of seconds on a small CPU); later calls with new input
    shapes may recompile. Weights must not be replaced afterwards.

    Example:
        >>> m = torch.nn.Sequential(Int8Linear.from_float(torch.nn.Linear(8, 4)))
        >>> callable(compile_int8(m))
        True
    """
    return torch.compile(prepare_int8(model), **compile_kwargs)
