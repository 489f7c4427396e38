"""``llmpack.measure``'s accuracy, streamed: baseline and candidate each walk their blocks once.

Every evaluation window is captured, run through the blocks one block at a time (so neither model is ever
resident), and kept as final hidden states; the scored positions then go through each model's own head in
chunks (:func:`~llmpack.stream.evaluate.logit_chunk`), so ``vocab × tokens`` is never held whole. The
figures are those of :func:`llmpack.measure.accuracy.causal_lm_accuracy` up to float rounding.

Example:
    >>> from llmpack.testing import tiny_model
    >>> from llmpack.stream.blocks import BlockStreamer
    >>> m = tiny_model("llama"); st = BlockStreamer.resident(m)
    >>> streamed_causal_lm_accuracy(st, st, torch.arange(100) % 256, window=32).top1
    1.0
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from llmpack.measure.accuracy import AccuracyStats, _windows_or_error, accumulate
from llmpack.stream.blocks import BlockStreamer, Window
from llmpack.stream.evaluate import logit_chunk

__all__ = ["streamed_causal_lm_accuracy"]


def _final(st: BlockStreamer, spans: list[torch.Tensor], on_block: Callable[[], None] | None) -> list[Window]:
    ws = st.windows([{"input_ids": x} for x in spans])
    for i in range(len(st.blocks)):
        with st.block(i) as blk:
            for w in ws:
                w.hidden = st.run(blk, i, w)
        del blk
        if on_block is not None:
            on_block()
    return ws


def streamed_causal_lm_accuracy(baseline: BlockStreamer, candidate: BlockStreamer, token_ids: torch.Tensor, *,
                                window: int = 512, stride: int | None = None,
                                on_step: Callable[[], None] | None = None) -> AccuracyStats:
    """Perplexity of both models, KL divergence and top-1 agreement, block by block (see the module docstring).

    Args:
        baseline, candidate: streamers over the two models (streamed or resident).
        token_ids: 1-D tensor of the tokenized text.
        window, stride: perplexity windows, as :func:`~llmpack.measure.accuracy.causal_lm_accuracy`.
        on_step: called once per block walked (both models).
    """
    stride = window if stride is None else stride
    ids = token_ids.reshape(-1).long()
    wins = _windows_or_error(ids, window, stride)
    spans = [ids[b:e].unsqueeze(0) for b, e, _ in wins]
    fa = _final(baseline, spans, on_step)
    fb = _final(candidate, spans, on_step)
    vocab = int(getattr(getattr(baseline.model, "config", None), "vocab_size", 0) or 32768)
    chunk = logit_chunk(vocab)

    def pairs() -> Any:
        with torch.inference_mode():
            for k, ((begin, end, trg), wa, wb) in enumerate(zip(wins, fa, fb)):
                n = end - begin
                n_pred = min(trg, n - 1)
                lo, hi = n - n_pred - 1, n - 1  # positions predicting the scored labels
                x = spans[k][0]
                for (a, ra), (_, rb) in zip(baseline.tail_logits(wa, None, chunk, (lo, hi)),
                                            candidate.tail_logits(wb, None, chunk, (lo, hi))):
                    la, lb = torch.log_softmax(ra, dim=-1), torch.log_softmax(rb, dim=-1)
                    del ra, rb
                    yield la, lb, x[a + 1:a + 1 + la.shape[0]].to(la.device)
                wa.hidden = wb.hidden = None

    return accumulate(pairs(), windows=len(wins), window=window, stride=stride)
