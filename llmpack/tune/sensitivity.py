"""Per-layer INT8 sensitivity for the accuracy budget, measured on streamed passes (:mod:`llmpack.stream`)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch

from llmpack.tune.calibrate import LayerSim, _sim_forward, simulate

__all__ = ["layer_sensitivity"]


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
        import contextlib

        @contextlib.contextmanager
        def ctx() -> Any:
            handles = []
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
                handles.append(mod.register_forward_hook(hook))
            try:
                yield
            finally:
                for h in handles:
                    h.remove()
        return ctx()

    def result(self) -> dict[str, dict[str, float]]:
        return {n: {m: self.num[n][m] / max(self.den[n], 1e-30) for m in self.modes} for n in self.num}


def layer_sensitivity(ev: Any, per_block: Mapping[int, list[str]], lins: Sequence[str],
                      target_scale: Mapping[str, torch.Tensor], ladder: Sequence[str], how: str,
                      skip: set[str], scheme: str = "int8") -> dict[str, dict[str, float]]:
    """Per layer and int8 mode, how much quantizing it alone costs: ``"local"`` — relative output error on float
    inputs, one streamed float pass; ``"e2e"`` — KL of the whole model with only that layer quantized, one
    streamed pass per layer and mode. Skipped layers score 0."""
    from llmpack.stream.evaluate import Stream

    quant_modes = [m for m in ladder if m != "float"]
    model = ev.st.model
    if how == "local":
        acc = _LocalErrors(target_scale, quant_modes, scheme)
        ev.run([Stream(ev.fresh(), lambda i, _b: acc.hooks(model, [n for n in per_block.get(i, []) if n not in skip]))])
        out = acc.result()
    else:
        out = {}
        for n in lins:
            out[n] = {}
            if n in skip:
                continue
            for m in quant_modes:
                plan = {n: LayerSim(m, target_scale.get(n) if m == "w8a8" else None, scheme)}
                out[n][m] = ev.candidate(lambda i, _b, plan=plan: simulate(model, {
                    k: v for k, v in plan.items() if k in per_block.get(i, [])})).kl
    for n in skip:
        out.get(n, {}).clear()
    return {n: {**{m: 0.0 for m in quant_modes}, **out.get(n, {})} for n in lins}
