"""The 8-bit weight actions of the streaming pipeline, registered in :mod:`llmpack.quant.registry`.

* ``int8`` — a W8A8 layer's weight: ``P.weight`` int8 ``[out, in]`` + ``P.weight_scale`` ``[out, 1]``.
* ``int8-weight-only`` — the same tensors for a W8A16 layer (the difference lives in ``config.json``).
* ``int8-embedding`` — an embedding table, int8 per row: ``E.weight`` int8 + ``E.weight_scale`` ``[rows, 1]``.
* ``fp8`` / ``fp8-weight-only`` — the same with ``P.weight`` ``float8_e4m3fn`` (compressed-tensors ``float-quantized``).

One function serves them all; the scheme (:mod:`llmpack.quant.schemes`) follows from the action's name.

A GPT-2 ``Conv1D`` weight (stored ``[in, out]``) is transposed to ``[out, in]`` before quantization
(``decision.extra["layout"] == "conv1d"``), so every int8 layer has the nn.Linear layout on disk.

Example:
    >>> from llmpack.quant.registry import get_action
    >>> get_action("int8").name
    'int8'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from llmpack.quant.floats import float_dtype
from llmpack.quant.registry import register_action
from llmpack.quant.schemes import QUANT_ACTIONS, SCHEMES, scheme_of_action

if TYPE_CHECKING:
    from llmpack.config import Recipe
    from llmpack.plan import TensorDecision

__all__ = ["quantize_weight", "int8_out_specs", "scale_name", "CONV1D_LAYOUT"]

CONV1D_LAYOUT = "conv1d"


def scale_name(weight_name: str) -> str:
    """``a.b.weight`` -> ``a.b.weight_scale``.

    Example:
        >>> scale_name("model.layers.0.mlp.up_proj.weight")
        'model.layers.0.mlp.up_proj.weight_scale'
    """
    return f"{weight_name}_scale"


def _scale_dtype(decision: "TensorDecision") -> torch.dtype:
    sd = decision.extra.get("scale_dtype")
    if sd:
        return float_dtype(sd)
    return decision.in_dtype or torch.float32


def int8_out_specs(decision: "TensorDecision") -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """Output names, shapes and dtypes of an 8-bit action (known before any data is read)."""
    shape = tuple(int(x) for x in decision.shape)
    if decision.extra.get("layout") == CONV1D_LAYOUT:
        shape = (shape[1], shape[0])
    scheme = scheme_of_action(decision.action) or SCHEMES["int8"]
    return [(decision.name, shape, scheme.dtype), (scale_name(decision.name), (shape[0], 1), _scale_dtype(decision))]


def quantize_weight(name: str, tensor: torch.Tensor, decision: "TensorDecision", recipe: "Recipe") -> dict[str, torch.Tensor]:
    """Quantize one weight per output channel (per row for embeddings) in the action's scheme; refuses NaN/Inf
    naming the tensor."""
    w = tensor
    if decision.extra.get("layout") == CONV1D_LAYOUT:
        w = w.t()
    scheme = scheme_of_action(decision.action) or SCHEMES["int8"]
    q, scale = scheme.quantize_weight(w, 0, scale_dtype=_scale_dtype(decision), name=name)
    return {name: q.contiguous(), scale_name(name): scale.contiguous()}


for _action in QUANT_ACTIONS:
    register_action(_action, out_specs=int8_out_specs)(quantize_weight)
