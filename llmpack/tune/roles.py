"""The budget's role-based remedies (the default for FP8, :func:`llmpack.tune.budget.search_budget` with
``sensitivity="role"``): which layers get a remedy first, the roles that go weight-only because that measures
better for them, and the narrower dtype the layers moved to float are stored in.

Example:
    >>> s = {"a.down_proj": {"w8a8": 4.0}, "a.o_proj": {"w8a8": 3.0}}
    >>> remedy_order(list(s), s, "w8a8", {"a.down_proj": 8, "a.o_proj": 2}, per_param=True)
    ['a.o_proj', 'a.down_proj']
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from llmpack.config import Recipe
from llmpack.tune.calibrate import EvalResult
from llmpack.tune.sensitivity import role_of

__all__ = ["fallback_dtype", "weight_only_roles", "remedy_order"]


def fallback_dtype(model: torch.nn.Module, recipe: Recipe) -> torch.dtype | None:
    """The dtype an FP8 budget stores the layers it moves to float in: bf16 where the source is FP32 (its weights
    then lose nothing the budget can measure: SmolLM2's whole model in bf16 changes KL by < 1e-4) and the recipe
    sets no ``float_dtype``; ``None`` (as in the source) otherwise, and always for int8 (unchanged behaviour).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> fallback_dtype(tiny_model("llama"), Recipe(method="fp8")), fallback_dtype(tiny_model("llama"), Recipe(method="int8"))
        (torch.bfloat16, None)
    """
    if str(recipe.method.scheme) == "int8" or recipe.float_dtype is not None:
        return None
    cfg = getattr(model, "config", None)
    src = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None)
    if isinstance(src, str):
        src = getattr(torch, src, None)
    if src is None:
        src = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    return torch.bfloat16 if src == torch.float32 else None


def weight_only_roles(modes: dict[str, str], result: EvalResult, roles: Mapping[str, Mapping[str, float]],
                      reasons: dict[str, str], measure: Callable[[Mapping[str, str], str], EvalResult],
                      over: Callable[[EvalResult], float],
                      fuse: Callable[[Mapping[str, str]], dict[str, str]]) -> tuple[dict[str, str], EvalResult]:
    """Move the W8A8 layers of every role whose measured KL is lower weight-only (``roles[r]["w8a16"] <
    roles[r]["w8a8"]``) to W8A16 — same size, less error — and keep the move only if the whole plan then measures
    better (end to end, not assumed from the per-role figures). ``measure(modes, label)`` runs a plan, ``over(result)``
    says how far it is over the budget, ``fuse(modes)`` raises fused siblings together."""
    better = sorted(r for r, kl in roles.items() if kl.get("w8a16", float("inf")) < kl.get("w8a8", 0.0))
    m = fuse({n: ("w8a16" if v == "w8a8" and role_of(n) in better else v) for n, v in modes.items()})
    if not better or m == modes:
        return modes, result
    r = measure(m, f"roles measured better weight-only -> w8a16: {', '.join(better)}")
    if over(r) >= over(result):
        return modes, result
    for n, v in m.items():
        if v != modes[n]:
            kl = roles.get(role_of(n), {})
            reasons[n] = (f"weight-only: its role measured KL {kl.get('w8a16', 0):.4g} weight-only vs "
                          f"{kl.get('w8a8', 0):.4g} W8A8")
    return m, r


def remedy_order(names: Sequence[str], sens: Mapping[str, Mapping[str, float]], mode: "str | Mapping[str, str]",
                  params: Mapping[str, int], per_param: bool = False) -> list[str]:
    """The layers in the order they get the next remedy: most sensitive first or, with ``per_param``, most
    sensitivity per parameter first, counted over each set of fused siblings (the budget's ``fuse_siblings`` moves them
    together), so a remedy goes first where it buys the most accuracy per byte.

    Example:
        >>> s = {"a.down_proj": {"w8a8": 4.0}, "a.o_proj": {"w8a8": 3.0}}
        >>> remedy_order(list(s), s, "w8a8", {"a.down_proj": 8, "a.o_proj": 2}, per_param=True)
        ['a.o_proj', 'a.down_proj']
    """
    def s(n: str) -> float:
        return sens[n][mode if isinstance(mode, str) else mode[n]]

    if not per_param:
        return sorted(names, key=lambda n: -s(n))
    sets: dict[str, list[str]] = {}
    for n in names:
        sets.setdefault(_sibling_key(n), []).append(n)
    density = {k: sum(s(n) for n in v) / max(sum(params[n] for n in v), 1) for k, v in sets.items()}
    return sorted(names, key=lambda n: (-density[_sibling_key(n)], -s(n)))


def _sibling_key(name: str) -> str:
    """``name`` with a shared-input sibling's leaf replaced by its group (one key per fused set)."""
    from llmpack.runtime.siblings import SIBLING_GROUPS

    parent, _, leaf = name.rpartition(".")
    group = next((g for g in SIBLING_GROUPS if leaf in g), None)
    return f"{parent}.{'+'.join(group)}" if group is not None else name
