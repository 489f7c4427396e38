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
``check=True`` computes the same without writing anything (drift detection).

Example:
    >>> result = build("llmpack.toml")          # doctest: +SKIP
    >>> [(s.name, s.status) for s in result.stages]  # doctest: +SKIP
    [('quantize', 'up to date'), ('measure', 'up to date'), ('pack', 'up to date')]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from llmpack.checkpoint.manifest import hash_file, read_json_object
from llmpack.config import Recipe
from llmpack.constants import MANIFEST_FILE
from llmpack.errors import ConfigError, GateFailedError, LlmpackError, OutputExistsError, SourceNotFoundError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "build",
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
]

DEFAULT_CONFIG = "llmpack.toml"
RECORD_SUFFIX = ".build.json"   # report.json -> report.build.json; <pack out>/llmpack-pack.build.json
PACK_RECORD = "llmpack-pack" + RECORD_SUFFIX
RECORD_VERSION = 1

UP_TO_DATE = "up to date"
BUILT = "built"
WOULD_BUILD = "would build"
SKIPPED = "skipped"

# gate key in llmpack.toml [measure] -> gate name understood by llmpack.measure
GATE_KEYS: dict[str, str] = {
    "max_ppl_increase": "max_ppl_increase_pct",
    "min_top1": "min_top1",
    "min_speedup": "min_speedup",
    "max_size_ratio": "max_size_ratio",
    "max_kl": "max_kl",
    "min_cosine": "min_cosine",
}


# --- configuration ---------------------------------------------------------------------------------


def _where(cfg_path: Path | None, section: str) -> str:
    return f"{cfg_path.name if cfg_path else 'build config'}: [{section}]"


def _check_keys(table: Mapping[str, Any], allowed: Sequence[str], cfg_path: Path | None, section: str) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{_where(cfg_path, section)} unknown key {unknown[0]!r}: valid keys are {', '.join(sorted(allowed))}"
        )


def _typed(table: Mapping[str, Any], key: str, types_: tuple[type, ...], cfg_path: Path | None, section: str,
           what: str, default: Any = None) -> Any:
    if key not in table:
        return default
    v = table[key]
    if isinstance(v, bool) and bool not in types_:
        raise ConfigError(f"{_where(cfg_path, section)} {key} = {v!r}: expected {what}")
    if not isinstance(v, types_):
        raise ConfigError(f"{_where(cfg_path, section)} {key} = {v!r}: expected {what}")
    return v


def _path(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)


@dataclasses.dataclass(frozen=True)
class SourceSection:
    """``[source]``: the model to start from.

    Args:
        path: a local HF directory or ``.gguf`` file (resolved against the config file's folder), or a
            hub id (``org/name``) when no such local path exists.
        is_local: whether ``path`` names a local file or folder.
    """

    path: str
    is_local: bool = True

    KEYS = ("path",)


@dataclasses.dataclass(frozen=True)
class QuantizeSection:
    """``[quantize]``: the recipe and where the model dir goes.

    Args:
        out: output model directory.
        recipe: everything that decides the bytes of the output (a :class:`~llmpack.config.Recipe`).
    """

    out: Path
    recipe: Recipe

    KEYS = ("method", "out", "max_shard_size", "ignore", "float_dtype", "quantize_embeddings", "fp16_overflow",
            "budget", "max_ppl_increase", "max_kl", "smooth")


