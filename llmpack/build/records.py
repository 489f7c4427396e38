"""Build records: stage results, the ``*.build.json`` records beside outputs, fingerprints, and the digest history.

A stage's output carries a small JSON record of the inputs it was made from; a later build compares
keys instead of re-running. ``llmpack build`` also keeps a per-tag history of the image digests it
packed (``<pack out>/llmpack-history.json``), newest last, for rollback by version.

Example:
    >>> StageResult("pack", BUILT, output="build/image").to_dict()["status"]
    'built'
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from llmpack._atomic import atomic_write
from llmpack._jsonfile import read_json_object
from llmpack.checkpoint.manifest import hash_file
from llmpack.config import Recipe
from llmpack.constants import MANIFEST_FILE
from llmpack.errors import LlmpackError

if TYPE_CHECKING:
    from llmpack.build.config import BuildConfig, SourceSection

__all__ = ["StageResult", "BuildResult", "RECORD_SUFFIX", "PACK_RECORD", "RECORD_VERSION", "HISTORY_FILE",
           "UP_TO_DATE", "BUILT", "WOULD_BUILD", "SKIPPED", "write_json_atomic", "record_state", "quantize_state",
           "model_digest", "source_fingerprint", "append_history", "read_history"]

RECORD_SUFFIX = ".build.json"   # report.json -> report.build.json; <pack out>/llmpack-pack.build.json
PACK_RECORD = "llmpack-pack" + RECORD_SUFFIX
HISTORY_FILE = "llmpack-history.json"
RECORD_VERSION = 1
HISTORY_VERSION = 1

UP_TO_DATE = "up to date"
BUILT = "built"
WOULD_BUILD = "would build"
SKIPPED = "skipped"


# --- results ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class StageResult:
    """What one stage did (or, with ``check=True``, would do).

    Attributes:
        name: ``quantize``, ``measure`` or ``pack``.
        status: ``"up to date"``, ``"built"``, ``"would build"`` or ``"skipped"``.
        reason: why the stage ran or would run (``"source changed"``, ``"no output yet"`` …).
        output: the path the stage writes.
        seconds: wall time of the stage.
        details: stage-specific facts (manifest digest, summary line, failed gates …).
    """

    name: str
    status: str
    reason: str = ""
    output: str = ""
    seconds: float = 0.0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


@dataclasses.dataclass
class BuildResult:
    """The outcome of :func:`build`: one :class:`StageResult` per configured stage.

    Attributes:
        config: the config file (or ``None`` for a dict).
        check: whether this was a ``check=True`` dry run.
        stages: the stages, in order.
        failed_gates: names and messages of gates that failed (empty when all passed or none ran).
        seconds: total wall time.
    """

    config: str | None
    check: bool
    stages: list[StageResult]
    failed_gates: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        """True when a stage was built (or, with ``check=True``, would be)."""
        return any(s.status in (BUILT, WOULD_BUILD) for s in self.stages)

    @property
    def passed(self) -> bool:
        """True when no gate failed."""
        return not self.failed_gates

    def to_dict(self) -> dict[str, Any]:
        """The ``--format json`` summary."""
        from llmpack._version import __version__

        return {"config": self.config, "llmpack_version": __version__, "check": self.check,
                "changed": self.changed, "passed": self.passed, "failed_gates": list(self.failed_gates),
                "seconds": round(self.seconds, 3), "stages": [s.to_dict() for s in self.stages]}

    def human(self) -> str:
        """A few lines for the terminal, one per stage: name, status, output, the stage's summary line.

        Example:
            >>> res = BuildResult(config="llmpack.toml", check=False, seconds=0.41, stages=[
            ...     StageResult("quantize", UP_TO_DATE, output="/repo/build/model"),
            ...     StageResult("measure", UP_TO_DATE, output="/repo/build/report.json",
            ...                 details={"summary": "int8: 0.41× size, 2.7× faster (b1), +1.8% ppl"}),
            ...     StageResult("pack", BUILT, "no output yet", "/repo/build/image", seconds=1.25,
            ...                 details={"summary": "smollm2:int8 sha256:4f1c…"})])
            >>> print(res.human())
            quantize  up to date  /repo/build/model
            measure   up to date  /repo/build/report.json  int8: 0.41× size, 2.7× faster (b1), +1.8% ppl
            pack      built (no output yet)  /repo/build/image  smollm2:int8 sha256:4f1c…  [1.2 s]
            build: ok in 0.41 s
        """
        lines = []
        for s in self.stages:
            extra = f" ({s.reason})" if s.reason else ""
            out = f"  {s.output}" if s.output else ""
            summary = s.details.get("summary")
            tail = f"  {summary}" if summary else ""
            time_s = f"  [{s.seconds:.1f} s]" if s.status == BUILT else ""
            lines.append(f"{s.name:<9} {s.status}{extra}{out}{tail}{time_s}")
        if self.failed_gates:
            lines.append("gates failed: " + "; ".join(self.failed_gates))
        verdict = ("drift: the build would change" if self.changed else "up to date") if self.check else (
            "FAILED" if self.failed_gates else "ok")
        lines.append(f"build: {verdict} in {self.seconds:.2f} s")
        return "\n".join(lines)


# --- fingerprints and records -----------------------------------------------------------------------


def _fingerprint_rows(rows: list[tuple[str, Path]]) -> str:
    out = [[rel, p.stat().st_size, hash_file(p)] for rel, p in sorted(rows)]
    return hashlib.sha256(json.dumps(out, separators=(",", ":")).encode()).hexdigest()


def _dir_fingerprint_files(d: Path) -> list[tuple[str, Path]] | None:
    """The files the quantizer fingerprints for an HF directory source, or ``None`` when unsure."""
    from llmpack.constants import AUX_FILE_PATTERNS, CONFIG_FILE, SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE

    index = d / SAFETENSORS_INDEX_FILE
    files: dict[str, Path] = {}
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        for rel in shards:
            if not (d / rel).is_file():
                return None
            files[Path(rel).as_posix()] = d / rel
        files[index.name] = index
    elif (d / SAFETENSORS_SINGLE_FILE).is_file():
        files[SAFETENSORS_SINGLE_FILE] = d / SAFETENSORS_SINGLE_FILE
    else:
        found = sorted(d.glob("*.safetensors"))
        if not found:
            return None
        files.update({p.name: p for p in found})
    if (d / CONFIG_FILE).is_file():
        files[CONFIG_FILE] = d / CONFIG_FILE
    for pat in AUX_FILE_PATTERNS:
        for p in sorted(d.glob(pat)):
            if p.is_file():
                files[p.name] = p
    return list(files.items())


def source_fingerprint(source: SourceSection) -> str:
    """The same fingerprint the quantizer records in ``llmpack.json``'s ``source.fingerprint``.

    For an HF directory or a ``.gguf`` file it is computed here, from file digests, without importing
    torch (a no-change ``llmpack build`` must answer in about a second); ``tests/test_build.py`` checks
    it equals :meth:`llmpack.checkpoint.sources.Source.fingerprint`. Other sources ask the quantizer's
    own source reader.
    """
    p = Path(source.path)
    if source.is_local and p.is_dir():
        rows = _dir_fingerprint_files(p)
        if rows is not None:
            return _fingerprint_rows(rows)
    elif source.is_local and p.is_file() and p.suffix.lower() == ".gguf":
        return _fingerprint_rows([(p.name, p)])
    from llmpack.checkpoint.sources import open_source

    return str(open_source(source.path).fingerprint())


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3]) + (" …" if len(keys) > 3 else "")


def quantize_state(cfg: BuildConfig, fingerprint: str) -> tuple[bool, str]:
    """(up to date?, reason) of the quantized model dir against the source fingerprint and recipe."""
    from llmpack._version import __version__
    from llmpack.checkpoint.manifest import read_manifest

    out = cfg.quantize.out
    if not out.exists():
        return False, "no output yet"
    try:
        m = read_manifest(out)
    except LlmpackError:
        return False, f"{MANIFEST_FILE} missing or unreadable"
    if m.llmpack_version != __version__:
        return False, f"llmpack version changed {m.llmpack_version} -> {__version__}"
    if str(m.source.get("fingerprint")) != fingerprint:
        return False, "source changed"
    want = cfg.quantize.recipe.to_dict()
    try:
        have = Recipe.from_dict(m.recipe).to_dict()
    except LlmpackError:
        have = dict(m.recipe)
    if have != want:
        return False, f"recipe changed: {_diff(have, want)}"
    for rel, entry in m.files.items():
        try:
            size = (out / rel).stat().st_size
        except OSError:
            return False, f"{rel} is missing"
        if size != int(entry["size"]):
            return False, f"{rel} changed size"
    return True, ""


def model_digest(model_dir: Path) -> str | None:
    try:
        return hash_file(model_dir / MANIFEST_FILE)
    except OSError:
        return None


def record_state(record_path: Path, output: Path, key: Mapping[str, Any]) -> tuple[bool, str]:
    """(up to date?, reason) of an output file/folder against its ``*.build.json`` record."""
    rec = read_json_object(record_path)
    if rec is None or not output.exists():
        return False, "no output yet"
    if rec.get("key") != dict(key):
        old = rec.get("key") or {}
        return False, "inputs changed: " + _diff(old, dict(key))
    digest = rec.get("output_sha256")
    if output.is_file() and digest != hash_file(output):
        return False, f"{output.name} was modified"
    return True, ""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically: a temp file beside it, fsync, rename.

    A crash leaves either the old file or the new one, never half of one.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.json"; write_json_atomic(p, {"a": 1})
        >>> json.loads(p.read_text())
        {'a': 1}
    """
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", fsync=True,
                 fix="check the folder and its permissions")


