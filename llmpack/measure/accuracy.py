"""Accuracy: perplexity, KL divergence and top-1 agreement (causal LMs); embedding cosine (encoders).

Perplexity windows (HF-style, as in the transformers "Perplexity of fixed-length models" guide):
the text is tokenized once (with the tokenizer's default special tokens); windows of ``window``
tokens start every ``stride`` tokens; in each window only the tokens not already scored by the
previous window are scored (the others get label ``-100``), and the first token of the text has no
prediction. ``stride == window`` (the default) gives non-overlapping windows; a smaller stride gives
each scored token more context. Perplexity is ``exp(sum of NLL / number of scored tokens)`` — exactly
the token-weighted mean of what transformers' ``model(input_ids, labels=labels).loss`` gives per window.

KL divergence ``KL(P_baseline || P_candidate)`` and top-1 agreement are computed on the same scored
positions from the same forward passes; log-softmax runs in float32 whatever the model dtype.

Encoders: sentence embeddings are mean-pooled over the attention mask; we report cosine similarity of
candidate vs baseline embedding per sentence (mean, min), and, as a sanity figure, the mean similarity
of a few built-in paraphrase pairs vs unrelated pairs under each model (trained models: high vs ~0).

Example:
    >>> windows(10, window=4, stride=4)
    [(0, 4, 4), (4, 8, 4), (8, 10, 2)]
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Sequence

import torch

from llmpack.measure.latency import percentile

__all__ = [
    "AccuracyStats",
    "windows",
    "causal_lm_accuracy",
    "accumulate",
    "encoder_accuracy",
    "split_sentences",
    "PARAPHRASE_PAIRS",
    "UNRELATED_PAIRS",
]

PARAPHRASE_PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar.", "A person is playing the guitar."),
    ("The cat is sitting on the mat.", "A cat sits on the rug."),
    ("How do I reset my password?", "What is the way to change my password?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply today."),
    ("The weather is lovely this morning.", "It is a beautiful morning outside."),
)
UNRELATED_PAIRS: tuple[tuple[str, str], ...] = (
    ("A man is playing a guitar.", "Share prices dropped steeply today."),
    ("The cat is sitting on the mat.", "What is the way to change my password?"),
    ("How do I reset my password?", "It is a beautiful morning outside."),
    ("The stock market fell sharply today.", "A cat sits on the rug."),
    ("The weather is lovely this morning.", "A person is playing the guitar."),
)


@dataclasses.dataclass
class AccuracyStats:
    """Accuracy of the candidate against the baseline. Fields that do not apply to the task are ``None``.

    Causal LMs: ``ppl_*`` (perplexity), ``ppl_delta_pct`` (candidate vs baseline, percent),
    ``kl_mean`` / ``kl_p99`` / ``kl_max`` (nats per token), ``top1`` (fraction of positions whose argmax
    agrees), ``tokens`` (scored tokens), ``windows``, ``window``, ``stride``.
    Encoders: ``sentences``, ``cosine_mean`` / ``cosine_min`` (candidate vs baseline embeddings),
    ``paraphrase_sim_*`` / ``unrelated_sim_*`` (mean cosine of the built-in pairs under each model).

    Example:
        >>> round(AccuracyStats(task="causal-lm", ppl_baseline=10.0, ppl_candidate=10.5).ppl_delta_pct, 6)
        5.0
    """

    task: str
    tokens: int = 0
    windows: int = 0
    window: int = 0
    stride: int = 0
    ppl_baseline: float | None = None
    ppl_candidate: float | None = None
    ppl_delta_pct: float | None = None
    kl_mean: float | None = None
    kl_p99: float | None = None
    kl_max: float | None = None
    top1: float | None = None
    sentences: int = 0
    cosine_mean: float | None = None
    cosine_min: float | None = None
    paraphrase_sim_baseline: float | None = None
    unrelated_sim_baseline: float | None = None
    paraphrase_sim_candidate: float | None = None
    unrelated_sim_candidate: float | None = None

    def __post_init__(self) -> None:
        if self.ppl_delta_pct is None and self.ppl_baseline and self.ppl_candidate is not None:
            self.ppl_delta_pct = (self.ppl_candidate / self.ppl_baseline - 1.0) * 100.0

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AccuracyStats":
        """Inverse of :meth:`to_dict` (unknown keys are ignored for forward compatibility)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """HF-style sliding windows over ``n_tokens``: ``(begin, end, n_targets)`` where the last
    ``n_targets`` labels of ``ids[begin:end]`` are scored (the rest were scored by an earlier window).

    Example:
        >>> windows(10, window=6, stride=3)
        [(0, 6, 6), (3, 9, 3), (6, 10, 1)]
    """
    if window < 2 or stride < 1 or stride > window:
        from llmpack.errors import ConfigError

        raise ConfigError(f"invalid perplexity windows (window={window}, stride={stride}): "
                          "need window >= 2 and 1 <= stride <= window")
    out: list[tuple[int, int, int]] = []
    prev_end = 0
    for begin in range(0, max(n_tokens - 1, 1), stride):
        end = min(begin + window, n_tokens)
        trg = end - prev_end
        if trg > 0 and end - begin >= 2:
            out.append((begin, end, trg))
        prev_end = end
        if end >= n_tokens:
            break
    return out


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=False)
    logits = out["logits"] if isinstance(out, dict) else out.logits
    return logits.float()