@dataclasses.dataclass(frozen=True)
class MeasureSection:
    """``[measure]``: how to compare the quantized model against the source, and the gates.

    Args:
        report: where the report JSON goes (a Markdown copy is written beside it as ``.md``).
        text: a text file for perplexity (``None``: llmpack's default text).
        device: ``"cpu"`` or ``"cuda"`` (``None``: cuda when available).
        quick: a short latency budget (well under a minute on SmolLM2 / 2 CPU cores).
        batch_sizes: batch sizes to time.
        gates: gate name -> threshold, as understood by :func:`llmpack.measure`.
    """

    report: Path
    text: Path | None = None
    device: str | None = None
    quick: bool = True
    batch_sizes: tuple[int, ...] = (1,)
    gates: Mapping[str, float] = dataclasses.field(default_factory=dict)

    KEYS = ("enabled", "report", "text", "device", "quick", "batch_sizes", *GATE_KEYS)

    def settings(self) -> dict[str, Any]:
        """What decides the report's numbers (not the gates: those are re-evaluated on every run)."""
        text_sha = None
        if self.text is not None:
            try:
                text_sha = hashlib.sha256(self.text.read_bytes()).hexdigest()
            except OSError as e:
                raise ConfigError(f"[measure] text = {str(self.text)!r} cannot be read ({e}): fix the path") from e
        return {"text_sha256": text_sha, "device": self.device, "quick": self.quick,
                "batch_sizes": list(self.batch_sizes)}


@dataclasses.dataclass(frozen=True)
class PackSection:
    """``[pack]``: the OCI image layout and Dockerfile stub.

    Args:
        out: build context folder (``Dockerfile``, ``model/``, ``oci/``).
        options: keyword arguments for :func:`llmpack.pack` (name, tag, base_image, runtime, artifact,
            compression, source_date_epoch).
    """

    out: Path
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    KEYS = ("enabled", "out", "name", "tag", "base_image", "runtime", "artifact", "compression", "source_date_epoch",
            "allow_files", "platform")


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """A parsed, validated ``llmpack.toml``.

    Example:
        >>> cfg = load_config({"source": {"path": "org/model"}, "quantize": {"method": "bf16"}}, base_dir="/repo")
        >>> cfg.quantize.recipe.method.value, str(cfg.quantize.out)
        ('bf16', '/repo/build/model')
    """

    source: SourceSection
    quantize: QuantizeSection
    measure: MeasureSection | None
    pack: PackSection | None
    path: Path | None = None
    base_dir: Path = Path(".")


def _parse_source(t: Mapping[str, Any], base: Path, cfg: Path | None) -> SourceSection:
    _check_keys(t, SourceSection.KEYS, cfg, "source")
    raw = _typed(t, "path", (str,), cfg, "source", "a path or hub id string")
    if not raw:
        raise ConfigError(f"{_where(cfg, 'source')} path is missing: set path = \"models/my-model\" (an HF dir, "
                          ".gguf file or hub id)")
    p = _path(base, raw)
    if p.exists():
        return SourceSection(path=str(p), is_local=True)
    looks_like_hub_id = raw.count("/") == 1 and not raw.startswith((".", "/", "~")) and not raw.endswith(".gguf")
    if looks_like_hub_id:
        return SourceSection(path=raw, is_local=False)
    raise SourceNotFoundError(f"{_where(cfg, 'source')} path {raw!r} does not exist (looked at {p}): "
                              "fix the path, relative to the config file")


