"""INT8 accuracy budget: selection, records, llmpack.json round trip, and the SmolLM2 targets on held-out text."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmpack.config import Recipe
from llmpack.errors import BadInputError, ConfigError
from llmpack.tune.budget import Int8Decisions, apply_decisions, search_budget
from llmpack.tune.calibrate import Evaluator, LayerSim, linear_layers, simulate, token_batches
from llmpack.testing import tiny_model


def _batches(n: int = 96, seed: int = 0) -> list[torch.Tensor]:
    return [torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(seed))]


def _with_outliers(kind: str = "llama") -> torch.nn.Module:
    """A tiny model whose MLP inputs carry outlier channels (like SmolLM2's down_proj), so int8 costs something."""
    m = tiny_model(kind)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.post_attention_layernorm.weight[:3] = 40.0
            layer.mlp.up_proj.weight[:4] *= 30.0
    return m


def test_defaults_smooth_everything_and_quantize_every_layer() -> None:
    m = tiny_model("llama")
    d = search_budget(m, None, Recipe(method="int8"), batches=_batches())
    lins = linear_layers(m)
    assert set(d.params) == set(lins) - {"lm_head"}
    assert d.int8_share() == 1.0 and not d.keep_float and not d.weight_only
    assert {g.kind for g in d.groups.values()} == {"attn_in", "attn_out", "mlp_in", "mlp_out"}
    assert d.summary["met"] and d.summary["sensitivity"] is None
    assert d.summary["float"]["ppl"] > 1
    layer = next(r for r in d.records if r.get("module") == "model.layers.0.mlp.down_proj")
    assert layer["int8"] == "w8a8" and layer["smooth"]["from"] == "model.layers.0.mlp.up_proj"


def test_budget_is_met_by_the_cheapest_remedies() -> None:
    m = _with_outliers()
    b = _batches()
    naive = search_budget(m, None, Recipe(method="int8", smooth=0.0), batches=b)
    budget = naive.summary["planned"]["kl"] / 4
    assert budget > 0
    d = search_budget(m, None, Recipe(method="int8", max_kl=budget), batches=b)
    assert d.summary["met"]
    assert d.summary["planned"]["kl"] <= budget + 5e-7  # (recorded to 6 decimals)
    # remedies are applied in order: weight-only before float; float only if weight-only everywhere was not enough
    if d.keep_float:
        assert d.weight_only | d.keep_float == set(d.params)
    steps = [r for r in d.records if r.get("kind") == "step"]
    assert steps and steps[0]["step"].startswith("all layers w8a8")
    # the recorded plan is what the simulator measures
    ev = Evaluator(m, b)
    target = {t: g.expand(d.smooth_scales[g.prev]) for g in d.groups.values() for t in g.targets}
    plan = {n: LayerSim(d.layer_mode(n), target.get(n) if d.layer_mode(n) == "w8a8" else None)
            for n in d.params if d.layer_mode(n) != "float"}
    with simulate(m, plan):
        again = ev()
    assert math.isclose(again.kl, d.summary["planned"]["kl"], rel_tol=1e-3, abs_tol=1e-6)


def test_a_perplexity_budget_is_judged_on_the_kl_implied_increase() -> None:
    """The measured perplexity change on 1k calibration tokens is noise-bound (about a point either way on SmolLM2:
    a bf16 source once kept every layer float because plans whose KL fell steadily measured +1.1 %, +1.9 %, +0.6 %);
    the search judges a perplexity budget on ``100 (exp(KL) - 1)``, which moves with the plan only."""
    from llmpack.stream.evaluate import EvalResult
    from llmpack.tune.budget import BUDGET_MARGIN
    from llmpack.tune.steps import budget_ok, over_budget

    recipe = Recipe(method="fp8", max_ppl_increase=1.0)
    lucky = EvalResult(ppl=9.9, base_ppl=10.0, kl=0.02, top1=0.9)      # measured -1 %, KL-implied +2.02 %
    unlucky = EvalResult(ppl=10.2, base_ppl=10.0, kl=0.005, top1=0.95)  # measured +2 %, KL-implied +0.50 %
    assert not budget_ok(lucky, recipe, BUDGET_MARGIN) and budget_ok(unlucky, recipe, BUDGET_MARGIN)
    assert over_budget(lucky, recipe) == pytest.approx(100 * math.expm1(0.02))
    assert unlucky.to_dict()["kl_ppl_increase_pct"] == pytest.approx(0.501, abs=1e-3)


def test_budget_with_ppl_and_e2e_sensitivity() -> None:
    m = _with_outliers()
    d = search_budget(m, None, Recipe(method="int8", max_ppl_increase=0.0, max_kl=1e-9), batches=_batches(24), sensitivity="e2e",
                  alpha=0.5)
    assert any("sensitivity" in r for r in d.records if r.get("kind") == "layer")
    assert d.summary["sensitivity"] == "e2e"


def test_weight_only_recipe_never_smooths() -> None:
    d = search_budget(tiny_model("llama"), None, Recipe(method="int8-weight-only"), batches=_batches())
    assert not d.groups and not d.alpha
    assert all(d.layer_mode(n) == "w8a16" for n in d.params)


def test_real_int8_model_matches_the_simulation() -> None:
    m = _with_outliers()
    b = _batches()
    d = search_budget(m, None, Recipe(method="int8", max_kl=1e-3), batches=b)
    q = apply_decisions(m, d, Recipe(method="int8"))
    for n in d.keep_float:
        assert isinstance(q.get_submodule(n), torch.nn.Linear), n
    for n in d.weight_only:
        assert q.get_submodule(n).act_quant is False, n
    ev = Evaluator(m, b)
    with torch.no_grad():
        real = torch.log_softmax(q(input_ids=b[0]).logits[0, :-1].float(), -1)
    ref = ev._ref[0]
    kl_real = float((ref.exp() * (ref - real)).sum(-1).mean())
    assert kl_real <= max(2 * d.summary["planned"]["kl"], 1e-4)
    # the source model was not modified
    again = Evaluator(m, b)
    assert again.base_ppl == ev.base_ppl


def test_decisions_round_trip_through_llmpack_json(tmp_path) -> None:
    from llmpack.checkpoint.manifest import Manifest, read_manifest, write_manifest

    m = _with_outliers()
    d = search_budget(m, None, Recipe(method="int8", max_kl=1e-4), batches=_batches())
    man = Manifest(source={"kind": "module", "path": "<memory>", "fingerprint": ""},
                   recipe=Recipe(method="int8", max_kl=1e-4).to_dict())
    d.annotate_manifest(man)
    write_manifest(tmp_path, man)
    back = Int8Decisions.from_manifest(read_manifest(tmp_path))
    assert back is not None
    assert back.weight_only == d.weight_only and back.keep_float == d.keep_float
    assert back.alpha == d.alpha and back.params == d.params
    assert math.isclose(back.int8_share(), d.int8_share())
    raw = json.loads((tmp_path / "llmpack.json").read_text())
    assert raw["decisions"]["model.layers.1.mlp.down_proj"]["int8"] == d.layer_mode("model.layers.1.mlp.down_proj")
    assert raw["extra"]["int8_budget"]["summary"]["met"] is True


def test_transform_applies_the_smoothing_while_streaming() -> None:
    m = _with_outliers()
    d = search_budget(m, None, Recipe(method="int8"), batches=_batches())
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    streamed = {k: d.transform(k, v) for k, v in sd.items()}
    assert d.smoothed_tensors() and all(k in sd for k in d.smoothed_tensors())
    folded = tiny_model("llama")
    folded.load_state_dict(streamed)
    x = _batches()[0]
    with torch.no_grad():
        torch.testing.assert_close(folded(input_ids=x).logits, m(input_ids=x).logits, atol=1e-4, rtol=1e-4)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ConfigError):
        search_budget(tiny_model("llama"), None, Recipe(method="bf16"), batches=_batches())
    with pytest.raises(ConfigError, match="sensitivity"):
        search_budget(tiny_model("llama"), None, Recipe(method="int8"), batches=_batches(), sensitivity="magic")
    with pytest.raises(BadInputError, match="causal LM"):
        search_budget(tiny_model("bert"), None, Recipe(method="int8"), batches=_batches())
    with pytest.raises(BadInputError, match="malformed"):
        Int8Decisions.from_dict({"weight_only": []})


