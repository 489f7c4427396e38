"""Streamed passes over calibration windows: float reference, candidates, and their accuracy.

:class:`StreamedEvaluator` captures the windows once, keeps their embeddings, and runs *passes*: one
walk over the blocks in which each block is materialised once and every *stream* (a set of windows
with a per-block context: statistics hooks, a fake-quantization plan, an overflow check) runs through
it in turn. The float reference is kept as its final hidden states only (``tokens × hidden``); a
candidate is scored against it chunk by chunk through the model's own head, so ``tokens × vocab`` is
never held whole.

Example:
    >>> from llmpack.testing import tiny_model
    >>> from llmpack.stream.blocks import BlockStreamer
    >>> ev = StreamedEvaluator(BlockStreamer.resident(tiny_model("llama")), [torch.randint(0, 256, (1, 32))])
    >>> ev.reference() > 1
    True
    >>> ev.candidate(lambda i, blk: None).kl
    0.0
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable, Sequence

import torch

from llmpack.stream.blocks import LOGIT_CHUNK, BlockStreamer, Window

__all__ = ["StreamedEvaluator", "Stream", "Score", "EvalResult", "logit_chunk"]



@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Accuracy of a (simulated) candidate against the float model on the same tokens.

    Attributes:
        ppl: candidate perplexity; ``base_ppl``: float perplexity.
        kl: mean KL(float ‖ candidate) of next-token distributions, nats.
        top1: share of positions where the arg-max token agrees with the float model.

    Example:
        >>> EvalResult(ppl=10.1, base_ppl=10.0, kl=0.01, top1=0.99).ppl_increase > 0.99
        True
    """

    ppl: float
    base_ppl: float
    kl: float
    top1: float

    @property
    def ppl_increase(self) -> float:
        """Relative perplexity increase in percent, measured on the tokens."""
        return 100.0 * (self.ppl / self.base_ppl - 1.0)

    @property
    def kl_ppl_increase(self) -> float:
        """``100 (exp(KL) - 1)``: the perplexity increase in percent on text drawn from the float model itself.

        The measured increase is a mean of per-token log-likelihood differences of either sign, noise-bound on
        the budget's 1,024 calibration tokens (docs/accuracy-budget.md has the figures). KL takes each position's
        expectation over the whole vocabulary instead, so it moves with the plan, not with the sampled tokens;
        the accuracy budget decides on it.

        Example:
            >>> round(EvalResult(ppl=10.0, base_ppl=10.0, kl=0.01, top1=0.99).kl_ppl_increase, 3)
            1.005
        """
        return 100.0 * math.expm1(self.kl)

    def to_dict(self) -> dict[str, float]:
        return {"ppl": round(self.ppl, 4), "base_ppl": round(self.base_ppl, 4),
                "ppl_increase_pct": round(self.ppl_increase, 3), "kl_ppl_increase_pct": round(self.kl_ppl_increase, 3),
                "kl": round(self.kl, 6), "top1": round(self.top1, 4)}


BlockContext = Callable[[int, torch.nn.Module], Any]
"""``(block index, materialised block) -> context manager | None`` held while a stream runs through the block."""