def _parse_quantize(t: Mapping[str, Any], base: Path, cfg: Path | None) -> QuantizeSection:
    s = "quantize"
    _check_keys(t, QuantizeSection.KEYS, cfg, s)
    method = _typed(t, "method", (str,), cfg, s, "a method name such as \"int8\"")
    if method is None:
        raise ConfigError(f"{_where(cfg, s)} method is missing: set method = \"int8\" (or fp16, bf16, int8-weight-only)")
    out = _path(base, _typed(t, "out", (str,), cfg, s, "a folder path", "build/model"))
    kw: dict[str, Any] = {"method": method}
    if "max_shard_size" in t:
        kw["max_shard_size"] = _typed(t, "max_shard_size", (str, int), cfg, s, "a size such as \"2GB\"")
    ignore = _typed(t, "ignore", (list, str), cfg, s, "a list of patterns", [])
    if isinstance(ignore, str):
        ignore = [ignore]
    if not all(isinstance(x, str) for x in ignore):
        raise ConfigError(f"{_where(cfg, s)} ignore = {ignore!r}: expected a list of strings")
    kw["ignore"] = tuple(ignore)
    for key, types_, what in (("float_dtype", (str,), "fp16, bf16 or fp32"),
                              ("quantize_embeddings", (bool,), "true or false"),
                              ("fp16_overflow", (str,), "\"error\" or \"keep\""),
                              ("max_kl", (int, float), "a number (nats)"),
                              ("smooth", (int, float), "a number in [0, 1]")):
        if key in t:
            kw[key] = _typed(t, key, types_, cfg, s, what)
    if "budget" in t and "max_ppl_increase" in t:
        raise ConfigError(f"{_where(cfg, s)} budget and max_ppl_increase are the same setting: keep one")
    for key in ("budget", "max_ppl_increase"):
        if key in t:
            v = t[key]
            if isinstance(v, str) and v.strip().endswith("%"):
                try:
                    v = float(v.strip()[:-1])
                except ValueError:
                    v = None
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{_where(cfg, s)} {key} = {t[key]!r}: expected a percentage such as 2 or \"2%\"")
            kw["max_ppl_increase"] = float(v)
    try:
        recipe = Recipe(**kw)
    except ConfigError as e:
        raise ConfigError(f"{_where(cfg, s)} {e}") from None
    return QuantizeSection(out=out, recipe=recipe)


def _parse_measure(t: Mapping[str, Any], base: Path, cfg: Path | None, model_out: Path) -> MeasureSection | None:
    s = "measure"
    _check_keys(t, MeasureSection.KEYS, cfg, s)
    if not _typed(t, "enabled", (bool,), cfg, s, "true or false", True):
        return None
    report = _path(base, _typed(t, "report", (str,), cfg, s, "a file path",
                                str(model_out.parent / "report.json")))
    text_raw = _typed(t, "text", (str,), cfg, s, "a text file path")
    text = _path(base, text_raw) if text_raw else None
    if text is not None and not text.is_file():
        raise ConfigError(f"{_where(cfg, s)} text = {text_raw!r} is not a file (looked at {text}): fix the path "
                          "or remove the key to use the default text")
    device = _typed(t, "device", (str,), cfg, s, "\"cpu\" or \"cuda\"")
    if device is not None and device.split(":")[0] not in ("cpu", "cuda"):
        raise ConfigError(f"{_where(cfg, s)} device = {device!r}: expected \"cpu\" or \"cuda\"")
    quick = _typed(t, "quick", (bool,), cfg, s, "true or false", True)
    bs = _typed(t, "batch_sizes", (list, int), cfg, s, "a list of positive integers", [1])
    bs = [bs] if isinstance(bs, int) else bs
    if not bs or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in bs):
        raise ConfigError(f"{_where(cfg, s)} batch_sizes = {bs!r}: expected a list of positive integers")
    gates = {}
    for key, gate in GATE_KEYS.items():
        if key in t:
            v = t[key]
            if isinstance(v, str) and v.strip().endswith("%") and key == "max_ppl_increase":
                v = v.strip()[:-1]
                try:
                    v = float(v)
                except ValueError:
                    pass
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"{_where(cfg, s)} {key} = {t[key]!r}: expected a number")
            gates[gate] = float(v)
    return MeasureSection(report=report, text=text, device=device, quick=quick, batch_sizes=tuple(bs), gates=gates)


def _parse_pack(t: Mapping[str, Any], base: Path, cfg: Path | None, model_out: Path) -> PackSection | None:
    s = "pack"
    _check_keys(t, PackSection.KEYS, cfg, s)
    if not _typed(t, "enabled", (bool,), cfg, s, "true or false", True):
        return None
    out = _path(base, _typed(t, "out", (str,), cfg, s, "a folder path", str(model_out.parent / "image")))
    opts: dict[str, Any] = {}
    for key in ("name", "tag", "base_image", "runtime", "artifact", "compression", "platform"):
        if key in t:
            opts[key] = _typed(t, key, (str,), cfg, s, "a string")
    if "allow_files" in t:
        allow = _typed(t, "allow_files", (list,), cfg, s, "a list of paths or globs")
        if not all(isinstance(x, str) for x in allow):
            raise ConfigError(f"{_where(cfg, s)} allow_files = {allow!r}: expected a list of strings")
        opts["allow_files"] = list(allow)
    if "source_date_epoch" in t:
        opts["source_date_epoch"] = _typed(t, "source_date_epoch", (int,), cfg, s, "an integer (seconds)")
    return PackSection(out=out, options=opts)