# ---------------------------------------------------------------------------------------- SmolLM2
@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return m, tok


@pytest.mark.slow
def test_smollm2_targets_on_heldout_text(smollm2, smollm2_dir, tmp_path) -> None:
    """Issue 5 item 2: <= +3 % with a 2 % budget and >= 80 % int8 params; defaults within +10 %.

    The budget run goes through ``llmpack.quantize`` to disk (calibrated on the ``calib`` slice) and is
    judged with ``llmpack.load`` (the real ``Int8Linear`` runtime) on the ``heldout`` slice.
    """
    import llmpack
    from llmpack.checkpoint.manifest import read_manifest
    from llmpack.measure.text import default_text

    m, tok = smollm2
    held = token_batches(tok, default_text("heldout"), 512, max_tokens=1024)
    ev = Evaluator(m, held)

    def heldout_ppl(q: torch.nn.Module) -> float:
        nll, n = 0.0, 0
        with torch.no_grad():
            for b in held:
                logp = torch.log_softmax(q(input_ids=b).logits[0, :-1].float(), -1)
                nll -= float(logp.gather(-1, b[0, 1:, None]).sum())
                n += b.shape[1] - 1
        return math.exp(nll / n)

    default = search_budget(m, tok, Recipe(method="int8"))
    ppl = heldout_ppl(apply_decisions(m, default, Recipe(method="int8")))
    assert ppl <= 1.10 * ev.base_ppl, (ppl, ev.base_ppl)

    from llmpack.pipeline import quantize

    res = quantize(smollm2_dir, "int8", out=tmp_path / "q", max_ppl_increase=2.0, quiet=True)
    back = Int8Decisions.from_manifest(read_manifest(tmp_path / "q"))
    assert back is not None and back.keep_float == res.int8_decisions.keep_float
    assert res.budget["int8_share"] >= 0.80 and back.int8_share() >= 0.80
    ppl2 = heldout_ppl(llmpack.load(tmp_path / "q"))
    assert ppl2 <= 1.03 * ev.base_ppl, (ppl2, ev.base_ppl, res.budget)
