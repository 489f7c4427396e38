"""The build stages behind one protocol: a key of inputs, an up-to-date check, a run.

:func:`run_stage` is the one loop body every stage goes through (skip when blocked; "up to date" when
the output records the same inputs; "would build" under ``check``; else run and record). A stage only
says what its inputs are, how to tell its output is current, and how to produce it.

Example:
    >>> from llmpack.build.config import load_config
    >>> cfg = load_config({"source": {"path": "org/m"}, "quantize": {"method": "bf16"}}, base_dir="/r")
    >>> ctx = BuildContext(cfg=cfg, fingerprint="fp", runners=Runners(*(lambda c, q: {},) * 3))
    >>> [s.name for s in make_stages(ctx)]
    ['quantize']
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from llmpack.build.config import BuildConfig
from llmpack.build.records import (
    BUILT,
    PACK_RECORD,
    RECORD_SUFFIX,
    RECORD_VERSION,
    SKIPPED,
    UP_TO_DATE,
    WOULD_BUILD,
    StageResult,
    append_history,
    model_digest,
    quantize_state,
    read_history,
    record_state,
    write_json_atomic,
)
from llmpack._jsonfile import read_json_object
from llmpack.checkpoint.manifest import hash_file
from llmpack.constants import MANIFEST_FILE
from llmpack.errors import OutputExistsError
from llmpack.measure.gates import evaluate_recorded

__all__ = ["Stage", "Runners", "BuildContext", "QuantizeStage", "MeasureStage", "PackStage", "make_stages",
           "run_stage"]

Runner = Callable[[BuildConfig, bool], "dict[str, Any]"]
_PACK_FIELDS = ("manifest_digest", "reference", "tag", "oci")


@dataclasses.dataclass(frozen=True)
class Runners:
    """The functions that call the rest of llmpack (``llmpack.build._run_*``; tests pass fakes)."""

    quantize: Runner
    measure: Runner
    pack: Runner


@dataclasses.dataclass
class BuildContext:
    """What the stages of one build share: the config, the source fingerprint, the model's state, gates."""

    cfg: BuildConfig
    fingerprint: str
    runners: Runners
    model_changed: bool = False
    model_digest: str | None = None
    failed_gates: list[str] = dataclasses.field(default_factory=list)

    @property
    def llmpack_version(self) -> str:
        """llmpack's version (read at call time: tests change it)."""
        from llmpack._version import __version__

        return __version__


class Stage(Protocol):
    """One step of the build."""

    name: str
    output: Path

    def key(self) -> dict[str, Any]:
        """The inputs the output is made from (recorded beside it; a different key means rebuild)."""

    def blocked(self) -> str:
        """A reason not to run at all (``""``: go on)."""

    def up_to_date(self) -> tuple[bool, str]:
        """(output matches the inputs?, why not)."""

    def cached(self) -> dict[str, Any]:
        """Details of an up-to-date output, from its record."""

    def run(self, quiet: bool) -> dict[str, Any]:
        """Produce the output and its record; returns details."""

    def finish(self, result: StageResult) -> None:
        """Update the shared context (and the result's details) after the stage."""


class _Base:
    name = ""

    def __init__(self, ctx: BuildContext) -> None:
        self.ctx = ctx
        self.output = Path()

    def blocked(self) -> str:
        return ""

    def cached(self) -> dict[str, Any]:
        return {}

    def finish(self, result: StageResult) -> None:
        return None

    def key(self) -> dict[str, Any]:
        """The inputs recorded beside the output."""
        return {}

    def _unless_model_changes(self, check: Callable[[], "tuple[bool, str]"]) -> tuple[bool, str]:
        if self.ctx.model_changed:
            return False, "the model would change"
        return check()


class QuantizeStage(_Base):
    """The model dir: current when its ``llmpack.json`` records this source fingerprint, recipe and version."""

    name = "quantize"

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        self.output = ctx.cfg.quantize.out

    def key(self) -> dict[str, Any]:
        """What the quantizer records in the model's ``llmpack.json`` (its record) and build compares."""
        return {"source_fingerprint": self.ctx.fingerprint, "recipe": self.ctx.cfg.quantize.recipe.to_dict(),
                "llmpack_version": self.ctx.llmpack_version}

    def up_to_date(self) -> tuple[bool, str]:
        return quantize_state(self.ctx.cfg, self.ctx.fingerprint)

    def run(self, quiet: bool) -> dict[str, Any]:
        out = self.output
        if out.exists() and not (out / MANIFEST_FILE).is_file():
            raise OutputExistsError(f"{out} exists and is not an llmpack model dir: remove it or set "
                                    "[quantize] out to another folder")
        return self.ctx.runners.quantize(self.ctx.cfg, quiet)

    def finish(self, result: StageResult) -> None:
        self.ctx.model_changed = result.status == WOULD_BUILD
        self.ctx.model_digest = None if self.ctx.model_changed else model_digest(self.output)