def load_config(config: "str | os.PathLike[str] | Mapping[str, Any]" = DEFAULT_CONFIG, *,
                base_dir: "str | os.PathLike[str] | None" = None) -> BuildConfig:
    """Read and validate an ``llmpack.toml`` (or the same data as a dict).

    Relative paths in the file resolve against the file's folder (``base_dir`` for a dict, default the
    current directory). Unknown sections and keys are refused, naming them.

    Args:
        config: path of the TOML file, or its parsed contents.
        base_dir: folder that relative paths resolve against (default: the file's folder).

    Returns:
        The validated :class:`BuildConfig`.

    Raises:
        ConfigError: a missing or invalid key, naming the section and key.
        SourceNotFoundError: ``[source] path`` does not exist and is not a hub id.

    Example:
        >>> cfg = load_config({"source": {"path": "org/model"}, "quantize": {"method": "int8", "budget": "2%"},
        ...                    "pack": {"name": "m"}}, base_dir="/repo")
        >>> cfg.source.is_local, cfg.quantize.recipe.max_ppl_increase, str(cfg.pack.out)
        (False, 2.0, '/repo/build/image')
    """
    cfg_path: Path | None = None
    if isinstance(config, Mapping):
        data: Mapping[str, Any] = config
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        cfg_path = Path(config)
        try:
            raw = cfg_path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{cfg_path} not found: create it (see `llmpack build --help`) or pass -c FILE") from None
        except OSError as e:
            raise ConfigError(f"cannot read {cfg_path}: {e}") from e
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{cfg_path} is not valid TOML: {e}") from None
        base = Path(base_dir) if base_dir is not None else cfg_path.resolve().parent
    base = base.resolve()
    sections = ("source", "quantize", "measure", "pack")
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(f"{cfg_path.name if cfg_path else 'build config'}: unknown section [{unknown[0]}]: "
                          f"valid sections are {', '.join(f'[{x}]' for x in sections)}")
    for name in sections:
        if name in data and not isinstance(data[name], Mapping):
            raise ConfigError(f"{cfg_path.name if cfg_path else 'build config'}: {name} must be a [{name}] table")
    for name in ("source", "quantize"):
        if name not in data:
            raise ConfigError(f"{cfg_path.name if cfg_path else 'build config'}: section [{name}] is missing")
    source = _parse_source(data["source"], base, cfg_path)
    quantize = _parse_quantize(data["quantize"], base, cfg_path)
    measure = _parse_measure(data["measure"], base, cfg_path, quantize.out) if "measure" in data else None
    pack = _parse_pack(data["pack"], base, cfg_path, quantize.out) if "pack" in data else None
    if source.is_local and Path(source.path).resolve() == quantize.out.resolve():
        raise ConfigError(f"{_where(cfg_path, 'quantize')} out is the source itself: choose another folder")
    return BuildConfig(source=source, quantize=quantize, measure=measure, pack=pack, path=cfg_path, base_dir=base)


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
        from llmpack import __version__

        return {"config": self.config, "llmpack_version": __version__, "check": self.check,
                "changed": self.changed, "passed": self.passed, "failed_gates": list(self.failed_gates),
                "seconds": round(self.seconds, 3), "stages": [s.to_dict() for s in self.stages]}

    def human(self) -> str:
        """A few lines for the terminal, one per stage."""
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


def _source_fingerprint(source: SourceSection) -> str:
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


def _write_record(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys[:3]) + (" …" if len(keys) > 3 else "")