def read_history(path: "str | os.PathLike[str]") -> dict[str, list[dict[str, Any]]]:
    """The digest history in ``path`` (a pack output folder or the history file): ``{tag: [entries, oldest first]}``.

    Each entry has ``digest``, ``reference``, ``model`` (the model's ``llmpack.json`` digest) and ``time``
    (UTC, RFC 3339). A missing or unreadable file is an empty history.

    Example:
        >>> read_history("/nonexistent")
        {}
    """
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / HISTORY_FILE
    data = read_json_object(p) or {}
    tags = data.get("tags") if data.get("version") == HISTORY_VERSION else None
    if not isinstance(tags, dict):
        return {}
    return {str(t): [e for e in v if isinstance(e, dict)] for t, v in tags.items() if isinstance(v, list)}


def append_history(out: Path, tag: str, entry: Mapping[str, Any], *, keep: int = 50) -> dict[str, list[dict[str, Any]]]:
    """Record that ``tag`` now points at ``entry["digest"]`` (atomically; the same digest twice in a row is one entry).

    Args:
        out: the pack output folder (the history file lives in it).
        tag: the image tag.
        entry: ``digest``, ``reference``, ``model``, ``time`` …
        keep: the newest entries kept per tag.

    Returns:
        The whole history after the change.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = append_history(d, "v1", {"digest": "sha256:aa"})
        >>> [e["digest"] for e in append_history(d, "v1", {"digest": "sha256:bb"})["v1"]]
        ['sha256:aa', 'sha256:bb']
    """
    hist = read_history(out)
    entries = hist.setdefault(tag, [])
    if not entries or entries[-1].get("digest") != entry.get("digest"):
        entries.append(dict(entry))
    hist[tag] = entries[-keep:]
    write_json_atomic(Path(out) / HISTORY_FILE, {"version": HISTORY_VERSION, "tags": hist})
    return hist
