"""The per-tensor actions: how one source tensor becomes output tensors. One explicit table, no registration.

An action is ``fn(name, tensor, decision, recipe) -> {out_name: tensor}`` plus ``out_specs(decision) ->
[(out_name, shape, dtype)]``, which says what it will produce before any data is read, so the shard plan is
known up front. :class:`ActionName` lists every action; :data:`ACTIONS` maps each name to its functions.

* ``keep`` — the tensor unchanged (non-float, ignored, FP16-overflow fallbacks in float32).
* ``cast`` — a float tensor cast to ``decision.out_dtype`` (fp16 refuses values beyond +-65504).
* ``int8`` / ``int8-weight-only`` — a W8A8 / W8A16 layer's weight: ``P.weight`` int8 ``[out, in]`` +
  ``P.weight_scale`` ``[out, 1]`` (the difference lives in ``config.json``).
* ``int8-embedding`` — an embedding table, int8 per row: ``E.weight`` int8 + ``E.weight_scale`` ``[rows, 1]``.
* ``fp8`` / ``fp8-weight-only`` — the same with ``P.weight`` ``float8_e4m3fn`` (compressed-tensors
  ``float-quantized``).

A GPT-2 ``Conv1D`` weight (stored ``[in, out]``) is transposed to ``[out, in]`` before quantization
(``decision.extra["layout"] == "conv1d"``), so every 8-bit layer has the nn.Linear layout on disk.

Example:
    >>> import torch
    >>> from llmpack.quant.plan import TensorDecision
    >>> d = TensorDecision("w", "cast", "bf16", "", "method", {}, shape=(2, 2), in_dtype=torch.float32)
    >>> get_action("cast").out_specs(d)
    [('w', (2, 2), torch.bfloat16)]
    >>> get_action(ActionName.INT8).name
    'int8'
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable

import torch

from llmpack.errors import ConfigError
from llmpack.quant.floats import cast, float_dtype
from llmpack.quant.plan import CONV1D_LAYOUT, QUANT_ACTIONS, ActionName, TensorDecision
from llmpack.quant.schemes import SCHEMES, Scheme

if TYPE_CHECKING:
    from llmpack.config import Recipe

__all__ = [
    "ActionName", "Action", "ACTIONS", "QUANT_ACTIONS", "get_action", "scheme_of_action", "quantize_weight",
    "int8_out_specs", "scale_name", "CONV1D_LAYOUT", "ActionFn", "SpecFn",
]

ActionFn = Callable[[str, torch.Tensor, "TensorDecision", "Recipe"], "dict[str, torch.Tensor]"]
SpecFn = Callable[["TensorDecision"], "list[tuple[str, tuple[int, ...], torch.dtype]]"]

@dataclasses.dataclass(frozen=True)
class Action:
    """One action: the tensor function and its size function."""

    name: str
    fn: ActionFn
    out_specs: SpecFn

    def __call__(self, name: str, tensor: torch.Tensor, decision: "TensorDecision", recipe: "Recipe") -> dict[str, torch.Tensor]:
        return self.fn(name, tensor, decision, recipe)


def scheme_of_action(action: str) -> Scheme | None:
    """The scheme an action writes (``None`` for float actions such as ``keep`` / ``cast``).

    Example:
        >>> scheme_of_action("fp8-weight-only").name, scheme_of_action("cast") is None
        ('fp8', True)
    """
    if action not in QUANT_ACTIONS:
        return None
    return SCHEMES[str(action).split("-", 1)[0]]


def scale_name(weight_name: str) -> str:
    """``a.b.weight`` -> ``a.b.weight_scale``.

    Example:
        >>> scale_name("model.layers.0.mlp.up_proj.weight")
        'model.layers.0.mlp.up_proj.weight_scale'
    """
    return f"{weight_name}_scale"


def _keep(name: str, tensor: torch.Tensor, decision: "TensorDecision", recipe: "Recipe") -> dict[str, torch.Tensor]:
    return {name: tensor}


def _keep_specs(decision: "TensorDecision") -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(decision.name, tuple(decision.shape), decision.in_dtype)]


def _cast(name: str, tensor: torch.Tensor, decision: "TensorDecision", recipe: "Recipe") -> dict[str, torch.Tensor]:
    return {name: cast(tensor, float_dtype(decision.out_dtype), name)}


def _cast_specs(decision: "TensorDecision") -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    dtype = float_dtype(decision.out_dtype) if decision.out_dtype else decision.in_dtype
    return [(decision.name, tuple(decision.shape), dtype)]


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


ACTIONS: dict[ActionName, Action] = {
    ActionName.KEEP: Action("keep", _keep, _keep_specs),
    ActionName.CAST: Action("cast", _cast, _cast_specs),
    **{a: Action(a.value, quantize_weight, int8_out_specs) for a in ActionName if a.is_quantized},
}
"""The table of actions, one row per :class:`ActionName`."""


def get_action(name: "str | ActionName") -> Action:
    """The action called ``name``; an unknown name lists the valid ones.

    Example:
        >>> get_action("int4")
        Traceback (most recent call last):
        ...
        llmpack.errors.ConfigError: unknown action 'int4': the actions are cast, fp8, fp8-weight-only, int8, int8-embedding, int8-weight-only, keep
    """
    try:
        return ACTIONS[ActionName(name)]
    except ValueError:
        valid = ", ".join(sorted(a.value for a in ActionName))
        raise ConfigError(f"unknown action {name!r}: the actions are {valid}") from None
