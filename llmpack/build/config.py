"""``llmpack.toml``: the four sections, parsed and validated into frozen dataclasses.

Example:
    >>> cfg = load_config({"source": {"path": "org/model"}, "quantize": {"method": "int8"}}, base_dir="/repo")
    >>> sorted(MeasureSection.KEYS)[:3]
    ['batch_sizes', 'device', 'enabled']
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from llmpack.config import Recipe
from llmpack.errors import ConfigError, SourceNotFoundError
from llmpack.measure.gates import GATE_BY_OPTION

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["BuildConfig", "SourceSection", "QuantizeSection", "MeasureSection", "PackSection", "load_config",
           "DEFAULT_CONFIG", "GATE_KEYS"]

DEFAULT_CONFIG = "llmpack.toml"

# gate key in llmpack.toml [measure] -> gate name understood by llmpack.measure (from the one gate table)
GATE_KEYS: dict[str, str] = {option: g.name for option, g in GATE_BY_OPTION.items()}


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
            compression, source_date_epoch, platform, registry, server_image).
    """

    out: Path
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    KEYS = ("enabled", "out", "name", "tag", "base_image", "runtime", "artifact", "compression", "source_date_epoch",
            "allow_files", "platform", "registry", "server_image")


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
    for key in ("name", "tag", "base_image", "runtime", "artifact", "compression", "platform", "registry",
                "server_image"):
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
