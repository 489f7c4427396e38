"""Lazy, read-only access to the tensors of a safetensors checkpoint (one file or sharded with an index).

Headers are parsed up front (a few KB per shard); tensor bytes are read only when a tensor is asked
for, one tensor at a time, into fresh memory (``pread``), so a caller that drops each tensor after use
keeps its memory bounded by the largest tensor, whatever the checkpoint size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch

from llmpack._dtypes import ST_TORCH_NAMES, torch_dtype
from llmpack._jsonfile import read_json
from llmpack.constants import CONFIG_FILE, PICKLE_SUFFIXES, SAFETENSORS_INDEX_FILE, SAFETENSORS_SINGLE_FILE
from llmpack.errors import BadInputError, IntegrityError, SourceNotFoundError, UnsafePathError, UnsupportedFormatError
from llmpack.checkpoint.validate import check_inside, validate_index, validate_safetensors

__all__ = [
    "TensorInfo",
    "Checkpoint",
    "read_header",
    "DTYPE_FROM_ST",
    "DTYPE_TO_ST",
    "dtype_size",
    "find_weight_files",
    "HASH_CHUNK",
]

HASH_CHUNK = 8 * 1024 * 1024
MAX_HEADER = 100 * 1024 * 1024

DTYPE_FROM_ST: dict[str, torch.dtype] = {
    st: dt for st, dt in ((st, torch_dtype(name)) for st, name in ST_TORCH_NAMES.items()) if dt is not None
}
DTYPE_TO_ST: dict[torch.dtype, str] = {v: k for k, v in DTYPE_FROM_ST.items()}


def dtype_size(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``.

    Example:
        >>> dtype_size(torch.bfloat16)
        2
    """
    return torch.empty((), dtype=dtype).element_size()


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, known without reading its data.

    Attributes:
        name: tensor name. shape / dtype / nbytes: as stored. file: the shard path.
        offset: absolute byte offset of the data in ``file``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    nbytes: int
    file: Path
    offset: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_header(path: "str | os.PathLike[str]") -> tuple[dict[str, Any], int]:
    """Parse a safetensors header. Returns (header dict, data start offset).

    Raises:
        IntegrityError: the file is truncated or its header is not valid JSON.

    Example:
        >>> read_header("model.safetensors")  # doctest: +SKIP
        ({'__metadata__': {'format': 'pt'}, 'w': {...}}, 128)
    """
    path = Path(path)
    validate_safetensors(path)  # strict checks first (llmpack.checkpoint.validate)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise IntegrityError(f"{path}: truncated safetensors file (no header length); re-create it")
            n = int.from_bytes(raw, "little")
            size = os.fstat(f.fileno()).st_size
            if n > MAX_HEADER or 8 + n > size:
                raise IntegrityError(f"{path}: corrupt safetensors header length {n}; re-create the file")
            hdr = f.read(n)
    except OSError as e:
        raise SourceNotFoundError(f"cannot read {path}: {e}") from e
    try:
        header = json.loads(hdr.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(f"{path}: corrupt safetensors header ({e}); re-create the file") from e
    if not isinstance(header, dict):
        raise IntegrityError(f"{path}: safetensors header is not a JSON object; re-create the file")
    data_start = 8 + n
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            b, e = meta["data_offsets"]
            if meta["dtype"] not in DTYPE_FROM_ST:
                raise UnsupportedFormatError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        except (KeyError, TypeError, ValueError) as err:
            raise IntegrityError(f"{path}: corrupt header entry for tensor {name}; re-create the file") from err
        end = max(end, int(e))
        if int(b) > int(e):
            raise IntegrityError(f"{path}: tensor {name} has invalid data offsets; re-create the file")
    if data_start + end > size:
        raise IntegrityError(f"{path}: truncated: header promises {data_start + end} bytes, file has {size}")
    return header, data_start


def find_weight_files(directory: Path) -> list[Path]:
    """The safetensors files of an HF model directory, from the index when there is one.

    Raises:
        UnsupportedFormatError: only pickled ``.bin``/``.pt`` weights are present.
        SourceNotFoundError: no weights at all.
    """
    index = directory / SAFETENSORS_INDEX_FILE
    if index.is_file():
        validate_index(index, directory)  # strict checks first (llmpack.checkpoint.validate)
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
            files = sorted(set(data["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise IntegrityError(f"{index}: corrupt index ({e}); re-create it") from e
        out = []
        for rel in files:
            p = check_inside(directory / rel, directory, what="shard", named_in=index)  # HF cache blobs allowed
            if not p.is_file():
                raise IntegrityError(f"{index}: shard {rel} is missing from {directory}")
            out.append(directory / rel)
        return out
    single = directory / SAFETENSORS_SINGLE_FILE
    if single.is_file():
        return [single]
    found = sorted(directory.glob("*.safetensors"))
    if found:
        return found
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UnsupportedFormatError(
            f"{directory} holds only pickled weights ({', '.join(pickled[:3])}); llmpack never unpickles. Convert: "
            "AutoModel.from_pretrained(dir).save_pretrained(new_dir, safe_serialization=True) in a trusted environment"
        )
    raise SourceNotFoundError(f"no safetensors weights in {directory}: expected {SAFETENSORS_SINGLE_FILE} or an index")


class Checkpoint(Mapping[str, torch.Tensor]):
    """Read-only mapping name -> tensor over a safetensors model directory (or one ``.safetensors`` file).

    Reads a tensor's bytes only in ``__getitem__``; ``info(name)`` and iteration touch headers only.

    Args:
        path: an HF model directory or a single ``.safetensors`` file.

    Example:
        >>> ckpt = Checkpoint("model-dir")             # doctest: +SKIP
        >>> ckpt.info("lm_head.weight").shape          # doctest: +SKIP
        (49152, 576)
        >>> w = ckpt["lm_head.weight"]                 # doctest: +SKIP
    """

    def __init__(self, path: "str | os.PathLike[str]") -> None:
        p = Path(path)
        if not p.exists():
            raise SourceNotFoundError(f"{p} does not exist: pass an HF model directory or a .safetensors file")
        if p.is_file():
            if p.suffix != ".safetensors":
                raise UnsupportedFormatError(f"{p} is not a .safetensors file")
            self.dir = p.parent
            files = [p]
        else:
            self.dir = p
            files = find_weight_files(p)
            for f in files:
                check_inside(f, p, what="weight file")
        self.files: list[Path] = files
        self._infos: dict[str, TensorInfo] = {}
        self.metadata: dict[str, dict[str, str]] = {}
        for f in files:
            header, start = read_header(f)
            self.metadata[f.name] = header.get("__metadata__") or {}
            entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
            entries.sort(key=lambda kv: kv[1]["data_offsets"][0])
            for name, meta in entries:
                if name in self._infos:
                    raise IntegrityError(f"tensor {name} appears in both {self._infos[name].file.name} and {f.name}")
                dtype = DTYPE_FROM_ST[meta["dtype"]]
                shape = tuple(int(s) for s in meta["shape"])
                b, e = (int(x) for x in meta["data_offsets"])
                info = TensorInfo(name, shape, dtype, e - b, f, start + b)
                if info.numel * dtype_size(dtype) != info.nbytes:
                    raise IntegrityError(f"{f}: tensor {name} shape {list(shape)} does not match its {e - b} bytes")
                self._infos[name] = info
        self._config: dict[str, Any] | None | bool = False
        self.reads = 0

    # --- Mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        info = self._infos[name]
        return self._read(info)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.dir)!r}, {len(self)} tensors, {len(self.files)} file(s))"

    # --- extras -------------------------------------------------------------------------------
    def info(self, name: str) -> TensorInfo:
        """Shape, dtype, size and file of ``name`` without reading its data."""
        return self._infos[name]

    def infos(self) -> list[TensorInfo]:
        """All tensor infos, in file order then data-offset order (the order a sequential read follows)."""
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(self._infos.values(), key=lambda i: (order[i.file], i.offset))

    @property
    def config(self) -> dict[str, Any] | None:
        """``config.json`` of the directory as a dict, or ``None`` when absent."""
        if self._config is False:
            p = self.dir / CONFIG_FILE
            if p.is_file():
                self._config = read_json(p, error=BadInputError, fix="fix or re-create config.json")
            else:
                self._config = None
        return self._config  # type: ignore[return-value]

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def _read(self, info: TensorInfo, hasher: "_SequentialHasher | None" = None) -> torch.Tensor:
        self.reads += 1
        out = torch.empty(info.numel * dtype_size(info.dtype) if info.numel else 0, dtype=torch.uint8)
        buf = memoryview(out.numpy()) if info.nbytes else memoryview(b"")
        with open(info.file, "rb", buffering=0) as f:
            if hasher is not None:
                hasher.advance(f, info.file, info.offset)
            f.seek(info.offset)
            got = 0
            while got < info.nbytes:
                n = f.readinto(buf[got:])
                if not n:
                    raise IntegrityError(f"{info.file}: truncated while reading tensor {info.name}; re-create the file")
                got += n
            if hasher is not None:
                hasher.consumed(info.file, info.offset, buf[: info.nbytes])
        return out.view(info.dtype).reshape(info.shape)

    def stream(self, names: Iterable[str] | None = None, *, hasher: "_SequentialHasher | None" = None
               ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) one at a time (default: sequential file order), optionally hashing files as read.

        Example:
            >>> for name, t in Checkpoint("model-dir").stream():  # doctest: +SKIP
            ...     print(name, t.shape)
        """
        for name in names if names is not None else [i.name for i in self.infos()]:
            yield name, self._read(self._infos[name], hasher)

    def sequential_hasher(self) -> "_SequentialHasher":
        """A hasher computing each shard's sha256 during a sequential :meth:`stream` (one pass over the data)."""
        return _SequentialHasher(self.files)


class _SequentialHasher:
    """sha256 of whole files, fed by reads that mostly go forward; falls back to re-reading otherwise."""

    def __init__(self, files: list[Path]) -> None:
        self._h = {f: hashlib.sha256() for f in files}
        self._pos = {f: 0 for f in files}
        self._broken: set[Path] = set()

    def advance(self, f: Any, path: Path, offset: int) -> None:
        """Hash bytes between the last position and ``offset`` (headers, gaps)."""
        pos = self._pos[path]
        if path in self._broken or offset < pos:
            self._broken.add(path)
            return
        if offset > pos:
            f.seek(pos)
            remaining = offset - pos
            while remaining:
                chunk = f.read(min(HASH_CHUNK, remaining))
                if not chunk:
                    break
                self._h[path].update(chunk)
                remaining -= len(chunk)
            self._pos[path] = offset

    def consumed(self, path: Path, offset: int, data: memoryview) -> None:
        if path in self._broken or offset != self._pos[path]:
            self._broken.add(path)
            return
        self._h[path].update(data)
        self._pos[path] = offset + len(data)

    def digests(self) -> dict[Path, str]:
        """Finish: hash any tail (or whole file when reads were out of order); return path -> hex digest."""
        out = {}
        for path, h in self._h.items():
            if path in self._broken:
                h = hashlib.sha256()
                start = 0
            else:
                start = self._pos[path]
            with open(path, "rb") as f:
                f.seek(start)
                while chunk := f.read(HASH_CHUNK):
                    h.update(chunk)
            out[path] = h.hexdigest()
        return out
