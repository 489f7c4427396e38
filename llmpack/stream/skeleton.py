"""The model skeleton a streamer fills: finding its block list and putting tensors into it by name.

A streamed model is built with its parameters on the meta device; :class:`~llmpack.stream.blocks.BlockStreamer`
materialises the tensors it needs with these helpers and drops them again.

Example:
    >>> from llmpack.testing import tiny_model
    >>> name, blocks = find_blocks(tiny_model("llama"))
    >>> name, len(blocks) > 0
    ('model.layers', True)
"""

from __future__ import annotations

from typing import Callable

import torch

from llmpack.errors import BadInputError, StreamUnsupported

__all__ = ["WeightGetter", "find_blocks", "set_tensor", "persistent_buffers", "tie_parameter"]

WeightGetter = Callable[[str], torch.Tensor]
"""Full tensor name -> the tensor, read from the checkpoint (what a streamed model's weights come from)."""


def find_blocks(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The decoder (or encoder) block list: the ``ModuleList`` of same-class modules holding most parameters.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> find_blocks(tiny_model("gpt2"))[0]
        'transformer.h'
    """
    best: tuple[int, str, torch.nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0:
            continue
        kinds = {type(c) for c in mod}
        if len(kinds) != 1:
            continue
        n = sum(p.numel() for p in mod.parameters())
        if n and (best is None or n > best[0]):
            best = (n, name, mod)
    if best is None:
        raise StreamUnsupported(f"{type(model).__name__} has no list of identical blocks: it cannot be streamed")
    return best[1], best[2]


def set_tensor(root: torch.nn.Module, name: str, t: torch.Tensor) -> None:
    """Put ``t`` in the model as the parameter or buffer ``name`` (a parameter stays a frozen ``Parameter``).

    Example:
        >>> lin = torch.nn.Linear(2, 2, device="meta")
        >>> set_tensor(lin, "bias", torch.zeros(2)); lin.bias.device.type
        'cpu'
    """
    mod_name, _, attr = name.rpartition(".")
    mod = root.get_submodule(mod_name) if mod_name else root
    if attr in mod._parameters:
        old = mod._parameters[attr]
        mod._parameters[attr] = torch.nn.Parameter(t, requires_grad=False) if old is not None else None
    elif attr in mod._buffers:
        mod._buffers[attr] = t
    else:  # pragma: no cover - names come from named_parameters/buffers
        raise BadInputError(f"{name} is neither a parameter nor a buffer of the model")


def persistent_buffers(module: torch.nn.Module, prefix: str = "") -> list[str]:
    """Full names of the buffers a checkpoint stores (non-persistent ones, e.g. rotary tables, are left out).

    Example:
        >>> persistent_buffers(torch.nn.BatchNorm1d(2))
        ['running_mean', 'running_var', 'num_batches_tracked']
    """
    out = []
    for name, mod in module.named_modules():
        for b in mod._buffers:
            if mod._buffers[b] is not None and b not in mod._non_persistent_buffers_set:
                out.append(f"{prefix}{name + '.' if name else ''}{b}")
    return out


def tie_parameter(root: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
    """Make ``name`` the very ``param`` object another name already holds (tied weights share one tensor).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
        >>> tie_parameter(m, "1.weight", m[0].weight); m[1].weight is m[0].weight
        True
    """
    mod_name, _, attr = name.rpartition(".")
    mod = root.get_submodule(mod_name) if mod_name else root
    mod._parameters[attr] = param
