"""Latency: baseline and candidate timed interleaved (A B A B …) so machine drift cancels in the ratio.

For causal LMs one *run* is a prefill pass over ``batch × seq_len`` prompt tokens (timed; only the last
position's logits are computed, via ``logits_to_keep=1`` where the model supports it, as in ``generate()``) followed by
``new_tokens`` greedy decode steps that feed the KV cache back in (timed as a whole, reported per step
and as tokens/s). Decode is driven by hand — ``model(next_token, cache=..., use_cache=True)`` — rather
than ``generate()``, so only the forward passes are timed. Encoders time one forward pass.

On CUDA each timed region starts after ``torch.cuda.synchronize()`` and is measured with CUDA events;
on CPU with ``time.perf_counter``.

Example:
    >>> from llmpack.testing import tiny_model
    >>> a = tiny_model("llama"); b = tiny_model("llama")
    >>> ids = torch.randint(0, 256, (64,))
    >>> entries, _ = time_models(a, b, ids, task="causal-lm", batch_sizes=(1,), seq_len=8, new_tokens=2,
    ...                          warmup=1, runs=2)
    >>> [e.phase for e in entries]
    ['prefill', 'decode']
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import platform
import time
from typing import Any, Callable, Sequence

import torch

from llmpack.measure.size import PeakMemory

__all__ = ["Timing", "LatencyEntry", "time_models", "environment", "percentile", "cache_kwarg"]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0..100) of a non-empty sequence.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
    """
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


@dataclasses.dataclass
class Timing:
    """Timed samples of one model for one phase and batch size.

    Attributes:
        samples_ms: one value per timed run (for decode: milliseconds per decode step).
        p50_ms / p95_ms / mean_ms: statistics of ``samples_ms``.
        tokens_per_s: tokens processed (prefill, forward) or generated (decode) per second at the p50.

    Example:
        >>> Timing.from_samples([10.0, 12.0], tokens=128).p50_ms
        11.0
    """

    samples_ms: list[float]
    p50_ms: float
    p95_ms: float
    mean_ms: float
    tokens_per_s: float

    @classmethod
    def from_samples(cls, samples_ms: list[float], tokens: int) -> "Timing":
        """Statistics from raw samples; ``tokens`` is the work done per sample."""
        p50 = percentile(samples_ms, 50)
        return cls(
            samples_ms=[round(s, 4) for s in samples_ms],
            p50_ms=p50,
            p95_ms=percentile(samples_ms, 95),
            mean_ms=sum(samples_ms) / len(samples_ms),
            tokens_per_s=(tokens / (p50 / 1000.0)) if p50 > 0 else float("inf"),
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Timing":
        """Inverse of :meth:`to_dict`."""
        return cls(samples_ms=list(d["samples_ms"]), p50_ms=d["p50_ms"], p95_ms=d["p95_ms"],
                   mean_ms=d["mean_ms"], tokens_per_s=d["tokens_per_s"])


@dataclasses.dataclass
class LatencyEntry:
    """Baseline vs candidate timing for one phase (``prefill``, ``decode`` or ``forward``) and batch size.

    ``speedup`` is baseline p50 / candidate p50 (> 1: the candidate is faster).

    Example:
        >>> t = Timing.from_samples([2.0], 1)
        >>> LatencyEntry("forward", 1, 8, 0, t, Timing.from_samples([1.0], 1)).speedup
        2.0
    """

    phase: str
    batch_size: int
    seq_len: int
    new_tokens: int
    baseline: Timing
    candidate: Timing
    speedup: float = dataclasses.field(default=float("nan"))

    def __post_init__(self) -> None:
        if math.isnan(self.speedup) and self.candidate.p50_ms > 0:
            self.speedup = self.baseline.p50_ms / self.candidate.p50_ms

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return {"phase": self.phase, "batch_size": self.batch_size, "seq_len": self.seq_len,
                "new_tokens": self.new_tokens, "baseline": self.baseline.to_dict(),
                "candidate": self.candidate.to_dict(), "speedup": self.speedup}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyEntry":
        """Inverse of :meth:`to_dict`."""
        return cls(phase=d["phase"], batch_size=d["batch_size"], seq_len=d["seq_len"], new_tokens=d["new_tokens"],
                   baseline=Timing.from_dict(d["baseline"]), candidate=Timing.from_dict(d["candidate"]),
                   speedup=d["speedup"])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str | torch.device) -> dict[str, Any]:
    """Where the figures were measured: device, its name, threads, CPU model, library versions.

    Example:
        >>> environment("cpu")["device"]
        'cpu'
    """
    import transformers

    from llmpack._version import __version__

    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_model()
    return {
        "device": str(dev),
        "device_name": name,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda if dev.type == "cuda" else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "llmpack": __version__,
        "load_avg_1m": _load_avg(),
    }