def causal_lm_accuracy(
    baseline: torch.nn.Module,
    candidate: torch.nn.Module,
    token_ids: torch.Tensor,
    *,
    window: int = 512,
    stride: int | None = None,
    device: str | torch.device = "cpu",
    on_step: Callable[[], None] | None = None,
) -> AccuracyStats:
    """Perplexity of both models, KL divergence and top-1 agreement over the same windows.

    Args:
        token_ids: 1-D tensor of the tokenized text.
        window: tokens per forward pass (cut to the model's context length by the caller).
        stride: tokens between window starts (default ``window``: non-overlapping).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> m = tiny_model("llama")
        >>> s = causal_lm_accuracy(m, m, torch.arange(100) % 256, window=32)
        >>> s.top1, s.kl_mean, s.ppl_delta_pct
        (1.0, 0.0, 0.0)
    """
    stride = window if stride is None else stride
    dev = torch.device(device)
    ids = token_ids.reshape(-1).long()
    wins = _windows_or_error(ids, window, stride)

    def pairs() -> Any:
        for begin, end, trg in wins:
            x = ids[begin:end].unsqueeze(0).to(dev)
            # positions t predict token t+1; the scored labels are the last `trg` of the window (never index 0)
            n_pred = min(trg, end - begin - 1)
            tgt = x[0, -n_pred:]
            la = torch.log_softmax(_logits(baseline, x)[0, -n_pred - 1:-1], dim=-1)
            lb = torch.log_softmax(_logits(candidate, x)[0, -n_pred - 1:-1], dim=-1)
            yield la, lb, tgt
            if on_step is not None:
                on_step()

    with torch.inference_mode():
        return accumulate(pairs(), windows=len(wins), window=window, stride=stride)


def _windows_or_error(ids: torch.Tensor, window: int, stride: int) -> list[tuple[int, int, int]]:
    wins = windows(ids.numel(), window, stride)
    if not wins:
        from llmpack.errors import BadInputError

        raise BadInputError(f"the evaluation text has {ids.numel()} tokens: need at least 2; pass a longer text")
    return wins


def accumulate(pairs: Any, *, windows: int, window: int, stride: int) -> AccuracyStats:
    """Perplexities, KL and top-1 from ``(baseline log-probs, candidate log-probs, targets)`` per scored span.

    Spans may be whole windows or chunks of them (the streamed path yields chunks): the statistics are
    sums over positions, so they do not depend on how the positions are cut.

    Example:
        >>> lp = torch.log_softmax(torch.randn(3, 5), -1)
        >>> accumulate([(lp, lp, torch.tensor([0, 1, 2]))], windows=1, window=4, stride=4).kl_mean
        0.0
    """
    nll_a = nll_b = 0.0
    agree = 0
    count = 0
    kls: list[torch.Tensor] = []
    for la, lb, tgt in pairs:
        nll_a -= float(la.gather(-1, tgt[:, None]).sum())
        nll_b -= float(lb.gather(-1, tgt[:, None]).sum())
        kl = (la.exp() * (la - lb)).sum(-1).clamp_min(0.0)
        kls.append(kl.cpu())
        agree += int((la.argmax(-1) == lb.argmax(-1)).sum())
        count += int(tgt.numel())
        del la, lb
    kl_all = torch.cat(kls).double()
    kl_list = kl_all.tolist()
    ppl_a = math.exp(nll_a / count)
    ppl_b = math.exp(nll_b / count)
    delta = 0.0 if nll_a == nll_b else (ppl_b / ppl_a - 1.0) * 100.0
    return AccuracyStats(
        task="causal-lm", tokens=count, windows=windows, window=window, stride=stride,
        ppl_baseline=ppl_a, ppl_candidate=ppl_b, ppl_delta_pct=delta,
        kl_mean=float(kl_all.mean()), kl_p99=percentile(kl_list, 99), kl_max=float(kl_all.max()),
        top1=agree / count,
    )


