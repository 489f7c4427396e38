"""``llmpack.measure(baseline, candidate)``: size, latency and accuracy of a candidate against its baseline.

Example:
    >>> import llmpack
    >>> report = llmpack.measure("models/smollm2", "models/smollm2-bf16", quick=True)  # doctest: +SKIP
    >>> print(report.summary())                                                        # doctest: +SKIP
    bf16: 0.50× size, 2.3× faster (b1), +0.1% ppl
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from llmpack.errors import BadInputError, ConfigError
from llmpack.measure.accuracy import AccuracyStats, causal_lm_accuracy, encoder_accuracy
from llmpack.measure.latency import _load_avg, environment, time_models
from llmpack.measure.report import ModelInfo, Report, evaluate_gates
from llmpack.measure.runtimes import describe_fp8_runtime, describe_runtime
from llmpack.measure.settings import (
    DEFAULT_WINDOW,
    DEFAULTS,
    FP16_CPU_CAP,
    QUICK,
    RUNTIMES,
    MeasureSettings,
    gates_from_args,
    parse_batch_sizes,
)
from llmpack.measure.sides import (
    _header_bytes,
    _resident_bytes,
    _resolve_tokenizer,
    _Side,
    _side_dtype,
    _cpu_has_bf16,
    _dominant_dtype,
    _max_positions,
    _module_device,
    _side_fp16,
    detect_task,
    load_model,
)
from llmpack.measure.size import PeakMemory, SizeStats, disk_usage, memory_method, param_bytes, touch_weights
from llmpack.measure.text import looks_like_file, resolve_text

__all__ = ["measure", "measure_after_quantize", "detect_task", "load_model", "DEFAULTS", "QUICK", "MeasureSettings",
           "RUNTIMES", "describe_runtime", "describe_fp8_runtime", "gates_from_args", "parse_batch_sizes"]

def measure(
    baseline: Any,
    candidate: Any,
    *,
    text: "str | os.PathLike[str] | Iterable[str] | None" = None,
    device: str | torch.device | None = None,
    batch_sizes: Sequence[int] | None = None,
    seq_len: int = 128,
    new_tokens: int | None = None,
    warmup: int | None = None,
    runs: int | None = None,
    quick: bool = False,
    gates: Mapping[str, float] | None = None,
    tokenizer: Any = None,
    quiet: bool = False,
    window: int | None = None,
    stride: int | None = None,
    latency: bool = True,
    runtime: str = "default",
    settings: MeasureSettings | None = None,
) -> Report:
    """Measure a candidate model against its baseline: size, latency and accuracy, and check gates.

    Args:
        baseline, candidate: model directories (loaded with :func:`llmpack.load`), ``.gguf`` files, or
            in-memory ``nn.Module`` s (moved to ``device`` in place). Both must share one tokenizer.
        text: evaluation text: ``None`` (a fixed slice of ``pydoc_data.topics``), a file path, a string or
            an iterable of strings.
        device: ``"cpu"`` or ``"cuda"`` (default: CUDA when available).
        batch_sizes: batch sizes timed (default ``(1, 8)``; ``(1,)`` with ``quick``).
        seq_len: prompt tokens per row when timing (cut to the model's context length).
        new_tokens: decode steps timed after the prefill (causal LMs; default 32, 8 with ``quick``).
        warmup: untimed run pairs per batch size (default 1).
        runs: timed run pairs per batch size (default: as many as fit a time budget of 20 s per batch
            size, 3 s with ``quick``, at least 3 / 2).
        quick: a short measurement (well under a minute for SmolLM2 on 2 cores).
        gates: e.g. ``{"max_ppl_increase_pct": 2, "min_top1": 0.9, "min_speedup": 1.0,
            "max_size_ratio": 0.6, "max_kl": 0.05, "min_cosine": 0.99}``.
        tokenizer: a tokenizer (or a directory with one) used for both models; skips the same-tokenizer check.
        quiet: no progress bars.
        window, stride: perplexity windows (default ``min(512, context length)``, stride = window).
        latency: time the models (needs both resident). ``False``, or two directories that do not fit in
            memory together, measure size and accuracy only: causal-LM directories are then never loaded
            whole (accuracy runs block by block, :mod:`llmpack.stream`), and the report says why.
        runtime: int8 models' kernels: ``"default"`` (what ``llmpack.load`` runs here) or ``"reference"``
            (compressed-tensors' arithmetic, op for op: what transformers + compressed-tensors compute). The
            report's ``settings["int8_runtime"]`` and a note name the kernel that produced every figure.
        settings: all of the above as one :class:`~llmpack.measure.settings.MeasureSettings` (then leave the
            keywords at their defaults).

    Returns:
        A :class:`~llmpack.measure.report.Report`; ``report.passed`` / ``report.failed_gates`` tell the gates.

    Raises:
        ConfigError: an unknown gate or an invalid setting, or ``settings`` with a keyword. BadInputError: models that cannot be compared
        (different tokenizers or tasks), missing files, no tokenizer.

    Example:
        >>> from llmpack.testing import tiny_model, byte_tokenizer
        >>> m = tiny_model("llama")
        >>> r = measure(m, m, tokenizer=byte_tokenizer(), quick=True, quiet=True, seq_len=16, text="hello " * 50)
        >>> r.accuracy.top1
        1.0
        >>> s = MeasureSettings(tokenizer=byte_tokenizer(), quick=True, quiet=True, seq_len=16, text="hello " * 50)
        >>> measure(m, m, settings=s).accuracy.top1
        1.0
    """
    s = MeasureSettings.from_keywords(
        settings, text=text, device=device, batch_sizes=batch_sizes, seq_len=seq_len, new_tokens=new_tokens,
        warmup=warmup, runs=runs, quick=quick, gates=dict(gates or {}), tokenizer=tokenizer, quiet=quiet,
        window=window, stride=stride, latency=latency, runtime=runtime)
    from llmpack.runtime import kernels

    with kernels.use("dequant") if s.runtime == "reference" else contextlib.nullcontext():
        report = _measure(baseline, candidate, s)
        if any((side.method or "").startswith("int8") or side.dtype == "int8"
               for side in (report.baseline, report.candidate)):
            report.settings["int8_runtime"] = describe_runtime(report.environment.get("device", "cpu"))
            report.notes.append(f"int8 layers ran {report.settings['int8_runtime']}")
        if any((side.method or "").startswith("fp8") for side in (report.baseline, report.candidate)):
            report.settings["fp8_runtime"] = describe_fp8_runtime(report.environment.get("device", "cpu"))
            report.notes.append(f"fp8 layers ran {report.settings['fp8_runtime']}")
    return report


def _measure(baseline: Any, candidate: Any, s: MeasureSettings) -> Report:
    from llmpack._output import progress

    t_start = time.perf_counter()
    load0 = _load_avg()
    text, device, quick, tokenizer, quiet, window, stride, latency, runs = (
        s.text, s.device, s.quick, s.tokenizer, s.quiet, s.window, s.stride, s.latency, s.runs)
    gates_v, seq_len = dict(s.gates), s.seq_len
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("device='cuda' was asked for but CUDA is not available: use device='cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise BadInputError(f"unsupported device {device!r}: use 'cpu' or 'cuda'")
    prof = dict(QUICK if quick else DEFAULTS)
    bs_list = s.batch_sizes if s.batch_sizes is not None else tuple(prof["batch_sizes"])
    n_new = s.new_tokens if s.new_tokens is not None else int(prof["new_tokens"])
    n_warm = s.warmup if s.warmup is not None else int(prof["warmup"])
    notes: list[str] = []

    a, b = _Side(baseline, "baseline"), _Side(candidate, "candidate")
    task_a, task_b = a.task(), b.task()
    if task_a != task_b:
        raise BadInputError(f"baseline is a {task_a} model but candidate is a {task_b} model: compare like with like")
    task = task_a
    tok = _resolve_tokenizer(a, b, tokenizer, notes)
    text_s = resolve_text(text)

    # ---- load (peak memory while loading) ----
    sizes: dict[str, SizeStats] = {}
    models: dict[str, torch.nn.Module] = {}
    streamed = task == "causal-lm" and a.kind == "dir" and b.kind == "dir"
    need, avail = _resident_bytes(a, b, dev)
    resident = (need <= avail and latency) or not streamed
    if not resident and latency:
        notes.append(f"latency not measured: needs {need / 1e9:.1f} GB, {avail / 1e9:.1f} GB available "
                     "(accuracy was measured block by block)")

    def load_all() -> None:
        for side in (a, b):
            st = SizeStats()
            if not resident:
                if side.path is None:  # (streamed implies two model directories)
                    raise BadInputError(f"the {side.role} model must be a model directory to be measured block by block")
                st.files = disk_usage(side.path)
                st.disk_bytes = sum(st.files.values())
                st.weight_file_bytes = sum(v for k, v in st.files.items() if k.endswith(".safetensors"))
                st.param_bytes_by_dtype, st.param_bytes, st.buffer_bytes, st.num_params = _header_bytes(side.path)
                sizes[side.role] = st
                continue
            if side.module is not None:
                m = side.module.eval()
                if _module_device(m) not in (None, dev):
                    m.to(dev)
            else:
                with PeakMemory(dev) as pm:
                    m = load_model(side.path, task, dev)  # type: ignore[arg-type]
                    touch_weights(m)  # lazily mmapped weights count as loaded
                st.load_peak_bytes = pm.peak_bytes
                st.memory_method = pm.method
                if side.kind == "dir":
                    st.files = disk_usage(side.path)  # type: ignore[arg-type]
                    st.disk_bytes = sum(st.files.values())
                    st.weight_file_bytes = sum(v for k, v in st.files.items() if k.endswith(".safetensors"))
                else:
                    st.disk_bytes = st.weight_file_bytes = side.path.stat().st_size  # type: ignore[union-attr]
                    st.files = {side.path.name: st.disk_bytes}  # type: ignore[union-attr]
            st.param_bytes_by_dtype, st.param_bytes, st.buffer_bytes, st.num_params = param_bytes(m)
            models[side.role] = m
            sizes[side.role] = st

    # ---- caps ----
    max_tokens = prof["max_tokens"]
    max_pos = _max_positions(a.config) or _max_positions(b.config)
    if dev.type == "cpu" and (_side_fp16(a) or _side_fp16(b)):
        cap = FP16_CPU_CAP
        bs_list = tuple(cap["batch_sizes"])
        seq_len = min(seq_len, cap["seq_len"])
        n_new = min(n_new, cap["new_tokens"])
        n_warm, runs = cap["warmup"], cap["runs"]
        max_tokens = min(max_tokens or cap["max_tokens"], cap["max_tokens"])
        notes.append(f"FP16 on CPU has no fast kernels (40-60× slower than FP32), so this run was capped: "
                     f"{runs} timed run at batch 1 × {seq_len} tokens + {n_new} decode steps, accuracy on the first "
                     f"{max_tokens} tokens. Measure FP16 on CUDA, or compare BF16 on CPU.")
    if task == "causal-lm" and max_pos is not None and seq_len + n_new > max_pos:
        new_seq = max(2, max_pos - n_new)
        notes.append(f"seq_len {seq_len} + {n_new} new tokens exceeds the context length {max_pos}: "
                     f"seq_len cut to {new_seq}")
        seq_len = new_seq
    win = window or min(DEFAULT_WINDOW, max_pos or DEFAULT_WINDOW)
    if max_pos is not None and win > max_pos:
        raise ConfigError(f"window {win} exceeds the model's context length {max_pos}: pass window <= {max_pos}")

    if not streamed:
        load_all()
    ma, mb = models.get("baseline"), models.get("candidate")

    # ---- accuracy ----
    token_ids: torch.Tensor
    if task == "causal-lm":
        ids = tok(text_s, return_attention_mask=False, verbose=False)["input_ids"]
        token_ids = torch.tensor(ids, dtype=torch.long).reshape(-1)
        if max_tokens is not None and token_ids.numel() > max_tokens:
            token_ids = token_ids[:max_tokens]
        n_wins = max(1, math.ceil(max(token_ids.numel() - 1, 1) / (stride or win)))
        if streamed:
            from llmpack.stream import open_streamer
            from llmpack.measure.streamed import streamed_causal_lm_accuracy

            sa = open_streamer(a.path, device=dev, dtype=_side_dtype(a))  # type: ignore[arg-type]
            sb = open_streamer(b.path, device=dev, dtype=_side_dtype(b))  # type: ignore[arg-type]
            with progress(len(sa.blocks) + len(sb.blocks), "accuracy", unit="block", quiet=quiet) as bar:
                acc: AccuracyStats = streamed_causal_lm_accuracy(sa, sb, token_ids, window=win, stride=stride,
                                                                 on_step=lambda: bar.update(1))
            del sa, sb
            from llmpack.stream.memory import free_memory

            free_memory()
        else:
            with progress(n_wins, "accuracy", unit="window", quiet=quiet) as bar:
                acc = causal_lm_accuracy(ma, mb, token_ids, window=win, stride=stride, device=dev,
                                         on_step=lambda: bar.update(1))
    else:
        acc = encoder_accuracy(ma, mb, tok, text_s, max_sentences=prof["max_sentences"],
                               max_length=min(seq_len, max_pos or seq_len), device=dev)
        ids = tok(text_s, return_attention_mask=False, verbose=False, add_special_tokens=False)["input_ids"]
        token_ids = torch.tensor(ids, dtype=torch.long).reshape(-1)
        if max_pos is not None and seq_len > max_pos:
            notes.append(f"seq_len {seq_len} exceeds the context length {max_pos}: cut to {max_pos}")
            seq_len = max_pos

    if streamed:
        load_all()
        ma, mb = models.get("baseline"), models.get("candidate")

    # ---- latency ----
    entries: list[Any] = []
    peaks: dict[str, Any] = {"baseline": None, "candidate": None}
    if not latency:
        notes.append("latency not measured: latency=False (--no-latency)")
    if resident and latency:
        with progress(None, "latency", unit="run", quiet=quiet) as bar:
            entries, peaks = time_models(
                ma, mb, token_ids, task=task, batch_sizes=bs_list, seq_len=seq_len, new_tokens=n_new,
                warmup=n_warm, runs=runs, budget_s=prof["budget_s"], min_runs=prof["min_runs"],
                max_runs=prof["max_runs"], device=dev, on_step=lambda: bar.update(1),
            )
    method = memory_method(dev)
    for role in ("baseline", "candidate"):
        sizes[role].run_peak_bytes = peaks[role]
        sizes[role].memory_method = sizes[role].memory_method or method

    # ---- report ----
    infos = {}
    for side in (a, b):
        st = sizes[side.role]
        infos[side.role] = ModelInfo(
            name=side.name, path=str(side.path) if side.path is not None else None, kind=side.kind,
            architecture=(type(models[side.role]).__name__ if side.role in models
                          else str((side.config.get("architectures") or ["?"])[0])),
            dtype=_dominant_dtype(st.param_bytes_by_dtype), method=side.method(), num_params=st.num_params)
    cand = infos["candidate"]
    if dev.type == "cpu" and (cand.dtype == "int8" or (cand.method or "").startswith("int8")) and _cpu_has_bf16():
        notes.append("this CPU has AVX512-BF16, where BF16 alone runs ~2.5× faster than FP32: INT8 earns its place "
                     "only where it also beats a BF16 baseline — measure against BF16 too")
    notes.append(f"peak memory measured by {method} (see docs/report-schema.md)")
    env = environment(dev)
    load = max(load0 or 0.0, env.get("load_avg_1m") or 0.0)
    if dev.type == "cpu" and load > (os.cpu_count() or 1):
        notes.append(f"the machine was busy (1-minute load average {load:.1f} on {os.cpu_count()} CPUs): "
                     "latencies are inflated and noisy; the interleaved ratios are less affected")
    settings = {
        "batch_sizes": list(bs_list), "seq_len": seq_len, "new_tokens": n_new if task == "causal-lm" else 0,
        "warmup": n_warm, "runs": runs, "quick": quick, "window": win if task == "causal-lm" else None,
        "stride": (stride or win) if task == "causal-lm" else None,
        "text": {"source": _text_source(text), "chars": len(text_s),
                 "sha256": hashlib.sha256(text_s.encode("utf-8")).hexdigest(), "tokens": int(token_ids.numel())},
    }
    report = Report(
        task=task, baseline=infos["baseline"], candidate=cand,
        size_baseline=sizes["baseline"], size_candidate=sizes["candidate"], latency=entries, accuracy=acc,
        environment=env, settings=settings, gates=gates_v, notes=notes,
        created=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    report.gate_results = evaluate_gates(report, gates_v)
    if not entries:
        # A speed gate the run could not measure (latency off or the models did not fit) fails: CI must not
        # read "not applicable" as "fast enough".
        for g in report.gate_results:
            if g.name == "min_speedup":
                g.applicable, g.passed = True, False
    report.duration_s = time.perf_counter() - t_start
    return report


def _text_source(text: Any) -> str:
    if text is None:
        return "default: pydoc_data.topics eval slice"
    if isinstance(text, Path) or (isinstance(text, str) and looks_like_file(text)):
        return f"file: {text}"
    return "string" if isinstance(text, str) else "iterable"


def measure_after_quantize(source: Any, out_dir: str | os.PathLike[str], args: Any = None, **overrides: Any) -> Report:
    """Measure a freshly quantized ``out_dir`` against its ``source`` (what ``quantize --measure`` runs).

    Reads optional attributes of the quantize command's ``args``: ``device``, ``text``, ``quick``, ``quiet``,
    ``runtime``, ``batch_sizes`` (list or ``"1,8"``), ``seq_len`` and the gate options of :func:`gates_from_args`
    (``--max-ppl-increase`` doubles as the gate on the evaluation text). Keyword ``overrides`` win.

    Example:
        >>> r = measure_after_quantize("models/smollm2", "out/smollm2-int8", quick=True)  # doctest: +SKIP
    """
    kw: dict[str, Any] = {}
    if args is not None:
        for name in ("device", "text", "quick", "quiet", "seq_len", "runtime"):
            v = getattr(args, name, None)
            if v is not None:
                kw[name] = v
        bs = getattr(args, "batch_sizes", None)
        if bs is not None:
            kw["batch_sizes"] = parse_batch_sizes(bs) if isinstance(bs, str) else tuple(bs)
        gates = gates_from_args(args)
        if gates:
            kw["gates"] = gates
    kw.update(overrides)
    return measure(source, out_dir, **kw)
