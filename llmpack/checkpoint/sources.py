"""Sources a model can be quantized from: an HF directory, a ``.safetensors`` file, a ``.gguf`` file,
an in-memory ``transformers`` model, or a hub id. Pickled checkpoints are refused, never loaded.

Every source exposes the same small surface: tensor infos in read order, a one-at-a-time tensor
stream, ``config.json`` as a dict, module types, a way to write its small side files (tokenizer …),
and a fingerprint (sha256 over sorted ``(name, size, sha256)`` of its files, or over tensor bytes
for an in-memory model).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from llmpack.checkpoint.reader import Checkpoint, TensorInfo, dtype_size
from llmpack.checkpoint.validate import check_inside
from llmpack.checkpoint.manifest import hash_file
from llmpack.constants import AUX_FILE_PATTERNS, CONFIG_FILE, PICKLE_SUFFIXES
from llmpack.errors import (BadInputError, HubUnavailableError, SourceNotFoundError, UnsupportedFormatError)

__all__ = ["Source", "open_source", "HUB_ALLOW_PATTERNS", "dedupe_state_dict", "module_types_of"]

HUB_ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "tokenizer*", "*.txt", "*.model",
                      "*.jinja"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
_MEMORY = Path("<memory>")


@dataclasses.dataclass
class Source:
    """An opened source. Use :func:`open_source`.

    Attributes:
        kind: ``"dir"``, ``"file"``, ``"gguf"``, ``"module"`` or ``"hub"``.
        path: where it came from (a path, a hub id, or ``"<memory>"`` plus the class name).
        infos: tensor infos in read order (tied duplicates already removed).
        config: ``config.json`` as a dict (``None`` if absent).
        module_types: module name -> class name; empty when the architecture cannot be built.
        model: the in-memory model for ``module``/``gguf`` sources.
    """

    kind: str
    path: str
    infos: list[TensorInfo]
    config: dict[str, Any] | None
    module_types: dict[str, str]
    _get: Callable[[str], torch.Tensor]
    _files: dict[str, Path] = dataclasses.field(default_factory=dict)  # fingerprinted files: relname -> path
    aux_files: dict[str, Path] = dataclasses.field(default_factory=dict)  # copied next to the output
    write_extra: Callable[[Path], None] | None = None
    model: torch.nn.Module | None = None
    checkpoint: Checkpoint | None = None
    dropped_tied: dict[str, str] = dataclasses.field(default_factory=dict)
    _fingerprint: str | None = None
    _tensor_hash: Any = None
    _file_digests: dict[Path, str] = dataclasses.field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.infos)

    def stream(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) in :attr:`infos` order, one at a time, fingerprinting as it goes."""
        if self.checkpoint is not None:
            hasher = self.checkpoint.sequential_hasher()
            yield from self.checkpoint.stream([i.name for i in self.infos], hasher=hasher)
            self._file_digests = hasher.digests()
            return
        h = hashlib.sha256()
        for info in self.infos:
            t = self._get(info.name)
            h.update(f"{info.name}\0{t.dtype}\0{list(t.shape)}\0".encode())
            if t.numel():
                flat = t.detach().cpu().contiguous().reshape(-1)
                if flat.stride(-1) != 1:  # a one-element slice of a larger tensor keeps its old stride
                    flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
                h.update(memoryview(flat.view(torch.uint8).numpy()))
            yield info.name, t
        self._tensor_hash = h

    def fingerprint(self) -> str:
        """sha256 identifying the source (computed from the stream when it ran; otherwise by reading)."""
        if self._fingerprint is not None:
            return self._fingerprint
        if self._files:
            rows = []
            for rel in sorted(self._files):
                p = self._files[rel]
                digest = self._file_digests.get(p) or hash_file(p)
                rows.append([rel, p.stat().st_size, digest])
            self._fingerprint = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
        else:
            if self._tensor_hash is None:
                for _ in self.stream():
                    pass
            self._fingerprint = self._tensor_hash.hexdigest()
        return self._fingerprint

    def get(self, name: str) -> torch.Tensor:
        """Read one source tensor."""
        return self._get(name)

    def describe(self) -> dict[str, Any]:
        """``{"kind", "path", "fingerprint"}`` for ``llmpack.json``."""
        return {"kind": self.kind, "path": self.path, "fingerprint": self.fingerprint()}


