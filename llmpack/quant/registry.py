"""Registry of per-tensor actions: how one source tensor becomes output tensors.

An action is ``fn(name, tensor, decision, recipe) -> {out_name: tensor}``; its size function
``out_specs(decision) -> [(out_name, shape, dtype)]`` says what it will produce before any data is
read, so the shard plan is known up front. Core registers ``keep`` and ``cast``; the INT8 module
registers ``int8``, ``int8-weight-only`` and ``int8-embedding``.

Example:
    >>> from llmpack.plan import TensorDecision
    >>> d = TensorDecision("w", "cast", "bf16", "", "method", {}, shape=(2, 2), in_dtype=torch.float32)
    >>> get_action("cast").out_specs(d)
    [('w', (2, 2), torch.bfloat16)]
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Callable

import torch

from llmpack.errors import ConfigError

if TYPE_CHECKING:
    from llmpack.config import Recipe
    from llmpack.plan import TensorDecision

__all__ = ["Action", "register_action", "get_action", "registered_actions", "SpecFn", "ActionFn"]

ActionFn = Callable[[str, torch.Tensor, "TensorDecision", "Recipe"], "dict[str, torch.Tensor]"]
SpecFn = Callable[["TensorDecision"], "list[tuple[str, tuple[int, ...], torch.dtype]]"]

# Modules that register more actions when imported (optional: they may not exist yet).
_PLUGINS = ("llmpack.quant.int8", "llmpack.quant.int8_plan")


@dataclasses.dataclass(frozen=True)
class Action:
    """A registered action: the tensor function and its size function."""

    name: str
    fn: ActionFn
    out_specs: SpecFn

    def __call__(self, name: str, tensor: torch.Tensor, decision: "TensorDecision", recipe: "Recipe") -> dict[str, torch.Tensor]:
        return self.fn(name, tensor, decision, recipe)


_ACTIONS: dict[str, Action] = {}


def _same_specs(decision: "TensorDecision") -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    from llmpack.quant.floats import float_dtype

    dtype = float_dtype(decision.out_dtype) if decision.out_dtype else decision.in_dtype
    return [(decision.name, tuple(decision.shape), dtype)]


def register_action(name: str, *, out_specs: SpecFn | None = None) -> Callable[[ActionFn], ActionFn]:
    """Decorator registering ``fn`` as action ``name``.

    Args:
        out_specs: the size function; default: one output named like the input, shape unchanged,
            dtype ``decision.out_dtype`` (or the input dtype when that is ``None``).
            Can also be attached later as ``fn.out_specs = ...`` before registration.

    Example:
        >>> @register_action("negate")
        ... def negate(name, t, decision, recipe):
        ...     return {name: -t}
    """

    def deco(fn: ActionFn) -> ActionFn:
        specs = out_specs or getattr(fn, "out_specs", None) or _same_specs
        _ACTIONS[name] = Action(name, fn, specs)
        return fn

    return deco


def _load_plugins() -> None:
    for mod in _PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def get_action(name: str) -> Action:
    """The action registered as ``name``; an unknown name lists the valid ones."""
    if name not in _ACTIONS:
        _load_plugins()
    try:
        return _ACTIONS[name]
    except KeyError:
        raise ConfigError(f"unknown action {name!r}: registered actions are {', '.join(sorted(_ACTIONS))}") from None


def registered_actions() -> list[str]:
    """Names of all registered actions."""
    _load_plugins()
    return sorted(_ACTIONS)


@register_action("keep")
def _keep(name: str, tensor: torch.Tensor, decision: "TensorDecision", recipe: "Recipe") -> dict[str, torch.Tensor]:
    """Store the tensor unchanged (non-float tensors, ignored tensors, fp16-overflow fallbacks)."""
    return {name: tensor}


def _keep_specs(decision: "TensorDecision") -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(decision.name, tuple(decision.shape), decision.in_dtype)]


_ACTIONS["keep"] = Action("keep", _keep, _keep_specs)


@register_action("cast")
def _cast(name: str, tensor: torch.Tensor, decision: "TensorDecision", recipe: "Recipe") -> dict[str, torch.Tensor]:
    """Cast a float tensor to ``decision.out_dtype`` (fp16 refuses values beyond +-65504)."""
    from llmpack.quant.floats import cast, float_dtype

    return {name: cast(tensor, float_dtype(decision.out_dtype), name)}
