"""The steps of the accuracy-budget search (:func:`llmpack.tune.budget.search_budget`): budget arithmetic,
default smoothing strengths, the simulation plan for a set of layer modes, the bisection, fused-sibling modes,
and resolving what the search runs on (a resident model or a streamed checkpoint).

Example:
    >>> fuse_siblings({"a.gate_proj": "w8a8", "a.up_proj": "float"})
    {'a.gate_proj': 'float', 'a.up_proj': 'float'}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from llmpack._nn import is_conv1d
from llmpack.config import Recipe
from llmpack.errors import BadInputError
from llmpack.quant.decisions import eight_bit_share
from llmpack.quant.plan import OUTPUT_HEAD_NAMES
from llmpack.stream.evaluate import EvalResult
from llmpack.tune.calibrate import LayerSim

__all__ = ["DEFAULT_ALPHA", "MODE_RANK", "alpha_for", "bisect", "block_index", "budget_ok", "fuse_siblings", "int8_share",
           "is_head", "over_budget", "resolve_model", "resolve_streamer", "sibling_reasons", "sim_plan"]

DEFAULT_ALPHA: dict[str, float] = {"attn_in": 0.65, "attn_out": 0.65, "mlp_in": 0.65, "mlp_out": 0.65}
"""SmoothQuant alpha per group kind used when the recipe gives none (W8A8 only)."""


def budget_ok(r: EvalResult, recipe: Recipe, margin: float) -> bool:
    """``r`` fits ``margin`` times the recipe's budget: the perplexity increase implied by its KL
    (:attr:`~llmpack.stream.evaluate.EvalResult.kl_ppl_increase`, which moves with the plan, not with the sampled
    tokens) and / or the KL itself.

    Example:
        >>> budget_ok(EvalResult(ppl=10.3, base_ppl=10.0, kl=0.01, top1=1.0), Recipe(method="int8", max_ppl_increase=2), 1.0)
        True
    """
    ok = True
    if recipe.max_ppl_increase is not None:
        ok &= r.kl_ppl_increase <= margin * float(recipe.max_ppl_increase)
    if recipe.max_kl is not None:
        ok &= r.kl <= margin * float(recipe.max_kl)
    return ok


def over_budget(r: EvalResult, recipe: Recipe) -> float:
    """How far ``r`` is over the budget: the largest measured / allowed ratio of the budget's metrics (for a
    perplexity budget, the KL-implied increase as in :func:`budget_ok`).

    Example:
        >>> round(over_budget(EvalResult(ppl=10.2, base_ppl=10.0, kl=0.01, top1=0.9), Recipe(method="int8", max_ppl_increase=4)), 4)
        0.2513
    """
    vals = []
    if recipe.max_ppl_increase is not None:
        vals.append(r.kl_ppl_increase / max(float(recipe.max_ppl_increase), 1e-12))
    if recipe.max_kl is not None:
        vals.append(r.kl / max(float(recipe.max_kl), 1e-12))
    return max(vals, default=0.0)


def alpha_for(recipe: Recipe, alpha: float | Mapping[str, float] | None) -> dict[str, float]:
    """SmoothQuant alpha per group kind: the explicit ``alpha``, else the recipe's ``smooth``, else
    :data:`DEFAULT_ALPHA`; none for weight-only methods (their activations stay float).

    Example:
        >>> alpha_for(Recipe(method="int8", smooth=0.5), None)["mlp_in"]
        0.5
    """
    if not recipe.method.act_quant:
        return {}  # weight-only: activations stay float, smoothing buys nothing
    if alpha is not None:
        return dict(alpha) if isinstance(alpha, Mapping) else {k: float(alpha) for k in DEFAULT_ALPHA}
    if recipe.smooth is not None:
        if float(recipe.smooth) == 0.0:
            return {}
        return {k: float(recipe.smooth) for k in DEFAULT_ALPHA}
    return dict(DEFAULT_ALPHA)


def sim_plan(lins: Iterable[str], modes: Mapping[str, str], target_scale: Mapping[str, torch.Tensor],
              scheme: str = "int8", fallback: torch.dtype | None = None,
              skip: "set[str] | frozenset[str]" = frozenset()) -> dict[str, LayerSim]:
    """The simulation of a set of layer modes: one :class:`~llmpack.tune.calibrate.LayerSim` per quantized layer
    (smoothed where W8A8), float layers left out unless they are stored narrower (``fallback``).

    Example:
        >>> sorted(sim_plan(["a", "b"], {"a": "w8a8", "b": "float"}, {}))
        ['a']
    """
    plan = {}
    for n in lins:
        mode = modes[n]
        s = target_scale.get(n)
        if mode == "float":
            if fallback is not None and n not in skip:  # stored narrower than the source: simulate the rounding
                plan[n] = LayerSim("float", None, scheme, weight_dtype=fallback)
            continue  # float layers run untouched (smoothing is exact in float)
        plan[n] = LayerSim(mode, s if mode == "w8a8" else None, scheme)
    return plan


def bisect(n: int, ok: Callable[[int], bool], tol: int = 1) -> int:
    """Smallest k in [0, n] with ok(k), to within ``tol`` (ok assumed monotone, ok(n) already known True).

    The returned k always satisfies ok; with ``tol > 1`` it may exceed the smallest such k by less than
    ``tol`` (a few more layers remedied than strictly needed, for fewer end-to-end measurements).

    Example:
        >>> bisect(100, lambda k: k >= 37), bisect(100, lambda k: k >= 37, tol=8) >= 37
        (37, True)
    """
    lo, hi = 0, n
    while hi - lo > max(tol, 1) - 1 and lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi


# ---------------------------------------------------------------------- search
MODE_RANK = {"w8a8": 0, "w8a16": 1, "float": 2}


def fuse_siblings(modes: Mapping[str, str]) -> dict[str, str]:
    """``modes`` with every set of shared-input siblings (q/k/v, gate/up, ...:
    :data:`llmpack.runtime.siblings.SIBLING_GROUPS`) raised to its most conservative member's mode: vLLM fuses
    them into one layer and refuses fused shards of mixed precision.

    Example:
        >>> fuse_siblings({"a.q_proj": "w8a8", "a.k_proj": "w8a16", "a.v_proj": "w8a8", "a.o_proj": "w8a8"})
        {'a.q_proj': 'w8a16', 'a.k_proj': 'w8a16', 'a.v_proj': 'w8a16', 'a.o_proj': 'w8a8'}
    """
    from llmpack.runtime.siblings import SIBLING_GROUPS

    out = dict(modes)
    parents: dict[str, set[str]] = {}
    for n in modes:
        parent, _, leaf = n.rpartition(".")
        parents.setdefault(parent, set()).add(leaf)
    for parent, leaves in parents.items():
        for names in SIBLING_GROUPS:
            members = [f"{parent}.{x}" if parent else x for x in names if x in leaves]
            if len(members) > 1:
                top = max((out[m] for m in members), key=MODE_RANK.__getitem__)
                out.update({m: top for m in members})
    return out


def sibling_reasons(modes: Mapping[str, str], reasons: dict[str, str], mode: str) -> None:
    """Reasons for the layers :func:`fuse_siblings` moved along with a sibling."""
    for n, m in modes.items():
        if m == mode and reasons.get(n) == "default":
            reasons[n] = f"{mode} with its fused siblings (vLLM refuses mixed-precision q/k/v and gate/up)"


def int8_share(params: Mapping[str, int], modes: Mapping[str, str]) -> float:
    """The share of linear parameters stored in 8 bits under ``modes``.

    Example:
        >>> int8_share({"a": 3, "b": 1}, {"a": "w8a8", "b": "float"})
        0.75
    """
    return eight_bit_share(params, {k for k in params if modes[k] == "float"})


def is_head(model: torch.nn.Module, name: str, mod: torch.nn.Module) -> bool:
    """An output head (by name, or a layer whose width is the vocabulary): the search leaves it float.

    Example:
        >>> is_head(torch.nn.Module(), "lm_head", torch.nn.Linear(2, 3))
        True
    """
    if name.rsplit(".", 1)[-1] in OUTPUT_HEAD_NAMES:
        return True
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    out = mod.weight.shape[1] if is_conv1d(mod) else mod.weight.shape[0]
    return isinstance(vocab, int) and out == vocab


def block_index(st: Any, names: Iterable[str]) -> dict[str, int]:
    """Layer name → index of the streamer block holding it (layers outside every block are left out)."""
    if not st.prefix:  # the whole-model fallback: one block holds everything
        return {n: 0 for n in names}
    pre = st.prefix + "."
    out = {}
    for n in names:
        if n.startswith(pre):
            head = n[len(pre):].split(".", 1)[0]
            if head.isdigit():
                out[n] = int(head)
    return out


def resolve_streamer(model_or_source: Any, tokenizer: Any, device: "str | torch.device",
                      need_tokenizer: bool = True) -> tuple[Any, Any]:
    """What the search runs on: a resident model (block-streamed where its blocks are found, else whole) or a
    checkpoint directory streamed block by block, with its tokenizer.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> type(resolve_streamer(tiny_model("llama"), None, "cpu")[0]).__name__
        'BlockStreamer'
    """
    from llmpack.stream import BlockStreamer, StreamUnsupported, WholeModel, open_streamer

    if isinstance(model_or_source, torch.nn.Module):
        model, tokenizer = resolve_model(model_or_source, tokenizer)
        try:
            return BlockStreamer.resident(model), tokenizer
        except StreamUnsupported:
            return WholeModel(model), tokenizer  # already in memory: run it whole
    path = Path(model_or_source)
    if not (path / "config.json").is_file():
        raise BadInputError(f"{path} is not an HF model directory (no config.json): pass a directory or a model")
    st = open_streamer(path, device=device, dtype=torch.float32)
    if st.model.get_output_embeddings() is None:
        raise BadInputError(f"{path} is not a causal LM with a head: the int8 accuracy budget measures perplexity/KL")
    if tokenizer is None and need_tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    return st, tokenizer


def resolve_model(model_or_source: Any, tokenizer: Any) -> tuple[torch.nn.Module, Any]:
    """``model`` when it is a causal LM with a head; otherwise one clear error.

    Example:
        >>> resolve_model(torch.nn.Linear(2, 2), None)
        Traceback (most recent call last):
        ...
        llmpack.errors.BadInputError: Linear has no language-model head: the int8 accuracy budget measures perplexity/KL, so it needs a causal LM; quantize encoders without max_ppl_increase / max_kl
    """
    if isinstance(model_or_source, torch.nn.Module):
        model = model_or_source
        if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
            raise BadInputError(
                f"{type(model).__name__} has no language-model head: the int8 accuracy budget measures perplexity/KL, "
                "so it needs a causal LM; quantize encoders without max_ppl_increase / max_kl"
            )
        return model, tokenizer
    raise BadInputError(f"expected an nn.Module, got {type(model_or_source).__name__}")