def module_types_of(model: torch.nn.Module) -> dict[str, str]:
    """module name -> class name for every named module.

    Example:
        >>> module_types_of(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        {'': 'Sequential', '0': 'Linear'}
    """
    return {name: type(m).__name__ for name, m in model.named_modules()}


def dedupe_state_dict(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's state dict with tied/shared tensors stored once, as ``save_pretrained`` does.

    Returns (state dict, dropped name -> kept name). The name dropped is the tied target
    (``lm_head.weight``) when the model declares its tied keys, else the later name.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> sd, dropped = dedupe_state_dict(tiny_model("llama"))  # doctest: +SKIP
        >>> dropped  # doctest: +SKIP
        {'lm_head.weight': 'model.embed_tokens.weight'}
    """
    sd = model.state_dict()
    tied_targets = set((getattr(model, "all_tied_weights_keys", None) or {}).keys())
    groups: dict[Any, list[str]] = {}
    for name, t in sd.items():
        if t.device.type == "meta":
            raise BadInputError(f"tensor {name} is on the meta device (no data); materialize the model first")
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype,
               t.device.type) if t.numel() else ("empty", name)
        groups.setdefault(key, []).append(name)
    out: dict[str, torch.Tensor] = {}
    dropped: dict[str, str] = {}
    drop: set[str] = set()
    for names in groups.values():
        if len(names) == 1:
            continue
        keep = [n for n in names if n not in tied_targets] or names[:1]
        kept = keep[0]
        for n in names:
            if n != kept:
                drop.add(n)
                dropped[n] = kept
    for name, t in sd.items():
        if name not in drop:
            out[name] = t
    return out, dropped


def _module_infos(sd: dict[str, torch.Tensor]) -> list[TensorInfo]:
    return [TensorInfo(n, tuple(t.shape), t.dtype, t.numel() * dtype_size(t.dtype), _MEMORY) for n, t in sd.items()]


def _config_of_model(model: torch.nn.Module) -> dict[str, Any] | None:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict"):
        return None
    d = cfg.to_dict()
    d["architectures"] = [type(model).__name__]
    d.pop("quantization_config", None)
    d.pop("_name_or_path", None)
    return d


def _from_module(model: torch.nn.Module, kind: str = "module", path: str | None = None) -> Source:
    sd, dropped = dedupe_state_dict(model)
    sd = {k: v.detach() for k, v in sd.items()}

    def write_extra(out: Path) -> None:
        gen = getattr(model, "generation_config", None)
        can_gen = getattr(model, "can_generate", None)
        if gen is not None and callable(can_gen) and can_gen():
            gen.save_pretrained(out)

    return Source(kind=kind, path=path or f"<memory>:{type(model).__name__}", infos=_module_infos(sd),
                  config=_config_of_model(model), module_types=module_types_of(model), _get=sd.__getitem__,
                  write_extra=write_extra, model=model, dropped_tied=dropped)


def _meta_module_types(config: dict[str, Any] | None) -> dict[str, str]:
    if not config or not config.get("architectures"):
        return {}
    try:
        from llmpack.checkpoint.architecture import build_meta_model

        return module_types_of(build_meta_model(config))
    except Exception:  # noqa: BLE001 - module types are advisory for float methods
        return {}


def _from_dir(path: Path, kind: str = "dir", label: str | None = None) -> Source:
    ckpt = Checkpoint(path)
    files = {f.relative_to(ckpt.dir).as_posix(): f for f in ckpt.files}
    index = ckpt.dir / "model.safetensors.index.json"
    if index.is_file():
        files[index.name] = index
    aux: dict[str, Path] = {}
    for pat in AUX_FILE_PATTERNS:
        for p in sorted(ckpt.dir.glob(pat)):
            if p.is_file():
                check_inside(p, ckpt.dir, what="side file")
                aux[p.name] = p
    cfg_path = ckpt.dir / CONFIG_FILE
    if cfg_path.exists():
        check_inside(cfg_path, ckpt.dir, what="config file")
    if cfg_path.is_file():
        files[CONFIG_FILE] = cfg_path
    files.update(aux)
    config = ckpt.config
    return Source(kind=kind, path=label or str(path.resolve()), infos=ckpt.infos(), config=config,
                  module_types=_meta_module_types(config), _get=ckpt.__getitem__, _files=files, aux_files=aux,
                  checkpoint=ckpt)


def gguf_to_plain_model(path: Path) -> torch.nn.Module:
    """Dequantize a ``.gguf`` file through transformers' GGUF reader into a plain FP32 model.

    A GGUF-loaded model refuses ``save_pretrained`` ("quantized with gguf"), so the weights are moved
    into a model rebuilt from the same config without ``quantization_config``.

    Example:
        >>> m = gguf_to_plain_model(Path("SmolLM2-135M-Instruct.Q4_1.gguf"))  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM

    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - transformers raises many types here
        raise UnsupportedFormatError(f"transformers cannot read {path} ({type(e).__name__}: {e})") from e
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    cfg.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    del loaded
    return plain.eval()


def _from_gguf(path: Path) -> Source:
    try:
        import gguf  # noqa: F401
        from transformers import AutoTokenizer
    except ImportError as e:
        raise UnsupportedFormatError(f"reading {path} needs the gguf extra: pip install 'llmpack[gguf]' ({e})") from e
    plain = gguf_to_plain_model(path)
    src = _from_module(plain, kind="gguf", path=str(path.resolve()))
    src._files = {path.name: path}
    base_extra = src.write_extra

    def write_extra(out: Path) -> None:
        if base_extra is not None:
            base_extra(out)
        try:
            tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        except Exception:  # noqa: BLE001 - a GGUF without a usable tokenizer still converts
            return
        tok.save_pretrained(out)

    src.write_extra = write_extra
    return src


def _from_hub(repo_id: str) -> Source:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - a hard dependency
        raise HubUnavailableError(f"huggingface_hub is needed to download {repo_id}: {e}") from e
    try:
        local = snapshot_download(repo_id, allow_patterns=HUB_ALLOW_PATTERNS)
    except RepositoryNotFoundError:
        raise SourceNotFoundError(
            f"{repo_id} is neither a local path nor a model on the Hugging Face Hub: check the path or repo id"
        ) from None
    except Exception as e:  # noqa: BLE001 - connection, offline mode, HTTP errors: one clear line
        raise HubUnavailableError(
            f"{repo_id} is not a local path and the Hugging Face Hub cannot be reached ({type(e).__name__}); "
            "download the model first and pass its directory"
        ) from None
    return _from_dir(Path(local), kind="hub", label=repo_id)


def open_source(source: "str | os.PathLike[str] | torch.nn.Module | Source") -> Source:
    """Open any supported source.

    Raises:
        SourceNotFoundError: missing path. UnsupportedFormatError: pickled checkpoint.
        HubUnavailableError: a hub id while the hub is unreachable.

    Example:
        >>> src = open_source("path/to/hf-model")  # doctest: +SKIP
        >>> src.kind, len(src.infos)               # doctest: +SKIP
        ('dir', 272)
    """
    if isinstance(source, Source):
        return source
    if isinstance(source, torch.nn.Module):
        return _from_module(source)
    if not isinstance(source, (str, os.PathLike)):
        raise BadInputError(f"unsupported source {type(source).__name__}: pass a path, a hub id or a torch model")
    p = Path(source)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsupportedFormatError(
            f"{p} is a pickled checkpoint; llmpack never unpickles. Convert it in a trusted environment: "
            "AutoModel.from_pretrained(...).save_pretrained(new_dir, safe_serialization=True)"
        )
    if p.exists():
        if p.is_dir():
            return _from_dir(p)
        if p.suffix.lower() == ".gguf":
            return _from_gguf(p)
        if p.suffix.lower() == ".safetensors":
            src = _from_dir(p, kind="file")
            return src
        raise UnsupportedFormatError(f"{p}: unsupported file type; pass an HF directory, .safetensors or .gguf")
    s = str(source)
    if _HUB_ID.match(s) and not Path(s.split("/")[0]).exists():
        return _from_hub(s)
    raise SourceNotFoundError(f"source {p} does not exist: pass an HF model directory, a .gguf file or a hub id")


def copy_aux(src: Source, out: Path) -> None:
    """Copy the source's small side files (tokenizer, generation config …) into ``out``."""
    for rel, p in sorted(src.aux_files.items()):
        shutil.copyfile(p, out / rel)
    if src.write_extra is not None:
        src.write_extra(out)