def split_sentences(text: str, max_sentences: int = 64, min_chars: int = 20) -> list[str]:
    """Sentences of ``text`` (split after ``.``, ``!``, ``?`` or blank lines), each at least ``min_chars``.

    Example:
        >>> split_sentences("Short. This one is long enough to keep! And this one too, surely.")
        ['This one is long enough to keep!', 'And this one too, surely.']
    """
    parts = re.split(r"(?<=[.!?])\s+|\n\s*\n", text)
    out = [" ".join(p.split()) for p in parts]
    return [p for p in out if len(p) >= min_chars][:max_sentences]


def _embed(model: torch.nn.Module, tokenizer: Any, sentences: Sequence[str], max_length: int,
           device: torch.device, batch: int = 16) -> torch.Tensor:
    embs = []
    for i in range(0, len(sentences), batch):
        enc = tokenizer(list(sentences[i:i + batch]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out = model(**enc)
        hidden = (out["last_hidden_state"] if isinstance(out, dict) else out.last_hidden_state).float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        embs.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)).cpu())
    return torch.cat(embs)


def _pair_sim(model: torch.nn.Module, tokenizer: Any, pairs: Sequence[tuple[str, str]], max_length: int,
              device: torch.device) -> float:
    e1 = _embed(model, tokenizer, [p[0] for p in pairs], max_length, device)
    e2 = _embed(model, tokenizer, [p[1] for p in pairs], max_length, device)
    return float(torch.nn.functional.cosine_similarity(e1, e2, dim=-1).mean())


def encoder_accuracy(
    baseline: torch.nn.Module,
    candidate: torch.nn.Module,
    tokenizer: Any,
    text: str,
    *,
    max_sentences: int = 64,
    max_length: int = 128,
    device: str | torch.device = "cpu",
) -> AccuracyStats:
    """Mean-pooled embedding cosine of candidate vs baseline, and paraphrase / unrelated pair similarity.

    Example:
        >>> from llmpack.testing import tiny_model, byte_tokenizer
        >>> m = tiny_model("bert")
        >>> s = encoder_accuracy(m, m, byte_tokenizer(), "One sentence that is long. Another sentence here!")
        >>> round(s.cosine_min, 4)
        1.0
    """
    from llmpack.errors import BadInputError

    dev = torch.device(device)
    sents = split_sentences(text, max_sentences=max_sentences)
    if not sents:
        raise BadInputError("the evaluation text has no sentence of 20+ characters: pass a longer text")
    with torch.inference_mode():
        ea = _embed(baseline, tokenizer, sents, max_length, dev)
        eb = _embed(candidate, tokenizer, sents, max_length, dev)
        cos = torch.nn.functional.cosine_similarity(ea, eb, dim=-1).clamp(-1.0, 1.0)
        stats = AccuracyStats(
            task="encoder", sentences=len(sents), tokens=0,
            cosine_mean=float(cos.mean()), cosine_min=float(cos.min()),
            paraphrase_sim_baseline=_pair_sim(baseline, tokenizer, PARAPHRASE_PAIRS, max_length, dev),
            unrelated_sim_baseline=_pair_sim(baseline, tokenizer, UNRELATED_PAIRS, max_length, dev),
            paraphrase_sim_candidate=_pair_sim(candidate, tokenizer, PARAPHRASE_PAIRS, max_length, dev),
            unrelated_sim_candidate=_pair_sim(candidate, tokenizer, UNRELATED_PAIRS, max_length, dev),
        )
    return stats
