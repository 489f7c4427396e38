"""Accuracy: windows, perplexity vs transformers' labels= loss, KL / top-1, encoder cosine."""

from __future__ import annotations

import math

import pytest
import torch

from llmpack.errors import ConfigError
from llmpack.measure.accuracy import causal_lm_accuracy, encoder_accuracy, split_sentences, windows
from llmpack.testing import byte_tokenizer, tiny_model


def test_windows_non_overlapping() -> None:
    assert windows(10, 4, 4) == [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
    assert windows(8, 4, 4) == [(0, 4, 4), (4, 8, 4)]


def test_windows_sliding() -> None:
    w = windows(10, 6, 3)
    assert w == [(0, 6, 6), (3, 9, 3), (6, 10, 1)]
    # every token after the first is scored exactly once
    assert sum(min(t, e - b - 1) for b, e, t in w) == 9


def test_windows_invalid() -> None:
    with pytest.raises(ConfigError):
        windows(10, 4, 5)
    with pytest.raises(ConfigError):
        windows(10, 1, 1)


def _hf_ppl(model: torch.nn.Module, ids: torch.Tensor, window: int, stride: int) -> float:
    """Perplexity the way the transformers guide computes it: labels= loss per window, token-weighted."""
    nll, count = 0.0, 0
    with torch.inference_mode():
        for begin, end, trg in windows(ids.numel(), window, stride):
            x = ids[begin:end].unsqueeze(0)
            labels = x.clone()
            labels[:, :-trg] = -100
            n_valid = int((labels[:, 1:] != -100).sum())
            loss = model(input_ids=x, labels=labels).loss
            nll += float(loss) * n_valid
            count += n_valid
    return math.exp(nll / count)


@pytest.mark.parametrize("stride", [32, 13])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_ppl_matches_transformers_labels_loss(kind: str, stride: int) -> None:
    m = tiny_model(kind)
    ids = torch.tensor(byte_tokenizer()("The quick brown fox jumps over the lazy dog. " * 4).input_ids)
    s = causal_lm_accuracy(m, m, ids, window=32, stride=stride)
    ref = _hf_ppl(m, ids, 32, stride)
    assert s.ppl_baseline == pytest.approx(ref, rel=0.005)
    # sliding windows score every token but the first; non-overlapping ones also skip each window's first token
    expected = ids.numel() - 1 if stride < 32 else ids.numel() - len(windows(ids.numel(), 32, 32))
    assert s.tokens == expected


def test_identical_models_agree_exactly(device: str) -> None:
    m = tiny_model("llama").to(device)
    s = causal_lm_accuracy(m, m, torch.arange(200) % 256, window=64, device=device)
    assert s.kl_mean == 0.0 and s.kl_p99 == 0.0 and s.kl_max == 0.0
    assert s.top1 == 1.0
    assert s.ppl_delta_pct == 0.0 and s.ppl_baseline == s.ppl_candidate


def test_noisy_candidate_disagrees() -> None:
    a = tiny_model("llama")
    b = tiny_model("llama")
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    s = causal_lm_accuracy(a, b, torch.arange(200) % 256, window=64)
    assert s.kl_mean > 0.01
    assert s.top1 < 0.9
    assert s.kl_p99 >= s.kl_mean


def test_split_sentences() -> None:
    assert split_sentences("Tiny. " + "A sentence of some length here. " * 3, max_sentences=2) == [
        "A sentence of some length here."] * 2


def test_encoder_cosine() -> None:
    tok = byte_tokenizer()
    a = tiny_model("bert")
    text = "First sentence that is long enough. Second sentence, also long enough! A third one for luck?"
    same = encoder_accuracy(a, a, tok, text)
    assert same.sentences == 3
    assert same.cosine_min == pytest.approx(1.0, abs=1e-5)
    assert same.paraphrase_sim_baseline == same.paraphrase_sim_candidate
    b = tiny_model("bert", seed=3)
    diff = encoder_accuracy(a, b, tok, text)
    assert diff.cosine_min < same.cosine_min
    assert diff.ppl_baseline is None and diff.top1 is None