def _load_avg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def cache_kwarg(model: torch.nn.Module) -> str:
    """Name of the KV-cache keyword of ``model.forward``: ``cache`` (transformers >= 5) or ``past_key_values``.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> cache_kwarg(tiny_model("llama")) in ("cache", "past_key_values")
        True
    """
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _logits_keep_kwarg(model: torch.nn.Module) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` where the model supports it: the prefill then computes only the last
    position's logits, as ``generate()`` does, instead of a ``batch × seq × vocab`` tensor nobody uses."""
    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def _out_cache(out: Any) -> Any:
    for key in ("cache", "past_key_values"):
        try:
            val = out[key] if isinstance(out, dict) else getattr(out, key)
        except (KeyError, AttributeError):
            continue
        if val is not None:
            return val
    return None


class _Clock:
    """Times a callable on CPU (perf_counter) or CUDA (events after synchronize)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def __call__(self, fn: Callable[[], Any]) -> tuple[Any, float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(self.device)
            return out, float(start.elapsed_time(end))
        t0 = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - t0) * 1000.0


def _batch_inputs(ids: torch.Tensor, batch: int, seq_len: int) -> torch.Tensor:
    """``batch`` rows of ``seq_len`` real tokens, each row from a different offset of ``ids`` (wrapping)."""
    n = ids.numel()
    need = seq_len * batch
    if n < need:
        ids = ids.repeat(need // max(n, 1) + 1)
        n = ids.numel()
    step = max(1, (n - seq_len) // max(batch, 1))
    rows = [ids[i * step:i * step + seq_len] for i in range(batch)]
    return torch.stack(rows).long()


def _one_run(model: torch.nn.Module, task: str, x: torch.Tensor, new_tokens: int, clock: _Clock,
             cache_kw: str) -> tuple[float, float | None]:
    """One timed run: (prefill or forward ms, decode ms per step or None)."""
    if task != "causal-lm":
        mask = torch.ones_like(x)
        _, ms = clock(lambda: model(input_ids=x, attention_mask=mask))
        return ms, None
    keep = _logits_keep_kwarg(model)
    out, prefill_ms = clock(lambda: model(input_ids=x, use_cache=True, **keep))
    if new_tokens <= 0:
        return prefill_ms, None
    cache = _out_cache(out)
    nxt = out.logits[:, -1:].argmax(-1)
    del out

    def decode() -> None:
        nonlocal cache, nxt
        for _ in range(new_tokens):
            o = model(input_ids=nxt, use_cache=True, **{cache_kw: cache})
            cache = _out_cache(o)
            nxt = o.logits[:, -1:].argmax(-1)

    _, decode_ms = clock(decode)
    return prefill_ms, decode_ms / new_tokens


def time_models(
    baseline: torch.nn.Module,
    candidate: torch.nn.Module,
    token_ids: torch.Tensor,
    *,
    task: str,
    batch_sizes: Sequence[int] = (1, 8),
    seq_len: int = 128,
    new_tokens: int = 32,
    warmup: int = 1,
    runs: int | None = None,
    budget_s: float = 20.0,
    min_runs: int = 3,
    max_runs: int = 30,
    device: str | torch.device = "cpu",
    on_step: Callable[[], None] | None = None,
) -> tuple[list[LatencyEntry], dict[str, int]]:
    """Time baseline and candidate interleaved at each batch size.

    Args:
        baseline, candidate: models on ``device`` in eval mode.
        token_ids: 1-D tensor of real tokens (inputs are cut from it; rows differ).
        task: ``"causal-lm"`` (prefill + decode) or ``"encoder"`` (forward).
        warmup: untimed run pairs per batch size before timing (at least 1: the first pair also
            measures run memory and sizes the budget).
        runs: timed run pairs per batch size; ``None`` chooses ``budget_s / time_of_a_warmup_pair``
            clamped to ``[min_runs, max_runs]``.
        on_step: called after each run pair (progress bars).

    Returns:
        ``(entries, peaks)``: one :class:`LatencyEntry` per phase and batch size, and the peak of
        additional memory (bytes) while running, ``{"baseline": …, "candidate": …}``.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> m = tiny_model("bert")
        >>> e, _ = time_models(m, m, torch.arange(50), task="encoder", batch_sizes=(2,), seq_len=8, runs=2)
        >>> e[0].phase, len(e[0].baseline.samples_ms)
        ('forward', 2)
    """
    dev = torch.device(device)
    clock = _Clock(dev)
    kw_a = cache_kwarg(baseline) if task == "causal-lm" else ""
    kw_b = cache_kwarg(candidate) if task == "causal-lm" else ""
    token_ids = token_ids.reshape(-1).to(dev)
    entries: list[LatencyEntry] = []
    peaks = {"baseline": 0, "candidate": 0}
    for bs in batch_sizes:
        x = _batch_inputs(token_ids, bs, seq_len).to(dev)
        pair_s = 0.0
        with torch.inference_mode():
            # At least one untimed pair: it warms up, measures run memory and sizes the run budget.
            for _ in range(max(warmup, 1)):
                t0 = time.perf_counter()
                with PeakMemory(dev) as pa:
                    _one_run(baseline, task, x, new_tokens, clock, kw_a)
                with PeakMemory(dev) as pb:
                    _one_run(candidate, task, x, new_tokens, clock, kw_b)
                peaks["baseline"] = max(peaks["baseline"], pa.peak_bytes)
                peaks["candidate"] = max(peaks["candidate"], pb.peak_bytes)
                pair_s = time.perf_counter() - t0
            n_runs = runs
            if n_runs is None:
                n_runs = int(max(min_runs, min(max_runs, budget_s // max(pair_s, 1e-6))))
            samples: dict[str, list[list[float]]] = {"a0": [], "a1": [], "b0": [], "b1": []}
            for _ in range(max(n_runs, 1)):
                a0, a1 = _one_run(baseline, task, x, new_tokens, clock, kw_a)
                b0, b1 = _one_run(candidate, task, x, new_tokens, clock, kw_b)
                samples["a0"].append([a0])
                samples["b0"].append([b0])
                if a1 is not None and b1 is not None:
                    samples["a1"].append([a1])
                    samples["b1"].append([b1])
                if on_step is not None:
                    on_step()
        first = "prefill" if task == "causal-lm" else "forward"
        tok = bs * seq_len
        entries.append(LatencyEntry(
            first, bs, seq_len, 0,
            Timing.from_samples([s[0] for s in samples["a0"]], tok),
            Timing.from_samples([s[0] for s in samples["b0"]], tok),
        ))
        if samples["a1"]:
            entries.append(LatencyEntry(
                "decode", bs, seq_len, new_tokens,
                Timing.from_samples([s[0] for s in samples["a1"]], bs),
                Timing.from_samples([s[0] for s in samples["b1"]], bs),
            ))
    return entries, peaks
