"""The batching scheduler: greedy tokens equal ``llmpack.load`` + ``generate`` one prompt at a time, whatever
the batch (padding, rows joining mid-batch, rows leaving), on float and int8 models; capacity; cancellation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import llmpack
from llmpack.serve.batching import GenRequest, QueueFullError, SamplingParams, Scheduler


def _prompts(vocab: int, n: int = 7, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 24, (n,), generator=g).tolist()
    return [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lengths]


def _reference(model: torch.nn.Module, prompts: list[list[int]], max_new: list[int]) -> list[list[int]]:
    """``generate`` on each prompt alone, greedy, stopping at the model's eos as the scheduler does."""
    out = []
    for p, n in zip(prompts, max_new):
        ids = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             do_sample=False, max_new_tokens=n, pad_token_id=0)
        out.append(ids[0, len(p):].tolist())
    return out


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_greedy_tokens_equal_generate_batched_or_not(kind: str, chat_dir: Path, int8_dir: Path, one_thread: None) -> None:
    d = chat_dir if kind == "float" else int8_dir
    ref_model = llmpack.load(d)
    prompts = _prompts(ref_model.config.vocab_size)
    max_new = [12, 5, 12, 9, 1, 12, 7]  # rows leave at different steps, so waiting rows join a running batch
    want = _reference(ref_model, prompts, max_new)
    assert len({tuple(w) for w in want}) > 1
    params = [SamplingParams(max_tokens=n) for n in max_new]
    for bs, continuous in ((1, True), (3, True), (8, True), (3, False)):
        got = Scheduler(llmpack.load(d), max_batch_size=bs, continuous=continuous).generate(prompts, params)
        assert got == want, (bs, continuous)


def test_padding_never_changes_a_row_int8(int8_dir: Path, one_thread: None) -> None:
    """The same prompt next to batch-mates of every length gives the same tokens as alone."""
    model = llmpack.load(int8_dir)
    s = Scheduler(model, max_batch_size=8)
    target = _prompts(256, 1, seed=5)[0]
    alone = s.generate([target], SamplingParams(max_tokens=16, ignore_eos=True))[0]
    mates = _prompts(256, 7, seed=6)
    for k in range(1, 8):
        got = s.generate([*mates[:k], target], SamplingParams(max_tokens=16, ignore_eos=True))
        assert got[-1] == alone, k
    assert s.row_exact


def test_gpt2_learned_positions_batched(tiny_dirs: dict[str, Path], one_thread: None) -> None:
    model = llmpack.load(tiny_dirs["gpt2"])
    prompts = _prompts(256, 5, seed=3)
    want = _reference(model, prompts, [8] * 5)
    got = Scheduler(llmpack.load(tiny_dirs["gpt2"]), max_batch_size=4, eos=set()).generate(
        prompts, SamplingParams(max_tokens=8))
    assert got == want


def test_sampling_is_seeded_and_respects_top_p(chat_dir: Path, one_thread: None) -> None:
    s = Scheduler(llmpack.load(chat_dir), max_batch_size=4)
    p = _prompts(256, 1)[0]
    a = s.generate([p, p], SamplingParams(max_tokens=10, temperature=1.0, seed=7, ignore_eos=True))
    b = s.generate([p], SamplingParams(max_tokens=10, temperature=1.0, seed=7, ignore_eos=True))
    assert a[0] == a[1] == b[0]
    greedy = s.generate([p], SamplingParams(max_tokens=10, ignore_eos=True))[0]
    tiny_p = s.generate([p], SamplingParams(max_tokens=10, temperature=1.0, top_p=1e-6, seed=3, ignore_eos=True))[0]
    assert tiny_p == greedy  # top_p -> 0 keeps the most likely token only


def test_context_end_and_eos_stop_rows(short_dir: Path, one_thread: None) -> None:
    model = llmpack.load(short_dir)
    s = Scheduler(model, max_batch_size=2)
    events: list[tuple[str, object]] = []
    r = GenRequest([5] * 60, SamplingParams(max_tokens=50, ignore_eos=True), lambda k, v: events.append((k, v)))
    s._waiting.put(r)
    with torch.inference_mode():
        batch = None
        while batch is not None or not s._waiting.empty():
            batch = s._step(batch)
    assert len(r.generated) == 4 and events[-1] == ("done", "length")  # positions 60..63 of a 64-token context
    first = s.generate([[7, 8, 9]], SamplingParams(max_tokens=1, ignore_eos=True))[0][0]
    stopped = Scheduler(model, eos={first}).generate([[7, 8, 9]], SamplingParams(max_tokens=10))[0]
    assert stopped == [first]


def test_queue_capacity_and_cancel(chat_dir: Path, one_thread: None) -> None:
    s = Scheduler(llmpack.load(chat_dir), max_batch_size=1, max_queue=1)
    events: list[tuple[str, object]] = []
    reqs = [GenRequest([1, 2, 3], SamplingParams(max_tokens=1000, ignore_eos=True), lambda k, v: events.append((k, v)))
            for _ in range(3)]
    s.submit(reqs[0])
    s.submit(reqs[1])
    with pytest.raises(QueueFullError, match="max-queue 1"):
        s.submit(reqs[2])
    with torch.inference_mode():
        batch = s._step(None)  # reqs[0] runs, reqs[1] waits for its slot
        for _ in range(3):
            batch = s._step(batch)
        with pytest.raises(QueueFullError):
            s.submit(reqs[2])
        reqs[0].cancel()
        batch = s._step(batch)  # reqs[0] leaves at the step boundary
        assert batch is None and ("done", "cancelled") in events and len(reqs[0].generated) == 4
        batch = s._step(batch)
    assert batch is not None and batch.rows == [reqs[1]]
    assert QueueFullError.exit_code == 2


def test_refuses_an_encoder(tiny_dirs: dict[str, Path]) -> None:
    from llmpack.errors import BadInputError

    with pytest.raises(BadInputError, match="causal LM"):
        Scheduler(llmpack.load(tiny_dirs["bert"]))