def _quantize_state(cfg: BuildConfig, fingerprint: str) -> tuple[bool, str]:
    """(up to date?, reason) of the quantized model dir against the source fingerprint and recipe."""
    from llmpack import __version__
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


def _model_digest(model_dir: Path) -> str | None:
    try:
        return hash_file(model_dir / MANIFEST_FILE)
    except OSError:
        return None


def _record_state(record_path: Path, output: Path, key: Mapping[str, Any]) -> tuple[bool, str]:
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


# --- stages ------------------------------------------------------------------------------------------
# The _run_* functions are the only places build calls the rest of llmpack; tests replace them with fakes.


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
    from llmpack.measure.report import GATES

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
    metrics = {}
    for name, (_, metric, op) in GATES.items():
        value = metric(report)
        metrics[name] = {"value": None if value is None else float(value), "op": op}
    return {"summary": report.summary(), "metrics": metrics}


def _evaluate_gates(metrics: Mapping[str, Mapping[str, Any]], gates: Mapping[str, float]) -> list[str]:
    """Failed-gate messages, from the metrics recorded with a report (``{gate: {"value", "op"}}``).

    A gate whose metric does not exist for the model (``value`` None, e.g. ``min_top1`` on an encoder)
    is not applicable and passes; a NaN value fails.

    Example:
        >>> _evaluate_gates({"min_top1": {"value": 0.8, "op": ">="}}, {"min_top1": 0.9})
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
        ok = value <= thr if rec.get("op") == "<=" else value >= thr
        if not ok or value != value:
            failed.append(f"{name}: {value:.4g} {rec.get('op')} {thr:g} FAILED")
    return failed


def _run_pack(cfg: BuildConfig, quiet: bool) -> dict[str, Any]:
    from llmpack.pack.api import pack

    p = cfg.pack
    if p is None:  # pragma: no cover - guarded by the caller
        raise ConfigError("[pack] is not configured")
    res = pack(cfg.quantize.out, p.out, quiet=quiet, **dict(p.options))
    return {"manifest_digest": res.manifest_digest, "reference": res.reference, "tag": res.tag,
            "oci": str(Path(res.paths.get("oci", p.out / "oci"))), "bytes_written": res.bytes_written,
            "summary": f"{res.reference} {res.manifest_digest}"}


def _pack_state(rec_path: Path, out: Path, key: Mapping[str, Any]) -> tuple[bool, str]:
    """Up to date when the record matches and ``oci/index.json`` still names the recorded manifest."""
    ok, why = _record_state(rec_path, out, key)
    if not ok:
        return ok, why
    digest = (read_json_object(rec_path) or {}).get("manifest_digest")
    index = read_json_object(out / "oci" / "index.json") or {}
    if not digest or digest not in {m.get("digest") for m in index.get("manifests", []) if isinstance(m, dict)}:
        return False, "oci/index.json no longer names the packed manifest"
    return True, ""


# --- the build --------------------------------------------------------------------------------------


def build(config: "str | os.PathLike[str] | Mapping[str, Any] | BuildConfig" = DEFAULT_CONFIG, *,
          check: bool = False, force: bool = False, quiet: bool = True,
          raise_on_gate: bool = True, device: str | None = None) -> BuildResult:
    """Run the pipeline described by an ``llmpack.toml``: quantize, measure (gates), pack — skipping what is up to date.

    A stage is up to date when its output records the same inputs: for ``quantize`` the model dir's
    ``llmpack.json`` (source fingerprint, recipe, llmpack version, file sizes); for ``measure`` and
    ``pack`` a ``*.build.json`` record beside the output (the quantized model's ``llmpack.json`` digest,
    the settings, llmpack version). Gates are re-checked on every run, also against a cached report.

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
        measure   up to date  /repo/build/report.json  int8: 0.41x size, 2.7x faster (b1), +1.8% ppl
        pack      up to date  /repo/build/image
        build: ok in 0.41 s
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
    from llmpack import __version__

    stages: list[StageResult] = []
    result = BuildResult(config=str(cfg.path) if cfg.path else None, check=check, stages=stages)

    # quantize
    t = time.perf_counter()
    fingerprint = _source_fingerprint(cfg.source)
    ok, why = _quantize_state(cfg, fingerprint)
    qout = cfg.quantize.out
    if ok and not force:
        stages.append(StageResult("quantize", UP_TO_DATE, output=str(qout)))
    elif check:
        stages.append(StageResult("quantize", WOULD_BUILD, why or "forced", str(qout)))
    else:
        if qout.exists() and not (qout / MANIFEST_FILE).is_file():
            raise OutputExistsError(f"{qout} exists and is not an llmpack model dir: remove it or set "
                                    "[quantize] out to another folder")
        details = _run_quantize(cfg, quiet)
        stages.append(StageResult("quantize", BUILT, why or "forced", str(qout), details=details))
    stages[-1].seconds = time.perf_counter() - t
    model_changed = stages[-1].status == WOULD_BUILD
    model_digest = None if model_changed else _model_digest(qout)

    # measure
    if cfg.measure is not None:
        t = time.perf_counter()
        m = cfg.measure
        rec_path = m.report.with_name(m.report.stem + RECORD_SUFFIX)
        key = {"version": RECORD_VERSION, "llmpack_version": __version__, "source_fingerprint": fingerprint,
               "model": model_digest, "settings": m.settings()}
        ok, why = (False, "the model would change") if model_changed else _record_state(rec_path, m.report, key)
        failed: list[str] = []
        if ok and not force:
            rec = read_json_object(rec_path) or {}
            failed = _evaluate_gates(rec.get("metrics") or {}, m.gates)
            st = StageResult("measure", UP_TO_DATE, output=str(m.report), details={"summary": rec.get("summary", "")})
        elif check:
            st = StageResult("measure", WOULD_BUILD, why or "forced", str(m.report))
        else:
            details = _run_measure(cfg, quiet)
            _write_record(rec_path, {"key": key, "output_sha256": hash_file(m.report), **details})
            failed = _evaluate_gates(details.get("metrics") or {}, m.gates)
            st = StageResult("measure", BUILT, why or "forced", str(m.report),
                             details={"summary": details.get("summary", "")})
        st.details["failed_gates"] = failed
        st.seconds = time.perf_counter() - t
        stages.append(st)
        result.failed_gates = failed

    # pack
    if cfg.pack is not None:
        t = time.perf_counter()
        p = cfg.pack
        rec_path = p.out / PACK_RECORD
        key = {"version": RECORD_VERSION, "llmpack_version": __version__, "model": model_digest,
               "options": {k: p.options[k] for k in sorted(p.options)}}
        if result.failed_gates:
            stages.append(StageResult("pack", SKIPPED, "a gate failed", str(p.out)))
        else:
            ok, why = (False, "the model would change") if model_changed else _pack_state(rec_path, p.out, key)
            if ok and not force:
                rec = read_json_object(rec_path) or {}
                details = {k: rec.get(k) for k in ("manifest_digest", "reference", "tag", "oci")}
                details["summary"] = f"{rec.get('reference')} {rec.get('manifest_digest')}"
                stages.append(StageResult("pack", UP_TO_DATE, output=str(p.out), details=details))
            elif check:
                stages.append(StageResult("pack", WOULD_BUILD, why or "forced", str(p.out)))
            else:
                details = _run_pack(cfg, quiet)
                _write_record(rec_path, {"key": key, **{k: details.get(k) for k in
                                                        ("manifest_digest", "reference", "tag", "oci")}})
                stages.append(StageResult("pack", BUILT, why or "forced", str(p.out), details=details))
            stages[-1].seconds = time.perf_counter() - t

    result.seconds = time.perf_counter() - t0
    if result.failed_gates and raise_on_gate:
        raise GateFailedError("gate failed: " + "; ".join(result.failed_gates))
    return result


from llmpack._callable import make_callable  # noqa: E402

make_callable(__name__, f"{__name__}:build")