class MeasureStage(_Base):
    """The report: current when its record names the same model digest and settings; gates re-checked always."""

    name = "measure"

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        m = ctx.cfg.measure
        if m is None:  # pragma: no cover - make_stages guards
            raise ValueError("[measure] is not configured")
        self.section = m
        self.output = m.report
        self.record = m.report.with_name(m.report.stem + RECORD_SUFFIX)
        self._metrics: Mapping[str, Any] = {}

    def key(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "llmpack_version": self.ctx.llmpack_version,
                "source_fingerprint": self.ctx.fingerprint, "model": self.ctx.model_digest,
                "settings": self.section.settings()}

    def up_to_date(self) -> tuple[bool, str]:
        return self._unless_model_changes(lambda: record_state(self.record, self.output, self.key()))

    def cached(self) -> dict[str, Any]:
        rec = read_json_object(self.record) or {}
        self._metrics = rec.get("metrics") or {}
        return {"summary": rec.get("summary", "")}

    def run(self, quiet: bool) -> dict[str, Any]:
        key = self.key()
        details = self.ctx.runners.measure(self.ctx.cfg, quiet)
        write_json_atomic(self.record, {"key": key, "output_sha256": hash_file(self.output), **details})
        self._metrics = details.get("metrics") or {}
        return {"summary": details.get("summary", "")}

    def finish(self, result: StageResult) -> None:
        failed = evaluate_recorded(self._metrics, self.section.gates) if result.status != WOULD_BUILD else []
        result.details["failed_gates"] = failed
        self.ctx.failed_gates = failed


class PackStage(_Base):
    """The OCI layout and Dockerfile: current when the record matches and ``oci/index.json`` names its manifest.

    Each new digest is appended to the per-tag history (``llmpack-history.json``) for rollback.
    """

    name = "pack"

    def __init__(self, ctx: BuildContext) -> None:
        super().__init__(ctx)
        p = ctx.cfg.pack
        if p is None:  # pragma: no cover - make_stages guards
            raise ValueError("[pack] is not configured")
        self.section = p
        self.output = p.out
        self.record = p.out / PACK_RECORD

    def blocked(self) -> str:
        return "a gate failed" if self.ctx.failed_gates else ""

    def key(self) -> dict[str, Any]:
        opts = self.section.options
        return {"version": RECORD_VERSION, "llmpack_version": self.ctx.llmpack_version, "model": self.ctx.model_digest,
                "options": {k: opts[k] for k in sorted(opts)}}

    def up_to_date(self) -> tuple[bool, str]:
        return self._unless_model_changes(self._state)

    def _state(self) -> tuple[bool, str]:
        ok, why = record_state(self.record, self.output, self.key())
        if not ok:
            return ok, why
        digest = (read_json_object(self.record) or {}).get("manifest_digest")
        index = read_json_object(self.output / "oci" / "index.json") or {}
        if not digest or digest not in {m.get("digest") for m in index.get("manifests", []) if isinstance(m, dict)}:
            return False, "oci/index.json no longer names the packed manifest"
        return True, ""

    def cached(self) -> dict[str, Any]:
        rec = read_json_object(self.record) or {}
        details = {k: rec.get(k) for k in _PACK_FIELDS}
        details["summary"] = f"{rec.get('reference')} {rec.get('manifest_digest')}"
        return details

    def run(self, quiet: bool) -> dict[str, Any]:
        key = self.key()
        details = self.ctx.runners.pack(self.ctx.cfg, quiet)
        write_json_atomic(self.record, {"key": key, **{k: details.get(k) for k in _PACK_FIELDS}})
        tag = str(details.get("tag") or self.section.options.get("tag") or "latest")
        before = read_history(self.output).get(tag, [])
        append_history(self.output, tag, {
            "digest": details.get("manifest_digest"), "reference": details.get("reference"),
            "model": self.ctx.model_digest,
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
        if before and before[-1].get("digest") != details.get("manifest_digest"):
            details["previous_digest"] = before[-1].get("digest")
        return details


def make_stages(ctx: BuildContext) -> list[Stage]:
    """The configured stages, in order: quantize, then measure and pack when their sections exist.

    Example:
        >>> make_stages  # doctest: +ELLIPSIS
        <function make_stages at ...>
    """
    stages: list[Stage] = [QuantizeStage(ctx)]
    if ctx.cfg.measure is not None:
        stages.append(MeasureStage(ctx))
    if ctx.cfg.pack is not None:
        stages.append(PackStage(ctx))
    return stages


def run_stage(stage: Stage, *, check: bool, force: bool, quiet: bool) -> StageResult:
    """Run one stage through the protocol: blocked → skipped; current → up to date; ``check`` → would build.

    Example:
        >>> run_stage  # doctest: +ELLIPSIS
        <function run_stage at ...>
    """
    t = time.perf_counter()
    reason = stage.blocked()
    if reason:
        return StageResult(stage.name, SKIPPED, reason, str(stage.output))
    ok, why = stage.up_to_date()
    if ok and not force:
        result = StageResult(stage.name, UP_TO_DATE, output=str(stage.output), details=stage.cached())
    elif check:
        result = StageResult(stage.name, WOULD_BUILD, why or "forced", str(stage.output))
    else:
        result = StageResult(stage.name, BUILT, why or "forced", str(stage.output), details=stage.run(quiet))
    stage.finish(result)
    result.seconds = time.perf_counter() - t
    return result
