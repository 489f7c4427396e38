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
   only that layer quantized (``sensitivity="e2e"``, one pass per layer), or the KL of the model with one
   *role* quantized (``sensitivity="role"``, the default for FP8: one pass per role, e.g. every ``down_proj``,
   shared among the role's layers by local error; :mod:`llmpack.tune.sensitivity`) — and apply remedies in
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
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from llmpack.config import Recipe
from llmpack.errors import BadInputError, ConfigError
from llmpack.quant import smooth as _smooth
from llmpack.quant.decisions import Int8Decisions
from llmpack.tune.roles import fallback_dtype, remedy_order, weight_only_roles
from llmpack.tune.sensitivity import HOWS, layer_sensitivity
from llmpack.stream.evaluate import EvalResult
from llmpack.tune.calibrate import absmax_hooks, linear_layers, simulate, token_batches
from llmpack.tune.steps import (
    DEFAULT_ALPHA,
    MODE_RANK,
    alpha_for,
    bisect,
    block_index,
    budget_ok,
    is_head,
    over_budget,
    resolve_streamer,
    int8_share,
    sibling_reasons,
    sim_plan,
    fuse_siblings,
)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CALIB_TOKENS",
    "Int8Decisions",
    "search_budget",
    "apply_decisions",
]

DEFAULT_CALIB_TOKENS = 1024
"""Calibration tokens used by the search (two windows of 512)."""

BUDGET_MARGIN = 1.0
"""The fraction of the budget the search aims at. A perplexity budget is met by the KL-implied increase on the
calibration tokens (:func:`~llmpack.tune.steps.budget_ok`), which sits above what plans measure on text they have
not seen (docs/accuracy-budget.md has the figures), so no further margin is taken by default."""

