"""What :func:`llmpack.quantize` returns, and the one-line summaries of an int8 calibration."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from llmpack.checkpoint.manifest import Manifest
from llmpack.config import Recipe
from llmpack.quant.plan import TensorDecision

if TYPE_CHECKING:
    from llmpack.tune.budget import Int8Decisions

__all__ = ["QuantizeResult", "budget_summary", "budget_line", "CALIBRATION_KEY"]

CALIBRATION_KEY = "int8_calibration"
"""``llmpack.json`` ``extra`` key recording why an int8 model was not calibrated."""


@dataclasses.dataclass
class QuantizeResult:
    """What :func:`quantize` produced.

    Attributes:
        out_dir: the model directory (``None`` for an in-memory conversion).
        files: relpath -> ``{"sha256", "size"}`` of every file written (``llmpack.json`` excluded).
        recipe: the recipe used. manifest: the ``llmpack.json`` contents.
        decisions: per-tensor decisions. source: ``{"kind", "path", "fingerprint"}``.
        source_bytes / output_bytes: tensor bytes in, file bytes out. seconds: wall time.
        fp32_modules: modules kept in float32 because their FP16 activations overflowed.
        model: the converted model for in-memory conversions.
        budget: int8: what the accuracy calibration decided (see :func:`budget_summary`), or
            ``{"calibrated": False, "reason": ...}`` when it did not run; ``None`` for float methods.
        int8_decisions: int8: the :class:`~llmpack.tune.budget.Int8Decisions` applied (``None`` without calibration).
    """

    out_dir: Path | None
    files: dict[str, dict[str, Any]]
    recipe: Recipe
    manifest: Manifest | None
    decisions: list[TensorDecision]
    source: dict[str, Any]
    source_bytes: int
    output_bytes: int
    seconds: float
    fp32_modules: list[str] = dataclasses.field(default_factory=list)
    model: torch.nn.Module | None = None
    budget: dict[str, Any] | None = None
    int8_decisions: "Int8Decisions | None" = None

    @property
    def ratio(self) -> float:
        """Output bytes / source tensor bytes."""
        return self.output_bytes / self.source_bytes if self.source_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"out_dir": str(self.out_dir) if self.out_dir else None, "files": self.files,
                "recipe": self.recipe.to_dict(), "source": self.source, "source_bytes": self.source_bytes,
                "output_bytes": self.output_bytes, "ratio": round(self.ratio, 4), "seconds": round(self.seconds, 3),
                "fp32_modules": self.fp32_modules, "tensors": len(self.decisions), "budget": self.budget}

    def summary(self) -> str:
        """One human line."""
        where = self.out_dir if self.out_dir else "memory"
        extra = f", {len(self.fp32_modules)} module(s) kept in fp32" if self.fp32_modules else ""
        line = (f"{self.recipe.method.value}: {len(self.decisions)} tensors, {_mb(self.source_bytes)} -> "
                f"{_mb(self.output_bytes)} ({self.ratio:.2f}x) in {self.seconds:.1f}s -> {where}{extra}")
        if self.budget:
            line += f"; {budget_line(self.budget)}"
        return line


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def budget_summary(d: "Int8Decisions") -> dict[str, Any]:
    """Compact JSON-ready summary of an int8 calibration for :attr:`QuantizeResult.budget`.

    Example:
        >>> from llmpack.tune.budget import Int8Decisions
        >>> budget_summary(Int8Decisions(method="int8", weight_only={"b"}, params={"a": 4, "b": 4}))["layers"]
        {'w8a8': 1, 'w8a16': 1, 'float': 0}
    """
    counts = {"w8a8": 0, "w8a16": 0, "float": 0}
    for n in d.params:
        counts[d.layer_mode(n)] += 1
    s = d.summary or {}
    return {"calibrated": True, "budget": (s.get("budget") or {}), "met": s.get("met"), "layers": counts,
            "alpha": dict(d.alpha), "int8_share": round(d.int8_share(), 6),
            "calibration_tokens": s.get("calibration_tokens"), "float": s.get("float"), "planned": s.get("planned")}


def budget_line(b: Mapping[str, Any]) -> str:
    """One human phrase for :attr:`QuantizeResult.budget`.

    Example:
        >>> budget_line({"calibrated": False, "reason": "no tokenizer"})
        'no calibration (no tokenizer)'
        >>> budget_line({"calibrated": True, "budget": {"max_ppl_increase": 2}, "layers": {"w8a8": 3, "w8a16": 1,
        ...              "float": 0}, "alpha": {"attn_in": 0.65}, "met": True})
        'budget 2%: 3 W8A8, 1 W8A16, 0 float, smoothing α=0.65'
    """
    if not b.get("calibrated"):
        return f"no calibration ({b.get('reason', 'not run')})"
    bud = b.get("budget") or {}
    parts = []
    if bud.get("max_ppl_increase") is not None:
        parts.append(f"{float(bud['max_ppl_increase']):g}%")
    if bud.get("max_kl") is not None:
        parts.append(f"KL {float(bud['max_kl']):g}")
    head = f"budget {' / '.join(parts)}" if parts else "int8 defaults"
    c = b.get("layers") or {}
    alphas = sorted({float(a) for a in (b.get("alpha") or {}).values()})
    smooth = "smoothing off" if not alphas else "smoothing α=" + "/".join(f"{a:g}" for a in alphas)
    line = f"{head}: {c.get('w8a8', 0)} W8A8, {c.get('w8a16', 0)} W8A16, {c.get('float', 0)} float, {smooth}"
    planned = b.get("planned") or {}
    if planned.get("kl_ppl_increase_pct") is not None:
        line += (f", ppl {float(planned['kl_ppl_increase_pct']):+.2f}% KL-implied "
                 f"({float(planned['ppl_increase_pct']):+.2f}% measured) on calibration text")
    elif planned.get("ppl_increase_pct") is not None:
        line += f", ppl {float(planned['ppl_increase_pct']):+.2f}% on calibration text"
    if b.get("met") is False:
        line += " (BUDGET NOT MET)"
    return line


