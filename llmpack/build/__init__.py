"""``llmpack build``: the whole pipeline from a declarative ``llmpack.toml``, cached and gated.

The file lives in the user's repository and has four sections::

    [source]                    # what to start from
    path = "models/smollm2"     # HF dir, .gguf file or hub id (relative paths: to this file)

    [quantize]
    method = "int8"             # fp16 | bf16 | int8 | int8-weight-only | fp8 | fp8-weight-only
    out = "build/model"

    [measure]                   # optional; gates fail the build (exit 1)
    quick = true
    max_ppl_increase = 2

    [pack]                      # optional
    out = "build/image"
    name = "smollm2"

Each stage is skipped ("up to date") when what it would produce is already there: the quantized
model's ``llmpack.json`` records the source fingerprint, the recipe and llmpack's version; the
report and the pack output carry a small ``*.build.json`` record of the inputs they were made from.
``check=True`` computes the same without writing anything (drift detection). Every image digest the
pack stage produces is appended to a per-tag history (:func:`history`) for rollback by version.

The package: :mod:`~llmpack.build.config` (sections), :mod:`~llmpack.build.records` (results, records,
history), :mod:`~llmpack.build.stages` (the stage protocol); the gates are
:mod:`llmpack.measure.gates`, shared with ``measure``.

Example:
    >>> result = build("llmpack.toml")          # doctest: +SKIP
    >>> [(s.name, s.status) for s in result.stages]  # doctest: +SKIP
    [('quantize', 'up to date'), ('measure', 'up to date'), ('pack', 'up to date')]
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Mapping

from llmpack.build.config import (  # noqa: F401 -- GATE_KEYS, PACK_RECORD, ...: names of the single-module build
    DEFAULT_CONFIG,
    GATE_KEYS,
    BuildConfig,
    MeasureSection,
    PackSection,
    QuantizeSection,
    SourceSection,
    load_config,
)
from llmpack.build.records import (  # noqa: F401
    BUILT,
    HISTORY_FILE,
    PACK_RECORD,
    RECORD_SUFFIX,
    RECORD_VERSION,
    SKIPPED,
    UP_TO_DATE,
    WOULD_BUILD,
    BuildResult,
    StageResult,
    read_history,
)
from llmpack.build.records import source_fingerprint as _source_fingerprint
from llmpack.build.stages import BuildContext, Runners, make_stages, run_stage
from llmpack.errors import ConfigError, GateFailedError
from llmpack.measure.gates import evaluate_recorded as _evaluate_gates  # noqa: F401 -- one gate definition
from llmpack.measure.gates import record_metrics

__all__ = [
    "build",
    "history",
    "BuildConfig",
    "SourceSection",
    "QuantizeSection",
    "MeasureSection",
    "PackSection",
    "BuildResult",
    "StageResult",
    "load_config",
    "DEFAULT_CONFIG",
    "RECORD_SUFFIX",
    "HISTORY_FILE",
]

# --- runners -----------------------------------------------------------------------------------------
# The _run_* functions are the only places build calls the rest of llmpack; tests replace them with fakes
# (looked up here at each build, so monkeypatching this module works).


_DEVICE: str | None = None
"""``build(device=...)``: where quantize streams its checks and calibration, and measure runs (``None``: as configured)."""


def _run_quantize(cfg: BuildConfig, quiet: bool) -> dict[str, Any]:
    from llmpack.pipeline import quantize

    res = quantize(cfg.source.path, out=cfg.quantize.out, overwrite=True, quiet=quiet, recipe=cfg.quantize.recipe,
                   device=_DEVICE or "cpu")
    return {"summary": res.summary()}


def _run_measure(cfg: BuildConfig, quiet: bool) -> dict[str, Any]:
    """Measure and write the report files; returns ``{"summary", "metrics"}`` for the record.

    ``metrics`` holds, for every gate llmpack.measure knows, the report's value and the comparison, so
    gates can be evaluated later from the record alone (without loading the report or torch).
    """
    from llmpack.measure.api import measure

    m = cfg.measure
    if m is None:  # pragma: no cover - guarded by the caller
        raise ConfigError("[measure] is not configured")
    kw: dict[str, Any] = {"batch_sizes": m.batch_sizes, "quick": m.quick, "quiet": quiet}
    if m.text is not None:
        kw["text"] = m.text
    if m.device is not None:
        kw["device"] = m.device
    if _DEVICE is not None:
        kw["device"] = _DEVICE
    report = measure(cfg.source.path, cfg.quantize.out, **kw)
    m.report.parent.mkdir(parents=True, exist_ok=True)
    report.to_json(m.report)
    report.to_markdown(m.report.with_suffix(".md"))
    return {"summary": report.summary(), "metrics": record_metrics(report)}


def _run_pack(cfg: BuildConfig, quiet: bool) -> dict[str, Any]:
    from llmpack.pack.api import pack

    p = cfg.pack
    if p is None:  # pragma: no cover - guarded by the caller
        raise ConfigError("[pack] is not configured")
    res = pack(cfg.quantize.out, p.out, quiet=quiet, **dict(p.options))
    return {"manifest_digest": res.manifest_digest, "reference": res.reference, "tag": res.tag,
            "oci": str(Path(res.paths.get("oci", p.out / "oci"))), "bytes_written": res.bytes_written,
            "summary": f"{res.reference} {res.manifest_digest}"}


# --- the build --------------------------------------------------------------------------------------


def build(config: "str | os.PathLike[str] | Mapping[str, Any] | BuildConfig" = DEFAULT_CONFIG, *,
          check: bool = False, force: bool = False, quiet: bool = True,
          raise_on_gate: bool = True, device: str | None = None) -> BuildResult:
    """Run the pipeline described by an ``llmpack.toml``: quantize, measure (gates), pack — skipping what is up to date.

    A stage is up to date when its output records the same inputs: for ``quantize`` the model dir's
    ``llmpack.json`` (source fingerprint, recipe, llmpack version, file sizes); for ``measure`` and
    ``pack`` a ``*.build.json`` record beside the output (the quantized model's ``llmpack.json`` digest,
    the settings, llmpack version). Gates are re-checked on every run, also against a cached report.
    A new image digest is appended to the tag's history (see :func:`history`).

    Args:
        config: path of ``llmpack.toml``, its contents as a dict, or a :class:`BuildConfig`.
        check: compute what would change and write nothing (``result.changed`` tells).
        force: rebuild every stage even when up to date.
        quiet: no progress bars.
        raise_on_gate: raise :class:`~llmpack.errors.GateFailedError` when a gate fails (the CLI
            passes ``False`` to print the summary first); the pack stage does not run either way.
        device: ``"cpu"`` or ``"cuda"``: where quantize streams its FP16 check and int8 calibration (one block
            at a time) and where measure runs; overrides ``[measure] device``. CUDA must be available.

    Returns:
        A :class:`BuildResult` (``.stages``, ``.changed``, ``.passed``, ``.to_dict()``).

    Raises:
        ConfigError: the config is invalid (names the section and key).
        GateFailedError: a measurement gate failed (names the gate), when ``raise_on_gate``.

    Example:
        >>> import llmpack
        >>> res = llmpack.build("llmpack.toml")                # doctest: +SKIP
        >>> print(res.human())                                 # doctest: +SKIP
        quantize  up to date  /repo/build/model
        measure   up to date  /repo/build/report.json  int8: 0.41× size, 2.7× faster (b1), +1.8% ppl
        pack      up to date  /repo/build/image  smollm2:int8 sha256:4f1c…
        build: ok in 0.41 s

        (:meth:`BuildResult.human` shows the same lines on a hand-made result, as a doctest that runs.)
        >>> llmpack.build("llmpack.toml", check=True).changed  # doctest: +SKIP
        False
    """
    global _DEVICE
    if device is not None:
        from llmpack.pipeline import check_device

        check_device(device)
    previous, _DEVICE = _DEVICE, device
    try:
        return _build(config, check=check, force=force, quiet=quiet, raise_on_gate=raise_on_gate)
    finally:
        _DEVICE = previous


def _build(config: "str | os.PathLike[str] | Mapping[str, Any] | BuildConfig", *, check: bool, force: bool,
           quiet: bool, raise_on_gate: bool) -> BuildResult:
    t0 = time.perf_counter()
    cfg = config if isinstance(config, BuildConfig) else load_config(config)
    ctx = BuildContext(cfg=cfg, fingerprint=_source_fingerprint(cfg.source),
                       runners=Runners(_run_quantize, _run_measure, _run_pack))
    result = BuildResult(config=str(cfg.path) if cfg.path else None, check=check, stages=[])
    for stage in make_stages(ctx):
        result.stages.append(run_stage(stage, check=check, force=force, quiet=quiet))
    result.failed_gates = list(ctx.failed_gates)
    result.seconds = time.perf_counter() - t0
    if result.failed_gates and raise_on_gate:
        raise GateFailedError("gate failed: " + "; ".join(result.failed_gates))
    return result


def history(config: "str | os.PathLike[str] | Mapping[str, Any] | BuildConfig" = DEFAULT_CONFIG, *,
            tag: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """The image digests ``llmpack build`` produced, per tag, oldest first (for rollback by version).

    Args:
        config: the build file (its ``[pack] out`` holds ``llmpack-history.json``), its dict, or a
            :class:`BuildConfig`.
        tag: only this tag.

    Returns:
        ``{tag: [{"digest", "reference", "model", "time"}, ...]}``; the last entry is what the
        manifests written by the latest build pin, the one before it is the rollback target.

    Raises:
        ConfigError: the config is invalid or has no ``[pack]`` section.

    Example:
        >>> [e["digest"] for e in history("llmpack.toml", tag="v1")["v1"]]  # doctest: +SKIP
        ['sha256:1f0c…', 'sha256:9ab2…']
    """
    cfg = config if isinstance(config, BuildConfig) else load_config(config)
    if cfg.pack is None:
        raise ConfigError("the build has no [pack] section, so no image history: add [pack] to llmpack.toml")
    hist = read_history(cfg.pack.out)
    return {tag: hist.get(tag, [])} if tag is not None else hist


from llmpack._callable import make_callable  # noqa: E402

make_callable(__name__, f"{__name__}:build")
