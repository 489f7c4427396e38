"""The measurement gates, defined once.

Every place that knows a gate — the report (:data:`llmpack.measure.report.GATES`), ``measure()``'s
``gates=`` argument, the ``measure`` and ``quantize --measure`` CLI flags, and ``llmpack build``'s
``[measure]`` keys and cached-record evaluation — reads this table. Adding a gate is one row here.

This module imports neither torch nor the report (a cached ``llmpack build`` evaluates gates from its
record alone, in about a second).

Example:
    >>> [g.name for g in GATE_TABLE][:2]
    ['max_ppl_increase_pct', 'min_top1']
    >>> GATE_BY_OPTION["max_ppl_increase"].flag
    '--max-ppl-increase'
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping

from llmpack.errors import ConfigError

__all__ = ["Gate", "GATE_TABLE", "GATE_BY_NAME", "GATE_BY_OPTION", "gate_passes", "gates_from_options",
           "evaluate_recorded", "record_metrics", "GateResult", "GATES", "validate_gates", "evaluate_gates"]


@dataclasses.dataclass(frozen=True)
class Gate:
    """One gate: a report metric, a comparison and how users spell it.

    Attributes:
        name: the gate name in ``measure(gates=...)`` and reports (``max_ppl_increase_pct``).
        option: the ``llmpack.toml`` ``[measure]`` key and, dashed, the CLI flag (``max_ppl_increase``).
        op: ``"<="`` (an upper bound) or ``">="`` (a lower bound).
        description: what the metric is.
        metavar: the CLI metavar.
        help: the CLI help line.
        metric: ``report -> value | None`` (``None``: not applicable to this model).

    Example:
        >>> GATE_BY_NAME["min_top1"].passes(0.95, 0.9)
        True
    """

    name: str
    option: str
    op: str
    description: str
    metavar: str
    help: str
    metric: Callable[[Any], "float | None"] = dataclasses.field(compare=False, repr=False)

    @property
    def flag(self) -> str:
        """The CLI flag (``--min-top1``)."""
        return "--" + self.option.replace("_", "-")

    def passes(self, value: float, threshold: float) -> bool:
        """Whether ``value`` satisfies the gate at ``threshold`` (NaN never does).

        Example:
            >>> GATE_BY_NAME["max_kl"].passes(float("nan"), 1.0)
            False
        """
        return gate_passes(value, self.op, threshold)


def gate_passes(value: float, op: str, threshold: float) -> bool:
    """The one comparison every gate uses: ``value <= threshold`` or ``>=``; NaN fails.

    Example:
        >>> gate_passes(1.5, "<=", 2.0), gate_passes(0.8, ">=", 0.9)
        (True, False)
    """
    if isinstance(value, float) and math.isnan(value):
        return False
    return bool(value <= threshold) if op == "<=" else bool(value >= threshold)


GATE_TABLE: tuple[Gate, ...] = (
    Gate("max_ppl_increase_pct", "max_ppl_increase", "<=",
         "perplexity increase of the candidate, percent (causal LMs)", "PCT",
         "largest allowed perplexity increase, percent (e.g. 2)", lambda r: r.accuracy.ppl_delta_pct),
    Gate("min_top1", "min_top1", ">=", "top-1 next-token agreement with the baseline, 0..1 (causal LMs)", "F",
         "smallest allowed top-1 agreement, 0..1 (e.g. 0.9)", lambda r: r.accuracy.top1),
    Gate("min_speedup", "min_speedup", ">=",
         "slowest speedup (baseline p50 / candidate p50) over batch sizes, prefill or encoder forward", "X",
         "smallest allowed speedup over the baseline at every batch size (e.g. 1.0)", lambda r: r.min_speedup),
    Gate("max_size_ratio", "max_size_ratio", "<=",
         "candidate / baseline size (weight files on disk; parameter bytes for in-memory models)", "R",
         "largest allowed candidate / baseline size (e.g. 0.6)", lambda r: r.size_ratio),
    Gate("max_kl", "max_kl", "<=", "mean KL divergence of next-token distributions, nats (causal LMs)", "NATS",
         "largest allowed mean KL divergence (nats)", lambda r: r.accuracy.kl_mean),
    Gate("min_cosine", "min_cosine", ">=", "lowest embedding cosine candidate vs baseline over the sentences (encoders)",
         "F", "encoders: smallest allowed embedding cosine vs the baseline", lambda r: r.accuracy.cosine_min),
)
GATE_BY_NAME: dict[str, Gate] = {g.name: g for g in GATE_TABLE}
GATE_BY_OPTION: dict[str, Gate] = {g.option: g for g in GATE_TABLE}


def gates_from_options(get: "Callable[[str], Any] | Mapping[str, Any]") -> dict[str, float]:
    """``{gate name: threshold}`` from option spellings (CLI ``args`` attributes or ``llmpack.toml`` keys).

    Args:
        get: a mapping keyed by option (``{"max_ppl_increase": 2}``) or a getter ``option -> value``;
            ``None`` values are left out.

    Example:
        >>> gates_from_options({"max_ppl_increase": 2, "min_top1": None})
        {'max_ppl_increase_pct': 2.0}
    """
    lookup = get.get if isinstance(get, Mapping) else get
    out: dict[str, float] = {}
    for g in GATE_TABLE:
        v = lookup(g.option)
        if v is not None:
            out[g.name] = float(v)
    return out


def evaluate_recorded(metrics: Mapping[str, Mapping[str, Any]], gates: Mapping[str, float]) -> list[str]:
    """Failed-gate messages from metrics recorded with a report (``{gate: {"value", "op"}}``).

    A gate whose metric does not exist for the model (``value`` None, e.g. ``min_top1`` on an encoder)
    is not applicable and passes; a NaN value fails.

    Example:
        >>> evaluate_recorded({"min_top1": {"value": 0.8, "op": ">="}}, {"min_top1": 0.9})
        ['min_top1: 0.8 >= 0.9 FAILED']
    """
    failed = []
    for name, thr in gates.items():
        rec = metrics.get(name)
        if rec is None:
            failed.append(f"{name}: the report has no such metric (re-run with --force)")
            continue
        value = rec.get("value")
        if value is None:
            continue
        if not gate_passes(value, str(rec.get("op")), thr):
            failed.append(f"{name}: {value:.4g} {rec.get('op')} {thr:g} FAILED")
    return failed


def record_metrics(report: Any, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{gate: {"value", "op"}}`` of a report, for every gate: what ``llmpack build`` records.

    Example:
        >>> record_metrics(type("R", (), {"size_ratio": 0.5})(), ["max_size_ratio"])
        {'max_size_ratio': {'value': 0.5, 'op': '<='}}
    """
    out = {}
    for name in (names if names is not None else GATE_BY_NAME):
        g = GATE_BY_NAME[name]
        value = g.metric(report)
        out[name] = {"value": None if value is None else float(value), "op": g.op}
    return out


