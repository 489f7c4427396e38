"""The int8 accuracy budget inside ``llmpack.quantize``: streamed smoothing, budget records in llmpack.json,
disk == memory, planning with skip / weight_only, and the fallbacks without calibration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import llmpack
from llmpack.checkpoint.manifest import read_manifest
from llmpack.config import Recipe
from llmpack.errors import BadInputError
from llmpack.pipeline import quantize
from llmpack.tune.budget import Int8Decisions, apply_decisions
from llmpack.testing import byte_tokenizer, tiny_model


def _outlier_model() -> torch.nn.Module:
    """Tiny llama whose MLP inputs carry outlier channels, so W8A8 costs something measurable."""
    m = tiny_model("llama")
    with torch.no_grad():
        for layer in m.model.layers:
            layer.post_attention_layernorm.weight[:3] = 40.0
            layer.mlp.up_proj.weight[:4] *= 30.0
    return m


@pytest.fixture(scope="module")
def outlier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("outlier") / "src"
    _outlier_model().save_pretrained(d)
    byte_tokenizer().save_pretrained(d)
    return d


def test_plan_and_quantize_module_honour_skip_and_weight_only() -> None:
    from llmpack.runtime.convert import quantize_module

    m = tiny_model("llama")
    q = quantize_module(m, Recipe(method="int8"), skip=["model.layers.0.mlp.down_proj"],
                        weight_only=["model.layers.1.self_attn.q_proj"])
    assert type(q.model.layers[0].mlp.down_proj) is torch.nn.Linear
    assert q.model.layers[1].self_attn.q_proj.act_quant is False
    assert q.model.layers[1].mlp.down_proj.act_quant is True


def test_budget_to_disk_records_loads_and_matches_memory(outlier_dir: Path, tmp_path: Path) -> None:
    res = quantize(outlier_dir, "int8", out=tmp_path / "q", max_kl=2e-6, quiet=True)
    d = res.int8_decisions
    assert d is not None and res.budget["calibrated"] and res.budget["met"]
    assert d.weight_only or d.keep_float, res.budget  # the tiny budget forces remedies
    assert "budget KL 2e-06" in res.summary() and "W8A16" in res.summary()
    man = read_manifest(tmp_path / "q")
    raw = json.loads((tmp_path / "q" / "llmpack.json").read_text())
    assert raw["recipe"]["max_kl"] == 2e-6
    for name in d.params:
        assert raw["decisions"][name]["int8"] == d.layer_mode(name)
    back = Int8Decisions.from_manifest(man)
    assert back is not None and back.weight_only == d.weight_only and back.keep_float == d.keep_float
    assert back.params == d.params
    llmpack.verify(tmp_path / "q")
    q = llmpack.load(tmp_path / "q")
    for name in d.keep_float:
        assert type(q.get_submodule(name)) is torch.nn.Linear, name
    for name in d.weight_only:
        assert q.get_submodule(name).act_quant is False, name
    from transformers import AutoModelForCausalLM

    src = AutoModelForCausalLM.from_pretrained(outlier_dir, dtype=torch.float32)
    mem = apply_decisions(src, d, Recipe(method="int8"))
    x = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(q(input_ids=x).logits, mem(input_ids=x).logits, rtol=0, atol=1e-5)


def test_default_w8a8_smooths_while_streaming(outlier_dir: Path, tmp_path: Path) -> None:
    res = quantize(outlier_dir, "int8", out=tmp_path / "q", quiet=True)
    d = res.int8_decisions
    assert d is not None and d.groups and not d.keep_float and not d.weight_only
    # the streamed norm weight carries the folded scale (x / s), so it differs from the source
    from safetensors.torch import load_file

    ln = "model.layers.0.post_attention_layernorm.weight"
    assert ln in d.smoothed_tensors()
    out = {}
    for f in (tmp_path / "q").glob("*.safetensors"):
        out.update(load_file(f))
    src = load_file(outlier_dir / "model.safetensors")
    assert out[ln].shape == src[ln].shape and out[ln].dtype == src[ln].dtype
    assert not torch.equal(out[ln], src[ln])
    # in memory with the tokenizer: the same smoothing and the same int8 logits as the files
    mem = quantize(_outlier_model(), "int8", tokenizer=byte_tokenizer(), quiet=True).model
    x = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(llmpack.load(tmp_path / "q")(input_ids=x).logits, mem(input_ids=x).logits,
                                   rtol=0, atol=1e-5)


def test_no_calibration_fallbacks(tiny_dirs, tok_dirs, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="tokenizer"):
        res = quantize(tiny_model("llama"), "int8", quiet=True)
    assert res.budget == {"calibrated": False, "reason": "no tokenizer: plain W8A8 without smoothing"}
    # encoders: plain W8A8, the reason lands in llmpack.json; a budget is refused
    res = quantize(tok_dirs["bert"], "int8", out=tmp_path / "b", quiet=True)
    raw = json.loads((tmp_path / "b" / "llmpack.json").read_text())
    assert "causal LM" in raw["extra"]["int8_calibration"]["reason"]
    with pytest.raises(BadInputError, match="budget"):
        quantize(tiny_dirs["llama"], "int8", out=tmp_path / "c", max_ppl_increase=2, quiet=True)
    assert not (tmp_path / "c").exists()
    # weight-only without a budget needs no calibration
    res = quantize(tok_dirs["llama"], "int8-weight-only", out=tmp_path / "w", quiet=True)
    assert res.int8_decisions is None and not res.budget["calibrated"]
