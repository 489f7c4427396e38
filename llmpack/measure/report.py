"""The measurement :class:`Report`: JSON (versioned schema, see ``docs/report-schema.md``), Markdown,
HTML for notebooks, a PNG plot, a one-line summary and CI gates.

Example:
    >>> r = Report.example()
    >>> r.summary()
    'bf16: 0.50× size, 2.0× faster (b1), +0.3% ppl'
    >>> Report.from_dict(r.to_dict()).to_dict() == r.to_dict()
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from llmpack._dtypes import short_name
from llmpack.constants import REPORT_SCHEMA_VERSION
from llmpack.errors import BadInputError
from llmpack.measure.accuracy import AccuracyStats
from llmpack.measure import render
from llmpack.measure.gates import GATES, GateResult, evaluate_gates, validate_gates
from llmpack.measure.latency import LatencyEntry, Timing
from llmpack.measure.render import _ratio, _write_text
from llmpack.measure.size import SizeStats

__all__ = ["Report", "ModelInfo", "GateResult", "GATES", "validate_gates", "evaluate_gates", "REPORT_SCHEMA_NAME"]

REPORT_SCHEMA_NAME = "llmpack.measure.report"

@dataclasses.dataclass
class ModelInfo:
    """What was measured.

    Attributes:
        name: a display name (directory name, or the module's class name).
        path: the model directory / file, or ``None`` for an in-memory module.
        kind: ``"dir"``, ``"gguf"`` or ``"module"``.
        architecture: the model class name, e.g. ``LlamaForCausalLM``.
        dtype: the dtype holding most parameter bytes, e.g. ``float32`` / ``int8``.
        method: the llmpack quantization method from ``llmpack.json`` (``None`` when not made by llmpack).
        num_params: parameter elements.

    Example:
        >>> ModelInfo(name="m", dtype="bfloat16").label
        'bf16'
    """

    name: str
    path: str | None = None
    kind: str = "module"
    architecture: str = ""
    dtype: str = ""
    method: str | None = None
    num_params: int = 0

    @property
    def label(self) -> str:
        """Short label used in the summary line: the llmpack method, else the dominant dtype."""
        return self.method or (self.dtype and short_name(self.dtype)) or self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelInfo":
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _finite(x: Any) -> Any:
    """Replace non-finite floats by ``None`` (strict JSON) recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


@dataclasses.dataclass
class Report:
    """Baseline vs candidate: size, latency and accuracy, plus gates. Built by :func:`llmpack.measure`.

    Attributes:
        task: ``"causal-lm"`` or ``"encoder"``.
        baseline, candidate: what was measured (:class:`ModelInfo`).
        size_baseline, size_candidate: :class:`~llmpack.measure.size.SizeStats`.
        latency: one :class:`~llmpack.measure.latency.LatencyEntry` per phase and batch size.
        accuracy: :class:`~llmpack.measure.accuracy.AccuracyStats`.
        environment: device, device name, threads, CPU model, library versions.
        settings: the measurement settings actually used (after caps, e.g. FP16 on CPU).
        gates: the gates asked for; ``gate_results`` their outcome.
        notes: plain-language remarks (caps applied, BF16 comparison hints, …).
        duration_s: wall time of the whole measurement.
        created: ISO-8601 UTC time the report was made.

    Example:
        >>> Report.example().passed
        True
    """

    task: str
    baseline: ModelInfo
    candidate: ModelInfo
    size_baseline: SizeStats
    size_candidate: SizeStats
    latency: list[LatencyEntry]
    accuracy: AccuracyStats
    environment: dict[str, Any] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    gates: dict[str, float] = dataclasses.field(default_factory=dict)
    gate_results: list[GateResult] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    duration_s: float = 0.0
    created: str = ""
    schema_version: int = REPORT_SCHEMA_VERSION

    # ---- derived figures ----------------------------------------------------------------------
    @property
    def disk_ratio(self) -> float | None:
        """Candidate / baseline bytes of weight files on disk (``None`` unless both are directories)."""
        return _ratio(self.size_baseline.weight_file_bytes, self.size_candidate.weight_file_bytes)

    @property
    def param_ratio(self) -> float | None:
        """Candidate / baseline bytes of parameters and buffers in memory."""
        return _ratio(self.size_baseline.total_param_bytes, self.size_candidate.total_param_bytes)

    @property
    def size_ratio(self) -> float | None:
        """The size ratio gates and the summary use: on-disk weights when known, else parameter bytes."""
        d = self.disk_ratio
        return d if d is not None else self.param_ratio

    @property
    def primary_phase(self) -> str:
        """``prefill`` for causal LMs, ``forward`` for encoders."""
        return "prefill" if self.task == "causal-lm" else "forward"

    def speedup(self, batch_size: int | None = None, phase: str | None = None) -> float | None:
        """Baseline p50 / candidate p50 for a phase (default: the primary phase) at a batch size
        (default: the first measured)."""
        phase = phase or self.primary_phase
        rows = [e for e in self.latency if e.phase == phase]
        if batch_size is not None:
            rows = [e for e in rows if e.batch_size == batch_size]
        return rows[0].speedup if rows else None

    @property
    def min_speedup(self) -> float | None:
        """The slowest primary-phase speedup over the measured batch sizes (what ``min_speedup`` gates)."""
        vals = [e.speedup for e in self.latency if e.phase == self.primary_phase]
        return min(vals) if vals else None

    @property
    def passed(self) -> bool:
        """True when no gate failed (also when no gate was given)."""
        return not self.failed_gates

    @property
    def failed_gates(self) -> list[str]:
        """Names of the gates that failed."""
        return [g.name for g in self.gate_results if g.applicable and not g.passed]

    def summary(self) -> str:
        """One line, e.g. ``int8: 0.41× size, 2.7× faster (b1), +1.8% ppl``."""
        parts = []
        sr = self.size_ratio
        if sr is not None:
            parts.append(f"{sr:.2f}× size")
        rows = [e for e in self.latency if e.phase == self.primary_phase]
        if rows:
            s, bs = rows[0].speedup, rows[0].batch_size
            if s is None or math.isnan(s):
                pass
            elif s >= 1.0:
                parts.append(f"{s:.1f}× faster (b{bs})")
            else:
                parts.append(f"{1.0 / s:.1f}× slower (b{bs})")
        acc = self.accuracy
        if acc.ppl_delta_pct is not None:
            parts.append(f"{acc.ppl_delta_pct:+.1f}% ppl" if math.isfinite(acc.ppl_delta_pct) else "ppl inf")
        elif acc.cosine_mean is not None:
            parts.append(f"cos {acc.cosine_mean:.4f}")
        line = f"{self.candidate.label}: {', '.join(parts)}"
        if self.failed_gates:
            line += f" — FAILED {', '.join(self.failed_gates)}"
        return line

    # ---- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The versioned JSON document (``docs/report-schema.md``); non-finite numbers become ``null``.

        Example:
            >>> Report.example().to_dict()["schema_version"]
            1
        """
        d = {
            "schema": REPORT_SCHEMA_NAME,
            "schema_version": self.schema_version,
            "created": self.created,
            "duration_s": self.duration_s,
            "task": self.task,
            "summary": self.summary(),
            "passed": self.passed,
            "models": {"baseline": self.baseline.to_dict(), "candidate": self.candidate.to_dict()},
            "size": {
                "baseline": self.size_baseline.to_dict(),
                "candidate": self.size_candidate.to_dict(),
                "ratios": {
                    "disk": self.disk_ratio,
                    "params": self.param_ratio,
                    "load_peak": _ratio(self.size_baseline.load_peak_bytes, self.size_candidate.load_peak_bytes),
                    "run_peak": _ratio(self.size_baseline.run_peak_bytes, self.size_candidate.run_peak_bytes),
                },
            },
            "latency": [e.to_dict() for e in self.latency],
            "accuracy": self.accuracy.to_dict(),
            "gates": dict(self.gates),
            "gate_results": [g.to_dict() for g in self.gate_results],
            "failed_gates": self.failed_gates,
            "environment": dict(self.environment),
            "settings": dict(self.settings),
            "notes": list(self.notes),
        }
        return _finite(d)

    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int = 2) -> str:
        """The JSON text of :meth:`to_dict`; also written to ``path`` when given.

        Example:
            >>> '"schema_version": 1' in Report.example().to_json()
            True
        """
        text = json.dumps(self.to_dict(), indent=indent, sort_keys=True, allow_nan=False) + "\n"
        if path is not None:
            _write_text(Path(path), text)
        return text

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Report":
        """Rebuild a report from :meth:`to_dict` output (derived keys are recomputed, not trusted).

        Raises:
            BadInputError: not a report, or written by a newer schema version.

        Example:
            >>> Report.from_dict(Report.example().to_dict()).task
            'causal-lm'
        """
        if not isinstance(d, Mapping) or d.get("schema") != REPORT_SCHEMA_NAME:
            raise BadInputError(f"not an llmpack report: expected \"schema\": \"{REPORT_SCHEMA_NAME}\"")
        ver = d.get("schema_version")
        if not isinstance(ver, int) or ver > REPORT_SCHEMA_VERSION:
            raise BadInputError(f"report schema_version {ver!r} is newer than this llmpack reads "
                                f"({REPORT_SCHEMA_VERSION}): upgrade llmpack")
        return cls(
            task=d["task"],
            baseline=ModelInfo.from_dict(d["models"]["baseline"]),
            candidate=ModelInfo.from_dict(d["models"]["candidate"]),
            size_baseline=SizeStats.from_dict(d["size"]["baseline"]),
            size_candidate=SizeStats.from_dict(d["size"]["candidate"]),
            latency=[LatencyEntry.from_dict(e) for e in d.get("latency", [])],
            accuracy=AccuracyStats.from_dict(d["accuracy"]),
            environment=dict(d.get("environment", {})),
            settings=dict(d.get("settings", {})),
            gates=dict(d.get("gates", {})),
            gate_results=[GateResult.from_dict(g) for g in d.get("gate_results", [])],
            notes=list(d.get("notes", [])),
            duration_s=float(d.get("duration_s", 0.0)),
            created=str(d.get("created", "")),
            schema_version=ver,
        )

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike[str]) -> "Report":
        """Read a report from JSON text or a ``.json`` file.

        Example:
            >>> Report.from_json(Report.example().to_json()).candidate.label
            'bf16'
        """
        s = str(text_or_path)
        if not s.lstrip().startswith("{"):
            s = Path(s).read_text(encoding="utf-8")
        try:
            return cls.from_dict(json.loads(s))
        except json.JSONDecodeError as e:
            raise BadInputError(f"report is not valid JSON: {e}") from e

    # ---- rendering (llmpack.measure.render) ----------------------------------------------------
    def to_markdown(self, path: str | os.PathLike[str] | None = None) -> str:
        """A Markdown report (summary, size, latency, accuracy, gates, environment, notes); also written to
        ``path`` when given.

        Example:
            >>> Report.example().to_markdown().splitlines()[0]
            '## llmpack measure: base → cand'
        """
        return render.to_markdown(self, path)

    def to_html(self) -> str:
        """A self-contained HTML fragment (what notebooks show).

        Example:
            >>> "<table" in Report.example().to_html()
            True
        """
        return render.to_html(self)

    def _repr_html_(self) -> str:
        return self.to_html()

    def __str__(self) -> str:
        return self.summary()

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Write a PNG: latency distributions (box plots per phase and batch size) and size bars.

        Example:
            >>> import tempfile, os
            >>> p = Report.example().plot(os.path.join(tempfile.mkdtemp(), "r.png"))
            >>> p.stat().st_size > 1000
            True
        """
        return render.plot(self, path)

    # ---- a small fixed report for docs and tests ----------------------------------------------
    @classmethod
    def example(cls) -> "Report":
        """A small, fixed report (no model involved) for docs, tests and trying the renderers.

        Example:
            >>> Report.example().candidate.label
            'bf16'
        """
        t = Timing.from_samples
        rep = cls(
            task="causal-lm",
            baseline=ModelInfo(name="base", path="base", kind="dir", architecture="LlamaForCausalLM",
                               dtype="float32", num_params=1000),
            candidate=ModelInfo(name="cand", path="cand", kind="dir", architecture="LlamaForCausalLM",
                                dtype="bfloat16", num_params=1000),
            size_baseline=SizeStats(files={"model.safetensors": 4000}, disk_bytes=4000, weight_file_bytes=4000,
                                    param_bytes_by_dtype={"float32": 4000}, param_bytes=4000, num_params=1000,
                                    load_peak_bytes=5000, run_peak_bytes=800, memory_method="rss-hwm-reset"),
            size_candidate=SizeStats(files={"model.safetensors": 2000}, disk_bytes=2000, weight_file_bytes=2000,
                                     param_bytes_by_dtype={"bfloat16": 2000}, param_bytes=2000, num_params=1000,
                                     load_peak_bytes=2600, run_peak_bytes=400, memory_method="rss-hwm-reset"),
            latency=[LatencyEntry("prefill", 1, 128, 0, t([10.0, 11.0, 12.0], 128), t([5.0, 5.5, 6.0], 128)),
                     LatencyEntry("decode", 1, 128, 32, t([2.0, 2.1, 2.2], 1), t([1.5, 1.6, 1.7], 1))],
            accuracy=AccuracyStats(task="causal-lm", tokens=2000, windows=4, window=512, stride=512,
                                   ppl_baseline=16.0, ppl_candidate=16.048, kl_mean=0.002, kl_p99=0.02,
                                   kl_max=0.05, top1=0.985),
            environment={"device": "cpu", "device_name": "example CPU", "threads": 2, "torch": "x",
                         "transformers": "y", "llmpack": "z"},
            settings={"batch_sizes": [1], "seq_len": 128, "new_tokens": 32},
            duration_s=1.0,
            created="2025-01-01T00:00:00Z",
        )
        rep.gates = {"max_ppl_increase_pct": 2.0}
        rep.gate_results = evaluate_gates(rep, rep.gates)
        return rep