BISECT_STEPS = 16
"""The bisection over "how many layers get the remedy" stops at 1/16 of the candidates (SmolLM2: 13 of 210)."""


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
    sensitivity: str = "auto",
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
        sensitivity: ``"local"`` (one pass; per-layer output error), ``"e2e"`` (one pass per layer; KL of
            the model with that layer alone quantized), ``"role"`` (one pass per role and mode; KL of the model
            with one role quantized, shared by local error; remedies then go first where they buy the most KL
            per parameter) or ``"auto"``: ``"role"`` for FP8, whose per-layer local errors are all alike, ``"local"``
            for int8.
        margin: aim at ``margin × budget`` on the calibration text (:data:`BUDGET_MARGIN`).
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
    if sensitivity == "auto":
        sensitivity = "local" if str(recipe.method.scheme) == "int8" else "role"
    if sensitivity not in HOWS:
        raise ConfigError(f"unknown sensitivity {sensitivity!r}: choose 'auto', " + ", ".join(map(repr, HOWS)))
    say = progress or (lambda _msg: None)
    st, tokenizer = resolve_streamer(model_or_source, tokenizer, device, need_tokenizer=batches is None)
    model = st.model
    if batches is None:
        if tokenizer is None:
            raise BadInputError("search_budget needs a tokenizer (or token batches) to read the calibration text")
        from llmpack.measure.text import resolve_text

        batches = token_batches(tokenizer, resolve_text(text, kind="calib"), seq_len=seq_len, max_tokens=calib_tokens)
    skip = set(skip)
    fallback = fallback_dtype(st.model, recipe)
    # Names only: a streamed block's modules are dropped after each block, so nothing may keep them alive.
    params = {n: int(m.weight.numel()) for n, m in linear_layers(model).items() if not is_head(model, n, m)}
    lins = list(params)
    scheme = str(recipe.method.scheme)
    base_mode = "w8a8" if recipe.method.act_quant else "w8a16"
    ladder = [m for m in MODE_RANK if MODE_RANK[m] >= MODE_RANK[base_mode]]  # (MODE_RANK lists them in rank order)
    # Every linear layer and smoothing group lives in one block (or outside all blocks, never streamed).
    block_of = block_index(st, lins)
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
        alphas = alpha_for(recipe, alpha)
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
            return lambda i, _blk: simulate(model, sim_plan(per_block.get(i, []), m, target_scale, scheme,
                                                             fallback, frozenset(skip)))

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
            steps.append({"kind": "step", "step": label, **r.to_dict(), "int8_share": round(int8_share(params, m), 6)})
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
        roles: dict[str, dict[str, float]] = {}
        if has_budget and not budget_ok(result, recipe, margin):
            say(f"measuring per-layer sensitivity ({sensitivity})")
            sens = layer_sensitivity(ev, per_block, lins, target_scale, ladder, sensitivity, skip, scheme, roles)
            current = base_mode
            if roles and base_mode == "w8a8" and "w8a16" in ladder:
                modes, result = weight_only_roles(modes, result, roles, reasons, measure,
                                                  lambda r: over_budget(r, recipe), fuse_siblings)
            for lvl in range(1, len(ladder)):
                if budget_ok(result, recipe, margin):
                    break
                cur, nxt = current, ladder[lvl]
                # every layer not yet past this rung (after weight_only_roles, w8a16 layers meet float too)
                order = remedy_order([n for n in lins if MODE_RANK[cur] <= MODE_RANK[modes[n]] < MODE_RANK[nxt]], sens,
                                      {n: modes[n] for n in lins}, params, per_param=sensitivity == "role")

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
                    return budget_ok(cache[k][1], recipe, margin)

                if ok(len(order)):
                    # ~4-5 end-to-end measurements instead of log2(n): a few extra layers may get the remedy.
                    k = bisect(len(order), ok, tol=max(1, len(order) // BISECT_STEPS))
                    modes, result = cache[k] if k in cache else trial(k)
                    for n in order[:k]:
                        reasons[n] = f"{cur} over budget (sensitivity rank {order.index(n) + 1})"
                    sibling_reasons(modes, reasons, nxt)
                    break
                every, r_every = cache[len(order)]
                if nxt != "float" and over_budget(r_every, recipe) >= over_budget(result, recipe):
                    # Measured, not assumed: FP8 weight-only can cost more than FP8 W8A8 with smoothing (SmolLM2).
                    say(f"every layer {nxt} measures no better than {cur}: that remedy is skipped")
                    continue
                modes, result, current = every, r_every, nxt
                for n in order:
                    reasons[n] = f"{cur} over budget for every layer"
        met = (not has_budget) or budget_ok(result, recipe, 1.0)
        if has_budget and not met:
            say("budget not met even with every layer in float")

        by_target = {t: g for g in groups for t in g.targets}
        records: list[dict[str, Any]] = []
        for n in lins:
            rec: dict[str, Any] = {"kind": "layer", "module": n, "int8": modes[n], "reason": reasons[n],
                                   "params": params[n]}
            if scheme != "int8" and modes[n] != "float":
                rec["scheme"] = scheme  # "int8" stays the key of the mode: w8a8 / w8a16 / float
            if modes[n] == "float" and n not in skip and fallback is not None:
                rec["stored"] = "bf16"
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
            **({"role_kl": {r: {m: round(v, 6) for m, v in kl.items()} for r, kl in roles.items()}} if roles else {}),
            "int8_share": round(int8_share(params, modes), 6),
            "float_fallback_dtype": "bf16" if fallback is not None else None,
        }
        return Int8Decisions(
            method=recipe.method.value, alpha=alphas if used else {}, groups=used,
            smooth_scales={p: scales[p] for p in used},
            weight_only={n for n, m in modes.items() if m == "w8a16"} if recipe.method.act_quant else set(),
            keep_float={n for n, m in modes.items() if m == "float"},
            float_storage={n: "bf16" for n, m in modes.items() if m == "float" and n not in skip and fallback is not None},
            records=records, summary=summary, params=params,
            has_bias={p: getattr(model.get_submodule(p), "bias", None) is not None for p in used},
        )
    finally:
        model.train(was_training)


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

    from llmpack.quant.floats import float_dtype

    target = model if inplace else copy.deepcopy(model)
    decisions.fold_into(target)
    with torch.no_grad():  # the budget's narrower float storage, as the written file holds it (values only)
        for n, dt in decisions.float_storage.items():
            w = target.get_submodule(n).weight
            w.copy_(w.to(float_dtype(dt)).to(w.dtype))
    return quantize_module(target, recipe, skip=sorted(decisions.keep_float), weight_only=sorted(decisions.weight_only),
                           inplace=True)
