"""Every step that runs the model at quantize / measure time gives, streamed from a directory, what it gives on
the whole model in memory: int8 decisions and statistics, the FP16 check, measure's accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import llmpack
from llmpack.config import Recipe
from llmpack.tune.budget import search_budget


def _batches(n: int = 2, seq: int = 48) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 256, (1, seq), generator=g) for _ in range(n)]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("recipe", [Recipe(method="int8"), Recipe(method="int8", max_kl=1e-4),
                                    Recipe(method="int8-weight-only", max_kl=1e-6)], ids=["default", "budget", "w8a16"])
def test_plan_int8_streamed_equals_in_memory(kind: str, recipe: Recipe, tiny_dirs: dict[str, Path]) -> None:
    d = tiny_dirs[kind]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    b = _batches()
    mem = search_budget(model, None, recipe, batches=b)
    st = search_budget(d, None, recipe, batches=b)
    assert st.summary["streamed"]["blocks"] == 2 and mem.summary["streamed"] is None
    assert (st.weight_only, st.keep_float, st.alpha) == (mem.weight_only, mem.keep_float, mem.alpha)
    assert sorted(st.smooth_scales) == sorted(mem.smooth_scales)
    for k, v in mem.smooth_scales.items():
        torch.testing.assert_close(st.smooth_scales[k], v, rtol=1e-5, atol=0)
    for a, c in zip([r for r in mem.records if r["kind"] == "step"], [r for r in st.records if r["kind"] == "step"]):
        assert a["step"] == c["step"]
        assert c["kl"] == pytest.approx(a["kl"], rel=1e-4, abs=1e-7)
        assert c["ppl"] == pytest.approx(a["ppl"], rel=1e-5)


def test_int8_output_streamed_equals_in_memory(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    """The whole pipeline: a directory (streamed calibration) writes what the in-memory model converts to."""
    from llmpack.testing import byte_tokenizer

    d = tok_dirs["llama"]
    res = llmpack.quantize(d, "int8", out=tmp_path / "o", quiet=True)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    mem = llmpack.quantize(model, "int8", tokenizer=byte_tokenizer(), quiet=True)
    assert res.int8_decisions is not None and mem.int8_decisions is not None
    assert res.int8_decisions.to_dict()["smoothed"] == mem.int8_decisions.to_dict()["smoothed"]
    assert res.budget["planned"] == mem.budget["planned"]


def test_fp16_check_changes_nothing_it_passes(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    a = llmpack.quantize(tiny_dirs["llama"], "fp16", out=tmp_path / "checked", quiet=True)
    b = llmpack.quantize(tiny_dirs["llama"], "fp16", out=tmp_path / "unchecked", quiet=True, calibrate=False)
    shards = {k: v["sha256"] for k, v in a.files.items() if k.endswith(".safetensors")}
    assert shards and shards == {k: v["sha256"] for k, v in b.files.items() if k.endswith(".safetensors")}


def test_fp16_overflow_found_streamed(tmp_path: Path) -> None:
    """An activation overflow inside a block is found block by block and kept in float32 with keep."""
    from llmpack.errors import Fp16OverflowError
    from llmpack.pipeline import check_fp16_activations
    from llmpack.testing import tiny_model

    m = tiny_model("llama-untied")
    with torch.no_grad():
        m.model.layers[1].mlp.up_proj.weight.mul_(3000.0)  # finite weights, overflowing activations
        m.model.layers[1].mlp.gate_proj.weight.mul_(3000.0)
        m.model.layers[1].mlp.down_proj.weight.div_(3000.0 ** 2)  # the block's output stays in range
    m.save_pretrained(tmp_path / "src")
    with pytest.raises(Fp16OverflowError, match="model.layers.1"):
        llmpack.quantize(tmp_path / "src", "fp16", out=tmp_path / "o", quiet=True)
    assert not (tmp_path / "o").exists()
    res = llmpack.quantize(tmp_path / "src", "fp16", out=tmp_path / "k", quiet=True, fp16_overflow="keep")
    assert res.fp32_modules and all(k.startswith("model.layers.1") for k in res.fp32_modules)
    assert check_fp16_activations(tmp_path / "k") is None


def test_measure_accuracy_streamed_equals_whole(tok_dirs: dict[str, Path], tmp_path: Path) -> None:
    from llmpack.measure.accuracy import causal_lm_accuracy
    from llmpack.measure.api import load_model

    base = tok_dirs["llama-untied"]
    llmpack.quantize(base, "int8", out=tmp_path / "q", quiet=True)
    text = "The quick brown fox jumps over the lazy dog. " * 30
    r = llmpack.measure(base, tmp_path / "q", text=text, quick=True, quiet=True, latency=False, window=64)
    assert r.latency == [] and any("latency not measured" in n for n in r.notes)
    ids = torch.tensor(r_ids(base, text))[:1024]  # quick=True scores the first 1024 tokens
    w = causal_lm_accuracy(load_model(base, "causal-lm"), load_model(tmp_path / "q", "causal-lm"), ids, window=64)
    a = r.accuracy
    assert a.tokens == w.tokens and a.top1 == w.top1
    assert a.ppl_candidate == pytest.approx(w.ppl_candidate, rel=1e-5)
    assert a.kl_mean == pytest.approx(w.kl_mean, rel=1e-4, abs=1e-8)


def r_ids(d: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(d)(text)["input_ids"])


def test_smollm2_int8_decisions_streamed_equal_in_memory(smollm2_dir: Path) -> None:
    """The real model: streamed from its directory, the budget search decides what it decides in memory."""
    from transformers import AutoTokenizer

    from llmpack.measure.text import default_text
    from llmpack.tune.calibrate import token_batches

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    b = token_batches(tok, default_text("calib"), seq_len=128, max_tokens=256)
    recipe = Recipe(method="int8", max_ppl_increase=0.5)  # tight: the search runs (sensitivity, bisection)
    st = search_budget(smollm2_dir, None, recipe, batches=b)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    mem = search_budget(model, None, recipe, batches=b)
    del model
    assert len([r for r in mem.records if r["kind"] == "step"]) > 1, "the search did not run"
    assert (st.weight_only, st.keep_float) == (mem.weight_only, mem.keep_float)
    for a, c in zip([r for r in mem.records if r["kind"] == "layer"], [r for r in st.records if r["kind"] == "layer"]):
        assert (a["module"], a["int8"], a["reason"]) == (c["module"], c["int8"], c["reason"])
        for k, v in (a.get("sensitivity") or {}).items():
            assert c["sensitivity"][k] == pytest.approx(v, rel=1e-3, abs=1e-9)
    for k, v in mem.smooth_scales.items():
        torch.testing.assert_close(st.smooth_scales[k], v, rtol=1e-5, atol=0)
    assert st.summary["planned"]["kl"] == pytest.approx(mem.summary["planned"]["kl"], rel=1e-4)


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_real_fp16_check_is_byte_neutral(which: str, smollm2_dir: Path, minilm_dir: Path, tmp_path: Path) -> None:
    """The streamed FP16 check runs on the real models and writes exactly the shards an unchecked run writes."""
    src = smollm2_dir if which == "smollm2" else minilm_dir
    a = llmpack.quantize(src, "fp16", out=tmp_path / "checked", quiet=True)
    b = llmpack.quantize(src, "fp16", out=tmp_path / "unchecked", quiet=True, calibrate=False)
    sha = lambda r: {k: v["sha256"] for k, v in r.files.items() if k.endswith(".safetensors")}  # noqa: E731
    assert sha(a) and sha(a) == sha(b) and not a.fp32_modules


def test_fp16_check_whole_model_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a block list the FP16 check runs the model whole and still finds the overflowing module."""
    import llmpack.stream.blocks as B
    from llmpack.errors import Fp16OverflowError, StreamUnsupported
    from llmpack.testing import tiny_model

    def no_blocks(m: torch.nn.Module) -> None:
        raise StreamUnsupported("no blocks")

    monkeypatch.setattr(B, "find_blocks", no_blocks)
    m = tiny_model("llama-untied")
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight.mul_(3000.0)
        m.model.layers[0].mlp.gate_proj.weight.mul_(3000.0)
    m.save_pretrained(tmp_path / "src")
    with pytest.raises(Fp16OverflowError, match="model.layers.0.mlp"):
        llmpack.quantize(tmp_path / "src", "fp16", out=tmp_path / "o", quiet=True)


def test_measure_models_that_do_not_fit(tok_dirs: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two directories larger than memory: accuracy streamed, latency not measured (said why), a speed gate fails."""
    import llmpack.measure.api as api
    from llmpack.errors import ConfigError

    base = tok_dirs["llama"]
    llmpack.quantize(base, "int8", out=tmp_path / "q", quiet=True)
    monkeypatch.setattr(api, "_resident_bytes", lambda a, b, dev: (40 * 10**9, 20 * 10**9))
    r = llmpack.measure(base, tmp_path / "q", text="Some words to score here. " * 40, quick=True, quiet=True,
                        gates={"min_speedup": 1.0, "max_kl": 1.0})
    assert r.latency == [] and r.accuracy.top1 is not None and r.size_candidate.load_peak_bytes is None
    assert "latency not measured: needs 40.0 GB, 20.0 GB available" in r.notes[0]
    assert r.failed_gates == ["min_speedup"]
    assert "Latency not measured: needs 40.0 GB" in r.to_markdown()
    with pytest.raises(ConfigError, match="min_speedup gate needs latency"):
        llmpack.measure(base, tmp_path / "q", quick=True, quiet=True, latency=False, gates={"min_speedup": 1.0})
