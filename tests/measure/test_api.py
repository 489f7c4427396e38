"""measure(): in-memory modules and model directories, tokenizer checks, caps, gates, real models."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from llmpack.errors import BadInputError, ConfigError, SourceNotFoundError
from llmpack.measure.api import detect_task, measure, measure_after_quantize
from llmpack.testing import byte_tokenizer, tiny_model


def test_identical_candidate_gives_zero_deltas(device: str, fast: dict) -> None:
    m = tiny_model("llama")
    r = measure(m, m, tokenizer=byte_tokenizer(), device=device, text="hello world, " * 40, **fast)
    a = r.accuracy
    assert a.kl_mean == 0.0 and a.kl_p99 == 0.0 and a.top1 == 1.0 and a.ppl_delta_pct == 0.0
    assert r.task == "causal-lm" and r.environment["device"] == device
    assert [(e.phase, e.batch_size) for e in r.latency] == [("prefill", 1), ("decode", 1)]
    assert r.param_ratio == 1.0 and r.size_baseline.load_peak_bytes is None
    assert r.passed and r.gate_results == []


def test_dirs_sizes_and_load_memory(tok_dirs: dict[str, Path], fast: dict) -> None:
    d = tok_dirs["gpt2"]
    r = measure(d, d, gates={"max_size_ratio": 1.0, "min_top1": 1.0}, **fast)
    sb = r.size_baseline
    assert sb.files["model.safetensors"] == (d / "model.safetensors").stat().st_size
    assert sb.disk_bytes == sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert sb.load_peak_bytes is not None and sb.load_peak_bytes >= 0
    assert r.disk_ratio == 1.0 and r.passed
    assert r.baseline.kind == "dir" and r.baseline.name == "gpt2"
    assert r.settings["text"]["tokens"] > 0 and len(r.settings["text"]["sha256"]) == 64


def test_bf16_candidate_dir(tok_dirs: dict[str, Path], tmp_path: Path, fast: dict) -> None:
    cand = tmp_path / "bf16"
    m = tiny_model("llama").to(torch.bfloat16)
    m.save_pretrained(cand)
    byte_tokenizer().save_pretrained(cand)
    r = measure(tok_dirs["llama"], cand, **fast)
    assert r.candidate.dtype == "bfloat16" and r.candidate.label == "bf16"
    assert r.disk_ratio == pytest.approx(0.5, abs=0.02)
    assert r.summary().startswith("bf16: 0.5")
    assert r.accuracy.top1 > 0.8


def test_encoder_dirs(tok_dirs: dict[str, Path], fast: dict) -> None:
    r = measure(tok_dirs["bert"], tok_dirs["bert"], gates={"min_cosine": 0.999, "min_top1": 0.9}, **fast)
    assert r.task == "encoder"
    assert r.latency[0].phase == "forward"
    assert r.accuracy.cosine_min == pytest.approx(1.0, abs=1e-5)
    res = {g.name: g for g in r.gate_results}
    assert res["min_cosine"].passed and not res["min_top1"].applicable
    assert r.passed


def test_broken_candidate_fails_gates(fast: dict) -> None:
    a = tiny_model("llama")
    b = copy.deepcopy(a)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    gates = {"max_ppl_increase_pct": 2, "min_top1": 0.9, "max_kl": 0.05}
    r = measure(a, b, tokenizer=byte_tokenizer(), gates=gates, text="The quick brown fox. " * 30, **fast)
    assert not r.passed
    assert set(r.failed_gates) >= {"min_top1", "max_kl"}
    assert "FAILED" in r.summary()


def test_fp16_on_cpu_is_capped(fast: dict) -> None:
    a = tiny_model("llama")
    b = copy.deepcopy(a).half()
    fast.update(batch_sizes=(1, 4), seq_len=64, new_tokens=16, runs=5)
    r = measure(a, b, tokenizer=byte_tokenizer(), device="cpu", text="some text to read. " * 100, **fast)
    assert r.settings["batch_sizes"] == [1] and r.settings["seq_len"] == 32 and r.settings["new_tokens"] == 4
    assert r.settings["runs"] == 1 and r.settings["text"]["tokens"] <= 256
    assert len(r.latency[0].baseline.samples_ms) == 1
    assert any("FP16 on CPU" in n for n in r.notes)


def test_seq_len_cut_to_context(fast: dict) -> None:
    m = tiny_model("gpt2")  # n_positions 128
    fast.update(seq_len=500, new_tokens=8)
    r = measure(m, m, tokenizer=byte_tokenizer(), text="abc " * 300, **fast)
    assert r.settings["seq_len"] == 120 and r.accuracy.window == 128
    assert any("context length" in n for n in r.notes)


def test_different_tokenizers_refused(tok_dirs: dict[str, Path], tmp_path: Path, fast: dict) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = tmp_path / "other"
    shutil.copytree(tok_dirs["llama"], other)
    (other / "tokenizer.json").unlink()
    vocab = {f"w{i}": i for i in range(255)} | {"[UNK]": 255}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="[UNK]")),
                                  unk_token="[UNK]")
    tok.save_pretrained(other)
    with pytest.raises(BadInputError, match="different tokenizers"):
        measure(tok_dirs["llama"], other, **fast)
    # an explicit tokenizer= overrides the check
    r = measure(tok_dirs["llama"], other, tokenizer=byte_tokenizer(), **fast)
    assert r.accuracy.top1 == 1.0


def test_bad_inputs(tok_dirs: dict[str, Path], tmp_path: Path, fast: dict) -> None:
    m = tiny_model("llama")
    with pytest.raises(BadInputError, match="no tokenizer"):
        measure(m, m, **fast)
    with pytest.raises(BadInputError, match="compare like with like"):
        measure(tok_dirs["llama"], tok_dirs["bert"], **fast)
    with pytest.raises(SourceNotFoundError):
        measure(tmp_path / "missing", tok_dirs["llama"], **fast)
    with pytest.raises(BadInputError, match="config.json"):
        measure(tmp_path, tok_dirs["llama"], **fast)
    with pytest.raises(ConfigError, match="valid gates are"):
        measure(m, m, tokenizer=byte_tokenizer(), gates={"max_ppl": 1}, **fast)
    with pytest.raises(ConfigError):
        measure(m, m, tokenizer=byte_tokenizer(), **{**fast, "batch_sizes": (0,)})
    with pytest.raises(BadInputError, match="empty"):
        measure(m, m, tokenizer=byte_tokenizer(), text="  ", **fast)


def test_detect_task() -> None:
    assert detect_task({"architectures": ["GPT2LMHeadModel"]}) == "causal-lm"
    assert detect_task({}, tiny_model("bert")) == "encoder"
    with pytest.raises(BadInputError, match="cannot tell the task"):
        detect_task({"model_type": "whisper", "architectures": ["WhisperForAudioClassification"]})


def test_measure_after_quantize_reads_args(tok_dirs: dict[str, Path], fast: dict) -> None:
    import argparse

    args = argparse.Namespace(device="cpu", quick=True, quiet=True, batch_sizes="1", seq_len=16,
                              max_ppl_increase=5.0, min_top1=None)
    r = measure_after_quantize(tok_dirs["llama"], tok_dirs["llama"], args, runs=1, new_tokens=2)
    assert r.gates == {"max_ppl_increase_pct": 5.0} and r.passed
    assert r.settings["batch_sizes"] == [1]


# ---- real models (slow, kept short) -----------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_bf16_vs_fp32(smollm2_dir: Path, tmp_path: Path) -> None:
    """BF16 SmolLM2 vs FP32: |ppl delta| < 0.5%; ppl agrees with transformers' labels= loss."""
    from transformers import AutoModelForCausalLM

    from llmpack.measure.text import default_text

    cand = _bf16_dir(smollm2_dir, tmp_path)
    text = default_text("eval", 2048)
    r = measure(smollm2_dir, cand, text=text, quick=True, quiet=True, batch_sizes=(1,), seq_len=32, new_tokens=2,
                runs=1, window=256, gates={"max_ppl_increase_pct": 0.5, "min_top1": 0.9, "max_size_ratio": 0.55})
    acc = r.accuracy
    assert abs(acc.ppl_delta_pct) < 0.5, r.to_markdown()
    assert 5 < acc.ppl_baseline < 40  # a trained model (random init: ~50,000)
    assert acc.top1 > 0.9 and acc.kl_mean < 0.02
    assert r.disk_ratio == pytest.approx(0.5, abs=0.01) and r.passed
    # perplexity == exp(token-weighted transformers labels= loss) on the same windows
    m = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(smollm2_dir)(text)["input_ids"]
    ids = torch.tensor(ids)
    nll, count = 0.0, 0
    from llmpack.measure.accuracy import windows

    with torch.inference_mode():
        for begin, end, trg in windows(ids.numel(), 256, 256):
            x = ids[begin:end][None]
            labels = x.clone()
            labels[:, :-trg] = -100
            n = int((labels[:, 1:] != -100).sum())
            nll += float(m(input_ids=x, labels=labels).loss) * n
            count += n
    import math

    assert acc.ppl_baseline == pytest.approx(math.exp(nll / count), rel=0.005)


