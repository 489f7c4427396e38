"""What the INT8 accuracy search decided (:class:`Int8Decisions`), ready to apply while streaming or in memory,
and its records for ``llmpack.json``. The search itself is :func:`llmpack.tune.budget.search_budget`."""

from __future__ import annotations

import dataclasses
from typing import Any, Container, Mapping

import torch

from llmpack.config import Method
from llmpack.errors import BadInputError
from llmpack.quant import smooth as _smooth

__all__ = ["Int8Decisions", "MANIFEST_KEY", "eight_bit_share"]

MANIFEST_KEY = "int8_budget"
"""Key of the search record in ``llmpack.json`` ``"extra"``."""


def eight_bit_share(params: Mapping[str, int], kept_float: Container[str]) -> float:
    """The share of ``params`` (layer name -> parameter count) stored in 8 bits, every layer but ``kept_float``.

    Example:
        >>> eight_bit_share({"a": 3, "b": 1}, {"b"})
        0.75
    """
    total = sum(params.values())
    return sum(n for k, n in params.items() if k not in kept_float) / total if total else 0.0


@dataclasses.dataclass
class Int8Decisions:
    """The outcome of the INT8 accuracy search, ready to apply while streaming or in memory.

    Attributes:
        method: ``"int8"`` (W8A8), ``"int8-weight-only"``, ``"fp8"`` or ``"fp8-weight-only"`` (the modes
            ``w8a8`` / ``w8a16`` then name FP8 weights with FP8 / float activations).
        alpha: SmoothQuant alpha per group kind (empty: no smoothing).
        groups: the smoothing groups that have a scale (``prev`` name → group).
        smooth_scales: ``prev`` name → producer-side scale ``s`` (float32).
        weight_only: linear layers stored W8A16 inside a W8A8 model.
        keep_float: linear layers kept in float.
        float_storage: layers of ``keep_float`` the budget moved there, stored in this dtype (``"bf16"``) because
            the source stores them wider; empty: kept as in the source (ignored layers always are).
        records: one JSON-ready record per linear layer, plus the search steps.
        summary: float vs planned accuracy on the calibration text, the budget and the int8 share.
        params: linear layer name → parameter count (for :meth:`int8_share`).
        has_bias: producer module → whether it has a bias (``None``: assume it may).

    Example:
        >>> d = Int8Decisions(method="int8")
        >>> d.layer_mode("model.layers.0.mlp.down_proj")
        'w8a8'
    """

    method: str = "int8"
    alpha: dict[str, float] = dataclasses.field(default_factory=dict)
    groups: dict[str, _smooth.SmoothGroup] = dataclasses.field(default_factory=dict)
    smooth_scales: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    weight_only: set[str] = dataclasses.field(default_factory=set)
    keep_float: set[str] = dataclasses.field(default_factory=set)
    float_storage: dict[str, str] = dataclasses.field(default_factory=dict)
    records: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)
    params: dict[str, int] = dataclasses.field(default_factory=dict)
    has_bias: dict[str, bool] | None = None

    # ------------------------------------------------------------------ queries
    def layer_mode(self, name: str) -> str:
        """``"w8a8"``, ``"w8a16"`` or ``"float"`` for one linear layer."""
        if name in self.keep_float:
            return "float"
        if name in self.weight_only or not Method.parse(self.method).act_quant:
            return "w8a16"
        return "w8a8"

    def int8_share(self) -> float:
        """Share of linear-layer parameters (output head excluded) stored in int8 (W8A8 or W8A16)."""
        return eight_bit_share(self.params, self.keep_float)

    def tensor_ops(self) -> dict[str, list[_smooth.ScaleOp]]:
        """Tensor name → smoothing folds to apply to it before quantization."""
        return _smooth.tensor_ops(self.groups.values(), self.smooth_scales, self.has_bias)

    def transform(self, name: str, tensor: torch.Tensor, _ops: dict | None = None) -> torch.Tensor:
        """Fold the smoothing scales into one streamed source tensor (identity for untouched tensors).

        Call it on every ``(name, tensor)`` read from the source checkpoint, *before* the int8 / cast
        action; the result has the same dtype and shape.

        Example:
            >>> Int8Decisions().transform("x.weight", torch.ones(2)).tolist()
            [1.0, 1.0]
        """
        ops = (_ops if _ops is not None else self._ops_cache()).get(name)
        if not ops:
            return tensor
        return _smooth.apply_ops(tensor, ops, self.smooth_scales, self.groups)

    def _ops_cache(self) -> dict[str, list[_smooth.ScaleOp]]:
        key = (id(self.smooth_scales), len(self.smooth_scales), len(self.groups))
        cache = getattr(self, "_cached_ops", None)
        if cache is None or cache[0] != key:
            cache = (key, self.tensor_ops())
            object.__setattr__(self, "_cached_ops", cache)
        return cache[1]

    def smoothed_tensors(self) -> frozenset[str]:
        """Names of the source tensors :meth:`transform` changes."""
        return frozenset(self._ops_cache())

    def fold_into(self, model: torch.nn.Module) -> None:
        """Fold the smoothing scales into an in-memory float model, in place (exact in float)."""
        _smooth.fold(model, self.groups.values(), self.smooth_scales)

    # ------------------------------------------------------------------ records
    def manifest_decisions(self) -> dict[str, dict[str, Any]]:
        """Per-module records for ``llmpack.json`` ``"decisions"`` (keys are module names).

        Example:
            >>> Int8Decisions(method="int8", keep_float={"fc"}, params={"fc": 4}).manifest_decisions()["fc"]["int8"]
            'float'
        """
        out: dict[str, dict[str, Any]] = {}
        for r in self.records:
            if r.get("kind") == "layer":
                rec = {k: v for k, v in r.items() if k not in ("kind", "module")}
                out[r["module"]] = rec
        for name in self.params:
            out.setdefault(name, {"int8": self.layer_mode(name), "reason": "default"})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (scales summarised, not stored: they are folded into the weights).

        Example:
            >>> d = Int8Decisions(method="int8", weight_only={"a"}, params={"a": 8, "b": 8})
            >>> Int8Decisions.from_dict(d.to_dict()).weight_only
            {'a'}
        """
        return {
            "method": self.method,
            "alpha": dict(self.alpha),
            "smoothed": {
                p: {"kind": g.kind, "targets": list(g.targets),
                    "scale_max": round(float(self.smooth_scales[p].max()), 6) if p in self.smooth_scales else None,
                    "scale_min": round(float(self.smooth_scales[p].min()), 6) if p in self.smooth_scales else None}
                for p, g in sorted(self.groups.items())
            },
            "weight_only": sorted(self.weight_only),
            "keep_float": sorted(self.keep_float),
            **({"float_storage": dict(sorted(self.float_storage.items()))} if self.float_storage else {}),
            "int8_share": round(self.int8_share(), 6),
            "params": dict(sorted(self.params.items())),
            "summary": self.summary,
            "records": self.records,
        }

    def annotate_manifest(self, manifest: Any) -> None:
        """Record these decisions in a :class:`~llmpack.checkpoint.manifest.Manifest` before it is written:
        one record per linear layer in ``decisions`` (keyed by module name, next to the per-tensor
        records) and the whole search under ``extra["int8_budget"]``."""
        for name, rec in self.manifest_decisions().items():
            manifest.decisions.setdefault(name, {}).update(rec)
        manifest.extra[MANIFEST_KEY] = self.to_dict()

    @classmethod
    def from_manifest(cls, manifest: Any) -> "Int8Decisions | None":
        """The decisions recorded by :meth:`annotate_manifest` (``None`` when the model had no search).

        Example:
            >>> from llmpack.checkpoint.manifest import read_manifest
            >>> Int8Decisions.from_manifest(read_manifest("smollm2-int8")).keep_float   # doctest: +SKIP
            set()
        """
        rec = (getattr(manifest, "extra", None) or {}).get(MANIFEST_KEY)
        return None if rec is None else cls.from_dict(rec)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Int8Decisions":
        """Rebuild the decisions recorded by :meth:`to_dict` (without scale vectors)."""
        try:
            return cls(method=str(d["method"]), alpha=dict(d.get("alpha", {})), weight_only=set(d.get("weight_only", ())),
                       keep_float=set(d.get("keep_float", ())),
                       float_storage={str(k): str(v) for k, v in d.get("float_storage", {}).items()}, records=list(d.get("records", ())),
                       summary=dict(d.get("summary", {})), params={k: int(v) for k, v in d.get("params", {}).items()})
        except (KeyError, TypeError, ValueError) as e:
            raise BadInputError(f"llmpack.json int8 budget record is malformed ({e}): re-run quantize") from e
