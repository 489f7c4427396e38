"""Checkpoint tensor names vs model tensor names: the plain key renamings transformers applies when it loads a
checkpoint (e.g. GPT-NeoX saves its head as ``embed_out`` and builds it as ``lm_head`` in transformers 5.x).

Example:
    >>> import torch
    >>> model_key(torch.nn.Linear(2, 2), "weight")
    'weight'
"""

from __future__ import annotations

import re

import torch

__all__ = ["key_renamings", "model_key"]


def key_renamings(model: torch.nn.Module) -> list[tuple[str, str]]:
    """``(source regex, target)`` pairs transformers renames this model's checkpoint keys with when loading;
    empty where this transformers version has none (older and newer versions: checkpoint names are model names).
    Cached on the model.

    Example:
        >>> all(isinstance(src, str) and isinstance(tgt, str) for src, tgt in key_renamings(torch.nn.Linear(2, 2)))
        True
    """
    cached = getattr(model, "_llmpack_renamings", None)
    if cached is not None:
        return cached
    out: list[tuple[str, str]] = []
    try:
        from transformers.conversion_mapping import WeightRenaming, get_model_conversion_mapping

        for t in get_model_conversion_mapping(model):
            if isinstance(t, WeightRenaming):
                for src, tgt in zip(t.source_patterns, t.target_patterns):
                    out.append((str(src), str(tgt)))
    except Exception:  # noqa: BLE001 - a transformers without conversion mappings, or a non-transformers model
        out = []
    object.__setattr__(model, "_llmpack_renamings", out)
    return out


def model_key(model: torch.nn.Module, name: str) -> str:
    """The model's name for checkpoint tensor ``name`` (the first renaming that changes it; else ``name``).

    Example:
        >>> model_key(torch.nn.Linear(2, 2), "bias")
        'bias'
    """
    for src, tgt in key_renamings(model):
        try:
            new = re.sub(src, tgt, name)
        except re.error:
            continue
        if new != name:
            return new
    return name