def logit_chunk(vocab: int) -> int:
    """Tokens per logits chunk: at most ~4M floats (16 MB) per chunk, between 16 and :data:`LOGIT_CHUNK`
    (scoring holds a few such tensors per model at once: log-probabilities, their exponent, the KL terms).

    Example:
        >>> logit_chunk(49152), logit_chunk(262144)
        (85, 16)
    """
    return max(16, min(LOGIT_CHUNK, (1 << 22) // max(int(vocab), 1)))


@dataclasses.dataclass
class Stream:
    """Windows walking the blocks with a context per block, and an optional hook after each block."""

    windows: list[Window]
    context: BlockContext | None = None
    after: Callable[[int, torch.nn.Module], None] | None = None


@dataclasses.dataclass
class Score:
    """Accuracy of a candidate against the float reference (see :class:`~llmpack.tune.calibrate.EvalResult`)."""

    nll: float
    base_nll: float
    kl: float
    agree: int
    n: int


class StreamedEvaluator:
    """Calibration windows run block by block; float reference and candidates scored through the model's head.

    Args:
        streamer: a :class:`~llmpack.stream.blocks.BlockStreamer` (streamed or resident).
        batches: token id tensors ``[1, n]``.
    """

    def __init__(self, streamer: BlockStreamer, batches: Sequence[torch.Tensor]) -> None:
        self.st = streamer
        self.batches = [b.reshape(1, -1) for b in batches]
        self.windows = streamer.windows([{"input_ids": b} for b in self.batches])
        self.embeds = [w.hidden for w in self.windows]
        self.ref: list[torch.Tensor] | None = None
        self.base_nll = 0.0
        self.ntokens = sum(b.shape[1] - 1 for b in self.batches)
        vocab = getattr(getattr(streamer.model, "config", None), "vocab_size", None) or 32768
        self.chunk = logit_chunk(int(vocab))

    def fresh(self) -> list[Window]:
        """The windows at the input of block 0 (the captured embeddings; per-block calls shared)."""
        return [Window(w.inputs, e, w.calls) for w, e in zip(self.windows, self.embeds)]

    def run(self, streams: Sequence[Stream]) -> None:
        """One walk over the blocks: each block is materialised once and every stream runs through it, in order."""
        st = self.st
        for i in range(len(st.blocks)):
            with st.block(i) as blk:
                for s in streams:
                    ctx = s.context(i, blk) if s.context is not None else None
                    with ctx if ctx is not None else contextlib.nullcontext():
                        for w in s.windows:
                            w.hidden = st.run(blk, i, w)
                    if s.after is not None:
                        s.after(i, blk)
            del blk  # the block's weights go now, not when the next block has been read

    def set_reference(self, final: Sequence[torch.Tensor]) -> float:
        """Keep the float model's final hidden states; returns its perplexity on the windows."""
        self.ref = list(final)
        nll = 0.0
        for w, h in zip(self.windows, self.ref):
            for a, e, logits in self._chunks(w, h):
                tgt = w.inputs["input_ids"][0, a + 1:e + 1].unsqueeze(-1)
                nll -= float(torch.log_softmax(logits, -1).gather(-1, tgt).sum())
        self.base_nll = nll
        return math.exp(nll / max(self.ntokens, 1))

    def reference(self, context: BlockContext | None = None) -> float:
        """Run the float model (optionally hooked) and keep it as the reference; returns its perplexity."""
        ws = self.fresh()
        self.run([Stream(ws, context)])
        return self.set_reference([w.hidden for w in ws])

    def _chunks(self, w: Window, h: torch.Tensor) -> Any:
        """``(start, end, logits)`` over the positions that predict a token (all but the last)."""
        for a, logits in self.st.tail_logits(w, h, self.chunk, span=(0, h.shape[1] - 1)):
            yield a, a + logits.shape[0], logits

    def score(self, final: Sequence[torch.Tensor]) -> Score:
        """Perplexity terms, KL(float ‖ candidate) and top-1 agreement of candidate final hidden states."""
        if self.ref is None:
            raise RuntimeError("score() before the float reference was set")
        nll, kl, agree, n = 0.0, 0.0, 0, 0
        with torch.no_grad():
            for w, hr, hc in zip(self.windows, self.ref, final):
                for (a, e, lr), (_, _, lc) in zip(self._chunks(w, hr), self._chunks(w, hc)):
                    ref, logp = torch.log_softmax(lr, -1), torch.log_softmax(lc, -1)
                    tgt = w.inputs["input_ids"][0, a + 1:e + 1].unsqueeze(-1)
                    nll -= float(logp.gather(-1, tgt).sum())
                    kl += float((ref.exp() * (ref - logp)).sum())
                    agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
                    n += e - a
        return Score(nll=nll, base_nll=self.base_nll, kl=kl, agree=agree, n=n)

    def candidate(self, context: BlockContext) -> Any:
        """Run a candidate (``context`` applies its fake quantization per block) and score it."""
        ws = self.fresh()
        self.run([Stream(ws, context)])
        return self.result(self.score([w.hidden for w in ws]))

    def result(self, s: Score) -> EvalResult:
        """An :class:`EvalResult` from a :class:`Score`."""
        n = max(s.n, 1)
        return EvalResult(ppl=math.exp(s.nll / n), base_ppl=math.exp(s.base_nll / n), kl=s.kl / n, top1=s.agree / n)