# --- gate outcomes on a report ----------------------------------------------------------------------

@dataclasses.dataclass
class GateResult:
    """One gate's outcome. ``applicable`` is False when the metric does not exist for the task
    (e.g. ``min_top1`` on an encoder); such a gate is skipped, never failed.

    Example:
        >>> GateResult("min_top1", 0.9, 0.95, True).line()
        'min_top1: 0.95 >= 0.9 ok'
    """

    name: str
    threshold: float
    value: float | None
    passed: bool
    applicable: bool = True

    def line(self) -> str:
        """One human line: ``name: value op threshold ok|FAILED``."""
        if not self.applicable:
            return f"{self.name}: not applicable to this model (skipped)"
        op = GATES[self.name][2] if self.name in GATES else "?"
        val = "n/a" if self.value is None else f"{self.value:.4g}"
        return f"{self.name}: {val} {op} {self.threshold:g} {'ok' if self.passed else 'FAILED'}"

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GateResult":
        """Inverse of :meth:`to_dict`."""
        return cls(name=d["name"], threshold=d["threshold"], value=d.get("value"), passed=bool(d["passed"]),
                   applicable=bool(d.get("applicable", True)))


# name -> (description, metric(report) -> value | None, comparison): a view of the one gate table.
GATES: dict[str, tuple[str, Callable[[Any], float | None], str]] = {
    g.name: (g.description, g.metric, g.op) for g in GATE_TABLE
}


def validate_gates(gates: Mapping[str, Any] | None) -> dict[str, float]:
    """Check gate names and values; returns ``{name: float}``.

    Raises:
        ConfigError: an unknown gate name (the message lists the valid ones) or a non-numeric value.

    Example:
        >>> validate_gates({"min_top1": "0.9"})
        {'min_top1': 0.9}
    """
    out: dict[str, float] = {}
    for name, value in (gates or {}).items():
        if name not in GATES:
            raise ConfigError(f"unknown gate {name!r}: valid gates are {', '.join(GATES)}")
        if value is None:
            continue
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"gate {name} needs a number, got {value!r}") from None
        if math.isnan(v):
            raise ConfigError(f"gate {name} needs a number, got NaN")
        out[name] = v
    return out


def evaluate_gates(report: Any, gates: Mapping[str, Any] | None) -> list[GateResult]:
    """Evaluate ``gates`` against a :class:`~llmpack.measure.report.Report` (a missing metric makes the gate not
    applicable).

    Example:
        >>> from llmpack.measure.report import Report
        >>> [g.passed for g in evaluate_gates(Report.example(), {"max_size_ratio": 0.4})]
        [False]
    """
    results = []
    for name, thr in validate_gates(gates).items():
        _, metric, op = GATES[name]
        value = metric(report)
        if value is None:
            results.append(GateResult(name, thr, None, True, applicable=False))
            continue
        results.append(GateResult(name, thr, float(value), gate_passes(float(value), op, thr)))
    return results