def _bf16_dir(src: Path, tmp: Path) -> Path:
    """SmolLM2 in BF16: llmpack.quantize's output when the pipeline exists, else a stock save_pretrained."""
    out = tmp / "smollm2-bf16"
    try:
        from llmpack.pipeline import quantize
    except ImportError:
        quantize = None
    if quantize is not None:
        quantize(src, "bf16", out=out, quiet=True)
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.mark.slow
def test_minilm_encoder_sanity(minilm_dir: Path) -> None:
    from transformers import AutoModel

    base = AutoModel.from_pretrained(minilm_dir).eval()
    cand = copy.deepcopy(base).to(torch.bfloat16)
    r = measure(base, cand, tokenizer=minilm_dir, quick=True, quiet=True, seq_len=32, runs=1,
                gates={"min_cosine": 0.98})
    a = r.accuracy
    assert a.paraphrase_sim_baseline > a.unrelated_sim_baseline + 0.3
    assert a.cosine_mean > 0.99 and r.passed


def test_runtime_reference_is_named_and_runs_the_reference(tok_dirs: dict[str, Path], tmp_path: Path,
                                                           fast: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """--runtime reference: the int8 candidate runs compressed-tensors' arithmetic (the dequant kernel), and the
    report says which kernel produced the figures; the default names the kernel llmpack.load runs here."""
    import llmpack
    from llmpack.runtime import kernels

    q = tmp_path / "q"
    llmpack.quantize(tok_dirs["llama"], "int8", out=q, quiet=True)
    seen: list[str] = []
    real = kernels.w8a8

    def spy(x2, packs, kernel, *rest):  # noqa: ANN001, ANN002, ANN202
        seen.append(kernel)
        return real(x2, packs, kernel, *rest)

    monkeypatch.setattr(kernels, "w8a8", spy)
    ref = measure(tok_dirs["llama"], q, runtime="reference", **fast)
    assert set(seen) == {"dequant"}
    seen.clear()
    default = measure(tok_dirs["llama"], q, **fast)
    assert seen and "dequant" not in seen
    assert ref.settings["int8_runtime"].startswith("dequant (compressed-tensors' arithmetic")
    assert any(n.startswith("int8 layers ran dequant") for n in ref.notes)
    assert default.settings["int8_runtime"].split()[0] == kernels.kernel_for("cpu", 8, 8)  # (prefill-sized inputs)
    with pytest.raises(ConfigError, match="runtime 'fast'"):
        measure(tok_dirs["llama"], q, runtime="fast", **fast)
