"""The 8-bit accuracy-budget search: measure what each layer costs, then pick the cheapest remedy that fits.

The search runs on one in-memory float model with fake quantization (:mod:`llmpack.tune.calibrate`),
so nothing is copied and nothing is written:

1. Collect per-input-channel activation maxima on calibration text (one forward pass).
2. SmoothQuant scales (:mod:`llmpack.quant.smooth`) for every group where they fold exactly, with
   alpha from the recipe or the default per group kind (:data:`DEFAULT_ALPHA`).
3. Measure the whole plan end to end (perplexity and KL against the float model on the same
   tokens). Within budget: done.
4. Otherwise measure each layer's sensitivity — the relative output error it adds when quantized
   alone, given float inputs (``sensitivity="local"``, one pass), or the KL of the whole model with
   only that layer quantized (``sensitivity="e2e"``, one pass per layer) — and apply remedies in
   order of preference: smoothing (already in), weight-only int8 for the most sensitive layers,
   then float for the most sensitive of those. How many layers get a remedy is found by bisection
   on end-to-end measurements, so the final plan's cost is measured, not estimated.

Every decision is kept as a record (:attr:`Int8Decisions.records`) for ``llmpack.json`` and the report.

Example:
    >>> from llmpack.testing import tiny_model
    >>> from llmpack.config import Recipe
    >>> import torch
    >>> m = tiny_model("llama")
    >>> d = search_budget(m, None, Recipe(method="int8", max_kl=0.05), batches=[torch.randint(0, 256, (1, 64))])
    >>> d.int8_share() > 0
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from llmpack.config import Recipe
from llmpack.errors import BadInputError, ConfigError
from llmpack.quant import smooth as _smooth
from llmpack.quant.decisions import Int8Decisions
from llmpack.tune.sensitivity import layer_sensitivity
from llmpack.tune.calibrate import (
    EvalResult,
    LayerSim,
    absmax_hooks,
    linear_layers,
    simulate,
    token_batches,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CALIB_TOKENS",
    "Int8Decisions",
    "search_budget",
    "apply_decisions",
]

DEFAULT_ALPHA: dict[str, float] = {"attn_in": 0.65, "attn_out": 0.65, "mlp_in": 0.65, "mlp_out": 0.65}
"""SmoothQuant alpha per group kind used when the recipe gives none (W8A8 only)."""

DEFAULT_CALIB_TOKENS = 1024
"""Calibration tokens used by the search (two windows of 512)."""

BUDGET_MARGIN = 0.5
"""The search aims at this fraction of the budget, so the plan also holds on text it has not seen (on SmolLM2
the held-out cost of a plan is about twice its cost on the 1k calibration tokens: +1.45 % there, +2.95 % held out)."""

BISECT_STEPS = 16
"""The bisection over "how many layers get the remedy" stops at 1/16 of the candidates (SmolLM2: 13 of 210)."""

_MODES = ("w8a8", "w8a16", "float")
# ---------------------------------------------------------------------- helpers
def _budget_ok(r: EvalResult, recipe: Recipe, margin: float) -> bool:
    ok = True
    if recipe.max_ppl_increase is not None:
        ok &= r.ppl_increase <= margin * float(recipe.max_ppl_increase)
    if recipe.max_kl is not None:
        ok &= r.kl <= margin * float(recipe.max_kl)
    return ok


def _over(r: EvalResult, recipe: Recipe) -> float:
    """How far ``r`` is over the budget: the largest measured / allowed ratio of the budget's metrics.

    Example:
        >>> round(_over(EvalResult(ppl=10.2, base_ppl=10.0, kl=0.01, top1=0.9), Recipe(method="int8", max_ppl_increase=4)), 6)
        0.5
    """
    vals = []
    if recipe.max_ppl_increase is not None:
        vals.append(r.ppl_increase / max(float(recipe.max_ppl_increase), 1e-12))
    if recipe.max_kl is not None:
        vals.append(r.kl / max(float(recipe.max_kl), 1e-12))
    return max(vals, default=0.0)


def _alpha_for(recipe: Recipe, alpha: float | Mapping[str, float] | None) -> dict[str, float]:
    if not recipe.method.act_quant:
        return {}  # weight-only: activations stay float, smoothing buys nothing
    if alpha is not None:
        return dict(alpha) if isinstance(alpha, Mapping) else {k: float(alpha) for k in DEFAULT_ALPHA}
    if recipe.smooth is not None:
        if float(recipe.smooth) == 0.0:
            return {}
        return {k: float(recipe.smooth) for k in DEFAULT_ALPHA}
    return dict(DEFAULT_ALPHA)


def _sim_plan(lins: Iterable[str], modes: Mapping[str, str], target_scale: Mapping[str, torch.Tensor],
              scheme: str = "int8") -> dict[str, LayerSim]:
    plan = {}
    for n in lins:
        mode = modes[n]
        s = target_scale.get(n)
        if mode == "float":
            continue  # float layers run untouched (smoothing is exact in float)
        plan[n] = LayerSim(mode, s if mode == "w8a8" else None, scheme)
    return plan


def _bisect(n: int, ok: Callable[[int], bool], tol: int = 1) -> int:
    """Smallest k in [0, n] with ok(k), to within ``tol`` (ok assumed monotone, ok(n) already known True).

    The returned k always satisfies ok; with ``tol > 1`` it may exceed the smallest such k by less than
    ``tol`` (a few more layers remedied than strictly needed, for fewer end-to-end measurements).

    Example:
        >>> _bisect(100, lambda k: k >= 37), _bisect(100, lambda k: k >= 37, tol=8) >= 37
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
def search_budget(
    model_or_source: "torch.nn.Module | str | os.PathLike[str]",
    tokenizer: Any = None,
    recipe: Recipe | None = None,
    text: "str | None" = None,
    *,
    batches: Sequence[torch.Tensor] | None = None,
    alpha: float | Mapping[str, float] | None = None,
    calib_tokens: int = DEFAULT_CALIB_TOKENS,
    seq_len: int = 512,
    sensitivity: str = "local",
    margin: float = BUDGET_MARGIN,
    act_stats: Mapping[str, torch.Tensor] | None = None,
    skip: Iterable[str] = (),
    progress: Callable[[str], None] | None = None,
    device: "str | torch.device" = "cpu",
) -> Int8Decisions:
    """Decide smoothing, weight-only and float layers for INT8 under the recipe's accuracy budget.

    With no budget (``max_ppl_increase`` and ``max_kl`` both ``None``) the defaults apply: W8A8 with
    SmoothQuant (alpha per :data:`DEFAULT_ALPHA`) and no search; the plan is still measured and the
    figures recorded. The model is never copied and is left unchanged.

    Args:
        model_or_source: a float causal LM in memory, or an HF directory, streamed one decoder block at a time
            in float32 (:mod:`llmpack.stream`): peak memory is about two blocks plus embeddings and head.
        tokenizer: its tokenizer (loaded from the directory when ``None``); unused with ``batches``.
        recipe: an int8 recipe (``max_ppl_increase`` in percent, ``max_kl`` in nats, ``smooth`` alpha).
        text: calibration text (default: ``llmpack.measure.text.default_text("calib")``).
        batches: token batches ``[1, n]`` instead of ``tokenizer`` + ``text``.
        alpha: SmoothQuant alpha (one number or per group kind) overriding ``recipe.smooth``.
        calib_tokens: calibration tokens used (cost grows linearly).
        seq_len: tokens per forward window.
        sensitivity: ``"local"`` (one pass; per-layer output error) or ``"e2e"`` (one pass per layer; KL of
            the model with that layer alone quantized).
        margin: aim at ``margin × budget`` on the calibration text.
        act_stats: precomputed :func:`~llmpack.tune.calibrate.collect_input_absmax` output (caching).
        skip: layers kept in float regardless (e.g. the recipe's ignore patterns, resolved).
        progress: called with a one-line message per step.
        device: where a directory's blocks run (``"cuda"``: one block at a time on the GPU).

    Returns:
        :class:`Int8Decisions`.

    Raises:
        ConfigError: the recipe is not an int8 recipe, or ``sensitivity`` is unknown.
        BadInputError: the model is not a causal LM with logits (budgets need perplexity / KL).

    Example:
        >>> from llmpack.testing import smollm2_dir        # doctest: +SKIP
        >>> d = search_budget(smollm2_dir(), recipe=Recipe(method="int8", max_ppl_increase=2))  # doctest: +SKIP
        >>> d.summary["planned"]["ppl_increase_pct"] <= 2   # doctest: +SKIP
        True
    """
    recipe = recipe or Recipe(method="int8")
    if not recipe.method.is_quantized:
        raise ConfigError(f"search_budget needs an int8 or fp8 recipe, got method {recipe.method.value}")
    if sensitivity not in ("local", "e2e"):
        raise ConfigError(f"unknown sensitivity {sensitivity!r}: choose 'local' or 'e2e'")
    say = progress or (lambda _msg: None)
    st, tokenizer = _resolve_streamer(model_or_source, tokenizer, device, need_tokenizer=batches is None)
    model = st.model
    if batches is None:
        if tokenizer is None:
            raise BadInputError("search_budget needs a tokenizer (or token batches) to read the calibration text")
        from llmpack.measure.text import resolve_text

        batches = token_batches(tokenizer, resolve_text(text, kind="calib"), seq_len=seq_len, max_tokens=calib_tokens)
    skip = set(skip)
    # Names only: a streamed block's modules are dropped after each block, so nothing may keep them alive.
    params = {n: int(m.weight.numel()) for n, m in linear_layers(model).items() if not _is_head(model, n, m)}
    lins = list(params)
    scheme = str(recipe.method.scheme)
    base_mode = "w8a8" if recipe.method.act_quant else "w8a16"
    ladder = [m for m in _MODES if _MODES.index(m) >= _MODES.index(base_mode)]
    # Every linear layer and smoothing group lives in one block (or outside all blocks, never streamed).
    block_of = _block_index(st, lins)
    per_block: dict[int, list[str]] = {}
    for n in lins:
        per_block.setdefault(block_of.get(n, -1), []).append(n)

    was_training = model.training
    model.eval()
    try:
        from llmpack.stream.evaluate import Stream, StreamedEvaluator

        say("calibrating: activation statistics, smoothing scales and the float reference"
            + (f", streamed block by block ({len(st.blocks)} blocks)" if st.streamed else ""))
        ev = StreamedEvaluator(st, batches)
        alphas = _alpha_for(recipe, alpha)
        # A group is folded only if none of its modules is skipped: skipped (ignored) tensors are written
        # exactly as in the source, and a producer's fold must reach every layer that reads its output.
        groups = [g for g in _smooth.find_groups(model) if g.kind in alphas
                  and g.prev not in skip and not any(t in skip for t in g.targets)]
        groups_in: dict[int, list[_smooth.SmoothGroup]] = {}
        for g in groups:
            groups_in.setdefault(block_of.get(g.targets[0], -1), []).append(g)
        stats: dict[str, torch.Tensor] = dict(act_stats) if act_stats is not None else {}
        scales: dict[str, torch.Tensor] = {}
        target_scale: dict[str, torch.Tensor] = {}
        modes = {n: ("float" if n in skip else base_mode) for n in lins}
        outside = [n for n in per_block.get(-1, []) if modes[n] != "float"]
        if outside:
            raise BadInputError(f"linear layer {outside[0]} lies outside the model's blocks: int8 calibration "
                                "cannot stream it; keep it in float with ignore=")

        def sim_ctx(m: Mapping[str, str]) -> Callable[[int, torch.nn.Module], Any]:
            return lambda i, _blk: simulate(model, _sim_plan(per_block.get(i, []), m, target_scale, scheme))

        def float_ctx(i: int, _blk: torch.nn.Module) -> Any:
            return None if act_stats is not None else absmax_hooks(model, per_block.get(i, []), stats)

        def fold_scales(i: int, _blk: torch.nn.Module) -> None:
            new = _smooth.compute_scales(model, groups_in.get(i, []), stats, alphas)
            scales.update(new)
            for g in groups_in.get(i, []):
                if g.prev in new:
                    target_scale.update({t: g.expand(new[g.prev]) for t in g.targets})

        # Pass 1: float (statistics, then this block's scales) and the default plan, block by block.
        float_ws, cand_ws = ev.fresh(), ev.fresh()
        ev.run([Stream(float_ws, float_ctx, fold_scales), Stream(cand_ws, sim_ctx(modes))])
        ev.set_reference([w.hidden for w in float_ws])
        groups = [g for g in groups if g.prev in scales]
        steps: list[dict[str, Any]] = []

        def record(m: Mapping[str, str], label: str, r: EvalResult) -> EvalResult:
            steps.append({"kind": "step", "step": label, **r.to_dict(), "int8_share": round(_share(params, m), 6)})
            say(f"{label}: ppl {r.ppl:.3f} ({r.ppl_increase:+.2f}%), KL {r.kl:.4f}")
            return r

        def measure(m: Mapping[str, str], label: str) -> EvalResult:
            return record(m, label, ev.candidate(sim_ctx(m)))

        has_budget = recipe.max_ppl_increase is not None or recipe.max_kl is not None
        result = record(modes, "all layers " + base_mode + (" + smoothing" if groups else ""),
                        ev.result(ev.score([w.hidden for w in cand_ws])))
        del float_ws, cand_ws
        reasons = {n: ("kept float (skip / ignore)" if modes[n] == "float" else "default") for n in lins}
        sens: dict[str, dict[str, float]] = {}
        if has_budget and not _budget_ok(result, recipe, margin):
            say("measuring per-layer sensitivity")
            sens = layer_sensitivity(ev, per_block, lins, target_scale, ladder, sensitivity, skip, scheme)
            current = base_mode
            for lvl in range(1, len(ladder)):
                cur, nxt = current, ladder[lvl]
                order = sorted((n for n in lins if modes[n] == cur), key=lambda n: -sens[n][cur])

                def trial(k: int, order: list[str] = order, nxt: str = nxt) -> tuple[dict[str, str], EvalResult]:
                    m = dict(modes)
                    for n in order[:k]:
                        m[n] = nxt
                    m = fuse_siblings(m)
                    return m, measure(m, f"{k} most sensitive {cur} layers -> {nxt}")

                cache: dict[int, tuple[dict[str, str], EvalResult]] = {}

                def ok(k: int) -> bool:
                    if k not in cache:
                        cache[k] = trial(k)
                    return _budget_ok(cache[k][1], recipe, margin)

                if ok(len(order)):
                    # ~4-5 end-to-end measurements instead of log2(n): a few extra layers may get the remedy.
                    k = _bisect(len(order), ok, tol=max(1, len(order) // BISECT_STEPS))
                    modes, result = cache[k] if k in cache else trial(k)
                    for n in order[:k]:
                        reasons[n] = f"{cur} over budget (sensitivity rank {order.index(n) + 1})"
                    _sibling_reasons(modes, reasons, nxt)
                    break
                every, r_every = cache[len(order)]
                if nxt != "float" and _over(r_every, recipe) >= _over(result, recipe):
                    # Measured, not assumed: FP8 weight-only can cost more than FP8 W8A8 with smoothing (SmolLM2).
                    say(f"every layer {nxt} measures no better than {cur}: that remedy is skipped")
                    continue
                modes, result, current = every, r_every, nxt
                for n in order:
                    reasons[n] = f"{cur} over budget for every layer"
        met = (not has_budget) or _budget_ok(result, recipe, 1.0)
        if has_budget and not met:
            say("budget not met even with every layer in float")

        by_target = {t: g for g in groups for t in g.targets}
        records: list[dict[str, Any]] = []
        for n in lins:
            rec: dict[str, Any] = {"kind": "layer", "module": n, "int8": modes[n], "reason": reasons[n],
                                   "params": params[n]}
            if scheme != "int8" and modes[n] != "float":
                rec["scheme"] = scheme  # "int8" stays the key of the mode: w8a8 / w8a16 / float
            g = by_target.get(n)
            if g is not None and modes[n] == "w8a8":
                rec["smooth"] = {"alpha": alphas[g.kind], "from": g.prev, "group": g.kind}
            if n in sens:
                rec["sensitivity"] = {k: round(v, 6) for k, v in sens[n].items()}
            records.append(rec)
        records.extend(steps)
        # Smoothing only matters for W8A8 targets; drop groups none of whose targets stay W8A8.
        used = {p: g for p, g in ((g.prev, g) for g in groups) if any(modes[t] == "w8a8" for t in g.targets)}
        summary = {
            "budget": {"max_ppl_increase": recipe.max_ppl_increase, "max_kl": recipe.max_kl, "margin": margin},
            "met": bool(met),
            "calibration_tokens": ev.ntokens,
            "float": {"ppl": round(result.base_ppl, 4)},
            "streamed": {"blocks": len(st.blocks), "device": str(st.device)} if st.streamed else None,
            "planned": result.to_dict(),
            "sensitivity": sensitivity if sens else None,
            "int8_share": round(_share(params, modes), 6),
        }
        return Int8Decisions(
            method=recipe.method.value, alpha=alphas if used else {}, groups=used,
            smooth_scales={p: scales[p] for p in used},
            weight_only={n for n, m in modes.items() if m == "w8a16"} if recipe.method.act_quant else set(),
            keep_float={n for n, m in modes.items() if m == "float"}, records=records, summary=summary, params=params,
            has_bias={p: getattr(model.get_submodule(p), "bias", None) is not None for p in used},
        )
    finally:
        model.train(was_training)


_RANK = {"w8a8": 0, "w8a16": 1, "float": 2}


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
                top = max((out[m] for m in members), key=_RANK.__getitem__)
                out.update({m: top for m in members})
    return out


def _sibling_reasons(modes: Mapping[str, str], reasons: dict[str, str], mode: str) -> None:
    """Reasons for the layers :func:`fuse_siblings` moved along with a sibling."""
    for n, m in modes.items():
        if m == mode and reasons.get(n) == "default":
            reasons[n] = f"{mode} with its fused siblings (vLLM refuses mixed-precision q/k/v and gate/up)"


def _share(params: Mapping[str, int], modes: Mapping[str, str]) -> float:
    total = sum(params.values())
    return sum(n for k, n in params.items() if modes[k] != "float") / total if total else 0.0


def _is_head(model: torch.nn.Module, name: str, mod: torch.nn.Module) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("lm_head", "embed_out", "output"):
        return True
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    out = mod.weight.shape[1] if type(mod).__name__ == "Conv1D" else mod.weight.shape[0]
    return isinstance(vocab, int) and out == vocab


def _block_index(st: Any, names: Iterable[str]) -> dict[str, int]:
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


def _resolve_streamer(model_or_source: Any, tokenizer: Any, device: "str | torch.device",
                      need_tokenizer: bool = True) -> tuple[Any, Any]:
    from llmpack.stream import BlockStreamer, StreamUnsupported, WholeModel, open_streamer

    if isinstance(model_or_source, torch.nn.Module):
        model, tokenizer = _resolve_model(model_or_source, tokenizer)
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


def _resolve_model(model_or_source: Any, tokenizer: Any) -> tuple[torch.nn.Module, Any]:
    if isinstance(model_or_source, torch.nn.Module):
        model = model_or_source
        if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
            raise BadInputError(
                f"{type(model).__name__} has no language-model head: the int8 accuracy budget measures perplexity/KL, "
                "so it needs a causal LM; quantize encoders without max_ppl_increase / max_kl"
            )
        return model, tokenizer
    raise BadInputError(f"expected an nn.Module, got {type(model_or_source).__name__}")


def apply_decisions(model: torch.nn.Module, decisions: Int8Decisions, recipe: Recipe, *, inplace: bool = False) -> torch.nn.Module:
    """Fold the smoothing into ``model`` and convert it to int8 with ``quantize_module``.

    With ``inplace=False`` the model is deep-copied once (the copy is folded and converted layer by
    layer, so the peak is one float copy plus the int8 result).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> q = apply_decisions(tiny_model("llama"), Int8Decisions(method="int8"), Recipe(method="int8"))
        >>> type(q.model.layers[0].mlp.down_proj).__name__
        'Int8Linear'
    """
    import copy

    from llmpack.runtime.convert import quantize_module

    target = model if inplace else copy.deepcopy(model)
    decisions.fold_into(target)
    return quantize_module(target, recipe, skip=sorted(decisions.keep_float), weight_only=sorted(decisions.weight_only),
                           inplace=True)
