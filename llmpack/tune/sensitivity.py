"""Per-layer 8-bit sensitivity for the accuracy budget, measured on streamed passes (:mod:`llmpack.stream`).

Three measures (``how``):

* ``"local"`` — each layer's relative output error quantized alone, on float inputs (one pass). Cheap, but blind to
  where the error goes: every FP8 weight has about the same relative error, so it cannot tell which layers matter.
* ``"e2e"`` — KL of the whole model with only that layer quantized (one pass per layer and mode).
* ``"role"`` — end to end per *role*, local within it: the layers that play the same part in every block
  (:func:`role_of`: ``model.layers.*.mlp.down_proj``; shared-input siblings such as q/k/v merged, since they are
  quantized together) are quantized together, every other layer float, and the KL of the final logits measured
  (one pass per role and mode: 8 on a Llama-style model); that KL is shared among the role's layers in
  proportion to their local errors. It finds, by measurement, which kind of layer carries the model's
  quantization cost (on SmolLM2 under FP8: the ``down_proj`` layers, fed by its huge activations).

Example:
    >>> role_of("model.layers.3.self_attn.k_proj"), role_of("transformer.h.0.mlp.c_fc")
    ('model.layers.*.self_attn.q_proj+k_proj+v_proj', 'transformer.h.*.mlp.c_fc')
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from llmpack._nn import forward_hooks
from llmpack.tune.calibrate import LayerSim, _sim_forward, simulate

__all__ = ["layer_sensitivity", "role_of", "HOWS"]

HOWS = ("local", "e2e", "role")
"""The sensitivity measures :func:`layer_sensitivity` knows."""

_INDEX = re.compile(r"(?<![^.])\d+(?![^.])")


def role_of(name: str) -> str:
    """The part a linear layer plays in every block: its name with block (and expert) indices replaced by ``*``
    and a shared-input sibling's leaf by its whole sibling group (:data:`llmpack.runtime.siblings.SIBLING_GROUPS`).

    Example:
        >>> role_of("model.layers.12.mlp.up_proj")
        'model.layers.*.mlp.gate_proj+up_proj'
    """
    from llmpack.runtime.siblings import SIBLING_GROUPS

    parent, _, leaf = name.rpartition(".")
    group = next((g for g in SIBLING_GROUPS if leaf in g), None)
    if group is not None:
        leaf = "+".join(group)
    parent = _INDEX.sub("*", parent)
    return f"{parent}.{leaf}" if parent else leaf


class _LocalErrors:
    """Forward hooks accumulating each layer's relative output error ``|y_q - y|² / |y|²`` quantized alone,
    on float inputs; used one block at a time (``hooks(model, names)``) by the streamed float pass."""

    def __init__(self, target_scale: Mapping[str, torch.Tensor], modes: Sequence[str], scheme: str = "int8") -> None:
        self.target_scale = target_scale
        self.scheme = scheme
        self.modes = list(modes)
        self.num: dict[str, dict[str, float]] = {}
        self.den: dict[str, float] = {}

    def hooks(self, model: torch.nn.Module, names: Iterable[str]) -> Any:
        def pairs() -> Iterator[tuple[torch.nn.Module, Any]]:
            for n in names:
                mod = model.get_submodule(n)
                self.num.setdefault(n, {m: 0.0 for m in self.modes})
                self.den.setdefault(n, 0.0)
                sims = {m: _sim_forward(mod, LayerSim(m, self.target_scale.get(n) if m == "w8a8" else None, self.scheme))
                        for m in self.modes}

                def hook(_m: torch.nn.Module, args: tuple, out: torch.Tensor, n: str = n, sims: dict = sims) -> None:
                    y = out.float()
                    self.den[n] += float(y.pow(2).sum())
                    for m, f in sims.items():
                        self.num[n][m] += float((f(args[0]).float() - y).pow(2).sum())
                yield mod, hook

        return forward_hooks(pairs())

    def result(self) -> dict[str, dict[str, float]]:
        return {n: {m: self.num[n][m] / max(self.den[n], 1e-30) for m in self.modes} for n in self.num}


def layer_sensitivity(ev: Any, per_block: Mapping[int, list[str]], lins: Sequence[str],
                      target_scale: Mapping[str, torch.Tensor], ladder: Sequence[str], how: str,
                      skip: set[str], scheme: str = "int8",
                      roles: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, float]]:
    """Per layer and 8-bit mode, how much quantizing it costs (see the module docstring for ``how``).
    Skipped layers score 0. With ``how="role"``, ``roles`` (when given) receives each role's measured KL per mode."""
    from llmpack.stream.evaluate import Stream

    quant_modes = [m for m in ladder if m != "float"]
    model = ev.st.model

    def sim(m: str, n: str) -> LayerSim:
        return LayerSim(m, target_scale.get(n) if m == "w8a8" else None, scheme)

    def kl_of(plan: Mapping[str, LayerSim]) -> float:
        return ev.candidate(lambda i, _b: simulate(model, {k: v for k, v in plan.items()
                                                          if k in per_block.get(i, [])})).kl

    out: dict[str, dict[str, float]] = {}
    if how in ("local", "role"):
        acc = _LocalErrors(target_scale, quant_modes, scheme)
        ev.run([Stream(ev.fresh(), lambda i, _b: acc.hooks(model, [n for n in per_block.get(i, []) if n not in skip]))])
        out = acc.result()
    if how == "e2e":
        for n in lins:
            out[n] = {}
            if n in skip:
                continue
            for m in quant_modes:
                out[n][m] = kl_of({n: sim(m, n)})
    elif how == "role":
        members: dict[str, list[str]] = {}
        for n in lins:
            if n not in skip:
                members.setdefault(role_of(n), []).append(n)
        for r, names in members.items():
            for m in quant_modes:
                kl = max(kl_of({n: sim(m, n) for n in names}), 0.0)
                if roles is not None:
                    roles.setdefault(r, {})[m] = kl
                total = sum(out[n][m] for n in names)
                for n in names:  # the role's KL, shared in proportion to the local errors (evenly if none)
                    out[n][m] = kl * (out[n][m] / total if total > 0 else 1.0 / len(names))
    for n in skip:
        out.get(n, {}).clear()
    return {n: {**{m: 0.0 for m in quant_modes}, **out.get(n, {})} for n in lins}
