"""Latency: interleaved timing, phases, percentiles."""

from __future__ import annotations

import pytest
import torch

from llmpack.measure.latency import LatencyEntry, Timing, environment, percentile, time_models
from llmpack.testing import tiny_model


def test_percentile() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0


def test_timing_and_speedup() -> None:
    e = LatencyEntry("prefill", 1, 128, 0, Timing.from_samples([10.0, 30.0], 128), Timing.from_samples([5.0], 128))
    assert e.speedup == pytest.approx(4.0)
    assert e.baseline.tokens_per_s == pytest.approx(128 / 0.02)
    assert LatencyEntry.from_dict(e.to_dict()) == e


class _Recorder(torch.nn.Module):
    """Wraps a model and logs its name on each forward call (to check A B A B interleaving)."""

    def __init__(self, inner: torch.nn.Module, name: str, log: list[str]) -> None:
        super().__init__()
        self.inner, self.name, self.log = inner, name, log

    def forward(self, input_ids=None, attention_mask=None, **kw):  # noqa: ANN001, ANN003
        self.log.append(self.name)
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_encoder_runs_interleaved() -> None:
    log: list[str] = []
    m = tiny_model("bert")
    a, b = _Recorder(m, "A", log), _Recorder(m, "B", log)
    entries, peaks = time_models(a, b, torch.arange(100) % 256, task="encoder", batch_sizes=(2,), seq_len=8,
                                 warmup=1, runs=3)
    assert log == ["A", "B"] * 4  # 1 warm-up pair + 3 timed pairs, alternating
    (e,) = entries
    assert (e.phase, e.batch_size, e.seq_len) == ("forward", 2, 8)
    assert len(e.baseline.samples_ms) == len(e.candidate.samples_ms) == 3
    assert e.baseline.p50_ms > 0 and e.baseline.p95_ms >= e.baseline.p50_ms
    assert set(peaks) == {"baseline", "candidate"}


def test_causal_prefill_and_decode(device: str) -> None:
    a = tiny_model("llama").to(device)
    b = tiny_model("llama", seed=1).to(device)
    entries, _ = time_models(a, b, torch.arange(300) % 256, task="causal-lm", batch_sizes=(1, 3), seq_len=12,
                             new_tokens=3, warmup=1, runs=2, device=device)
    assert [(e.phase, e.batch_size) for e in entries] == [("prefill", 1), ("decode", 1), ("prefill", 3), ("decode", 3)]
    dec = entries[1]
    assert dec.new_tokens == 3
    assert dec.baseline.tokens_per_s == pytest.approx(1000.0 / dec.baseline.p50_ms)


def test_auto_runs_respect_bounds() -> None:
    m = tiny_model("gpt2")
    entries, _ = time_models(m, m, torch.arange(64), task="causal-lm", batch_sizes=(1,), seq_len=4, new_tokens=1,
                             runs=None, budget_s=0.0, min_runs=2, max_runs=5)
    assert len(entries[0].baseline.samples_ms) == 2


def test_environment_fields(device: str) -> None:
    env = environment(device)
    for key in ("device", "device_name", "threads", "torch", "transformers", "cpu_model"):
        assert env[key] not in (None, "")
