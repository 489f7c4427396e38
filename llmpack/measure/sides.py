"""The two sides ``llmpack.measure`` compares: where each came from, its task, its tokenizer, and what it
needs in memory (a directory's tensors at its run dtype, read from the safetensors headers)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from llmpack._jsonfile import read_json
from llmpack.checkpoint.manifest import hash_file
from llmpack.constants import CONFIG_FILE, MANIFEST_FILE
from llmpack.errors import BadInputError, LlmpackError, SourceNotFoundError

__all__ = ["detect_task", "load_model"]

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
_ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "mpnet", "electra", "deberta", "deberta-v2",
                  "albert", "camembert", "modernbert", "nomic_bert", "e5", "bge"}


def _read_config(path: Path) -> dict[str, Any]:
    if path.is_file() and path.suffix == ".gguf":
        return {}
    return read_json(path / CONFIG_FILE, error=BadInputError, fix="fix or regenerate config.json",
                     missing_fix="pass a Hugging Face model directory (config.json + safetensors)")


def detect_task(config: Mapping[str, Any] | Any, model: torch.nn.Module | None = None) -> str:
    """``"causal-lm"`` or ``"encoder"`` from a config (dict or ``PretrainedConfig``) and/or module class.

    Raises:
        BadInputError: neither a causal LM nor an encoder.

    Example:
        >>> detect_task({"architectures": ["LlamaForCausalLM"]})
        'causal-lm'
        >>> detect_task({"model_type": "bert", "architectures": ["BertModel"]})
        'encoder'
    """
    if not isinstance(config, Mapping):
        config = config.to_dict() if hasattr(config, "to_dict") else {}
    archs = list(config.get("architectures") or [])
    if model is not None:
        archs.insert(0, type(model).__name__)
    if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
        return "causal-lm"
    mtype = str(config.get("model_type", "")).lower()
    if mtype in _ENCODER_TYPES or any(a.endswith(("Model", "ForMaskedLM", "ForSentenceEmbedding")) for a in archs):
        return "encoder"
    raise BadInputError(f"cannot tell the task of model type {mtype or '?'} ({', '.join(archs) or 'no architectures'}): "
                        "measure supports causal LMs (*ForCausalLM) and encoders (BERT-like)")


def _tokenizer_from(path: Path) -> Any | None:
    from transformers import AutoTokenizer

    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                                              "tokenizer.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise BadInputError(f"cannot load the tokenizer of {path}: {e}; check its tokenizer files") from e


def _tokenizer_fingerprint(tok: Any) -> str:
    h = hashlib.sha256()
    vocab = tok.get_vocab()
    for k in sorted(vocab):
        h.update(f"{k}\x00{vocab[k]}\x01".encode("utf-8", "surrogatepass"))
    for attr in ("bos_token_id", "eos_token_id", "unk_token_id"):
        h.update(f"{attr}={getattr(tok, attr, None)}".encode())
    return h.hexdigest()


def _file_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    return hash_file(path)


class _Side:
    """One side of the comparison: where it came from and the loaded module."""

    def __init__(self, src: Any, role: str) -> None:
        self.role = role
        self.module: torch.nn.Module | None = None
        self.path: Path | None = None
        self.config: dict[str, Any] = {}
        if isinstance(src, torch.nn.Module):
            self.module = src
            cfg = getattr(src, "config", None)
            self.config = cfg.to_dict() if hasattr(cfg, "to_dict") else {}
            self.kind = "module"
            self.name = f"{type(src).__name__} (in memory)"
        elif isinstance(src, (str, os.PathLike)):
            p = Path(src).expanduser()
            if not p.exists():
                raise SourceNotFoundError(f"{role} model {p} does not exist: pass a model directory or an nn.Module")
            self.path = p
            self.kind = "gguf" if p.is_file() and p.suffix == ".gguf" else "dir"
            if self.kind == "dir" and not p.is_dir():
                raise BadInputError(f"{role} model {p} is a file: pass a model directory (or a .gguf file)")
            self.config = _read_config(p)
            self.name = p.name if p.name not in ("model", "") else f"{p.parent.name}/{p.name}"
        else:
            raise BadInputError(f"{role} must be a model directory or an nn.Module, got {type(src).__name__}")

    def task(self) -> str:
        if self.kind == "gguf":
            return "causal-lm"
        return detect_task(self.config, self.module)

    def tokenizer_dir(self) -> Path | None:
        if self.path is not None:
            return self.path
        name = str(self.config.get("_name_or_path") or self.config.get("name_or_path") or "")
        return Path(name) if name and Path(name).is_dir() else None

    def method(self) -> str | None:
        if self.path is None or not (self.path / MANIFEST_FILE).is_file():
            return None
        recipe: Any = None
        try:
            from llmpack.checkpoint.manifest import read_manifest

            recipe = getattr(read_manifest(self.path), "recipe", None)
        except LlmpackError:
            return None
        if recipe is None:
            return None
        method = recipe.get("method") if isinstance(recipe, Mapping) else getattr(recipe, "method", None)
        method = getattr(method, "value", method)
        return str(method) if method else None


def _resolve_tokenizer(a: _Side, b: _Side, given: Any, notes: list[str]) -> Any:
    if given is not None:
        if isinstance(given, (str, os.PathLike)):
            tok = _tokenizer_from(Path(given))
            if tok is None:
                raise BadInputError(f"no tokenizer files in {given}: pass a directory with tokenizer.json")
            return tok
        return given
    da, db = a.tokenizer_dir(), b.tokenizer_dir()
    ta = _tokenizer_from(da) if da is not None else None
    tb = _tokenizer_from(db) if db is not None else None
    if ta is None and tb is None:
        raise BadInputError("no tokenizer found for either model: pass tokenizer= (a tokenizer or a directory "
                            "holding tokenizer.json)")
    if ta is None or tb is None:
        who, other = ("baseline", "candidate") if ta is None else ("candidate", "baseline")
        notes.append(f"the {who} has no tokenizer; the {other}'s was used for both")
        return ta or tb
    if da is not None and db is not None:
        ha, hb = _file_sha256(da / "tokenizer.json"), _file_sha256(db / "tokenizer.json")
        if ha is not None and ha == hb:
            return ta
    if _tokenizer_fingerprint(ta) != _tokenizer_fingerprint(tb):
        raise BadInputError(f"baseline ({da}) and candidate ({db}) have different tokenizers (vocabulary or special "
                            "tokens differ): compare models that share one tokenizer, or pass tokenizer= to force one")
    return ta


def _has_dtype(model: torch.nn.Module, dtype: torch.dtype) -> bool:
    return any(p.dtype == dtype for p in model.parameters())


def _side_dtype(side: _Side) -> torch.dtype | None:
    """The dtype ``llmpack.load`` runs a directory in (config.json's), as the streamed accuracy must."""
    from llmpack.checkpoint.architecture import _config_dtype

    return _config_dtype(side.config)


def _side_fp16(side: _Side) -> bool:
    if side.module is not None:
        return _has_dtype(side.module, torch.float16)
    return _side_dtype(side) == torch.float16


def _header_bytes(path: Path) -> tuple[dict[str, int], int, int, int]:
    """Stored tensor bytes by dtype, from the safetensors headers (for a model that is not loaded)."""
    from llmpack.checkpoint.reader import Checkpoint

    by: dict[str, int] = {}
    n = 0
    for info in Checkpoint(path).infos():
        key = str(info.dtype).replace("torch.", "")
        by[key] = by.get(key, 0) + info.nbytes
        n += info.numel
    return by, sum(by.values()), 0, n


def _resident_bytes(a: _Side, b: _Side, dev: torch.device) -> tuple[int, int]:
    """(bytes both models need resident, bytes available) — float weights at their run dtype, int8 packed twice."""
    need = 0
    for side in (a, b):
        if side.path is None or side.kind != "dir":
            continue
        from llmpack.checkpoint.reader import Checkpoint

        dt = _side_dtype(side)
        size = dt.itemsize if dt is not None else None
        for info in Checkpoint(side.path).infos():
            if info.dtype.is_floating_point and size is not None:
                need += info.numel * size
            else:
                need += 2 * info.nbytes  # int8 weights: the file's plus the kernel's packed copy
    from llmpack.stream import available_bytes

    return int(need * 1.1), available_bytes(dev)


# --- loading a side's model ------------------------------------------------------------------------


def load_model(path: str | os.PathLike[str], task: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a model directory (or a ``.gguf`` file) for measuring. The ONE place measure loads models.

    Uses :func:`llmpack.load` (which also runs llmpack's int8 layers); falls back to transformers'
    ``from_pretrained`` (stored dtype kept) where ``llmpack.runtime.load`` is not installed, and for ``.gguf``.

    Example:
        >>> m = load_model("models/smollm2", "causal-lm")  # doctest: +SKIP
    """
    p = Path(path)
    dev = torch.device(device)
    if p.is_dir():
        try:
            from llmpack.runtime.load import load as _llmpack_load
        except ImportError:
            _llmpack_load = None
        if _llmpack_load is not None:
            return _llmpack_load(p, device=str(dev)).eval()
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModel
    kw: dict[str, Any] = {"gguf_file": p.name} if p.is_file() else {}
    where = p.parent if p.is_file() else p
    try:
        model = cls.from_pretrained(where, dtype="auto", **kw)
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        model = cls.from_pretrained(where, torch_dtype="auto", **kw)
    return model.to(dev).eval()


def _dominant_dtype(by_dtype: Mapping[str, int]) -> str:
    return max(by_dtype.items(), key=lambda kv: kv[1])[0] if by_dtype else ""


def _max_positions(cfg: Mapping[str, Any]) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len"):
        v = cfg.get(key)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def _module_device(m: torch.nn.Module) -> torch.device | None:
    for p in m.parameters():
        return p.device
    return None


# ---- the API -----------------------------------------------------------------------------------
