"""Streaming safetensors shard writer.

The shard plan comes first, from sizes alone (``huggingface_hub``'s splitter run over integers), so
every header is known before any tensor data is read. Tensors are then appended one at a time to
their shard; each shard's sha256 is computed while it is written. Peak memory is one tensor.

File format written (byte-compatible with ``safetensors``): 8-byte little-endian header length,
compact JSON header with ``__metadata__`` first and tensors in data order, padded with spaces so the
data starts 8-byte aligned, then the tensor bytes in the order they are written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from huggingface_hub import split_state_dict_into_shards_factory

from llmpack.checkpoint.reader import DTYPE_TO_ST, dtype_size
from llmpack.constants import SAFETENSORS_INDEX_FILE, SAFETENSORS_METADATA, SAFETENSORS_SHARD_PATTERN
from llmpack.errors import BadInputError, OutputWriteError

__all__ = ["OutSpec", "ShardPlan", "plan_shards", "build_header", "ShardWriter", "FileRecord"]


@dataclasses.dataclass(frozen=True)
class OutSpec:
    """One output tensor as planned: name, shape, dtype (size follows).

    Example:
        >>> OutSpec("w", (2, 3), torch.float16).nbytes
        12
    """

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        n = dtype_size(self.dtype)
        for s in self.shape:
            n *= int(s)
        return n


@dataclasses.dataclass(frozen=True)
class FileRecord:
    """A written file: relative name, sha256 hex digest, size in bytes."""

    name: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """Which tensor goes to which file. ``filename_to_tensors`` keeps arrival order within each file."""

    filename_to_tensors: dict[str, list[str]]
    tensor_to_filename: dict[str, str]
    total_size: int

    @property
    def is_sharded(self) -> bool:
        return len(self.filename_to_tensors) > 1


def plan_shards(sizes: Mapping[str, int], max_shard_size: "int | str") -> ShardPlan:
    """Split tensors (name -> byte size, in write order) into shards with ``huggingface_hub``'s splitter.

    Pure: works on integers, never on tensors.

    Example:
        >>> p = plan_shards({"a": 6, "b": 6, "c": 2}, 10)
        >>> p.filename_to_tensors
        {'model-00001-of-00002.safetensors': ['a'], 'model-00002-of-00002.safetensors': ['b', 'c']}
    """
    from llmpack.config import parse_size

    limit = parse_size(max_shard_size)
    if not sizes:
        return ShardPlan({}, {}, 0)
    split = split_state_dict_into_shards_factory(
        dict(sizes), get_storage_size=lambda n: int(n), filename_pattern=SAFETENSORS_SHARD_PATTERN,
        max_shard_size=limit,
    )
    order = {name: i for i, name in enumerate(sizes)}
    f2t = {f: sorted(names, key=order.__getitem__) for f, names in sorted(split.filename_to_tensors.items())}
    return ShardPlan(f2t, dict(split.tensor_to_filename), int(split.metadata["total_size"]))


def build_header(specs: Sequence[OutSpec], metadata: Mapping[str, str] | None = None) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The safetensors header for ``specs`` (data laid out in the given order).

    Returns (header bytes including the 8-byte length prefix, name -> (begin, end) data offsets).

    Example:
        >>> hdr, offs = build_header([OutSpec("b", (2,), torch.float32), OutSpec("a", (1,), torch.float16)])
        >>> offs
        {'b': (0, 8), 'a': (8, 10)}
        >>> len(hdr) % 8
        0
    """
    offsets: dict[str, tuple[int, int]] = {}
    pos = 0
    entries: dict[str, Any] = {}
    for s in specs:
        if s.dtype not in DTYPE_TO_ST:
            raise BadInputError(f"tensor {s.name}: dtype {s.dtype} cannot be stored in safetensors")
        offsets[s.name] = (pos, pos + s.nbytes)
        entries[s.name] = {"dtype": DTYPE_TO_ST[s.dtype], "shape": [int(x) for x in s.shape],
                           "data_offsets": [pos, pos + s.nbytes]}
        pos += s.nbytes
    header: dict[str, Any] = {"__metadata__": dict(sorted((metadata or SAFETENSORS_METADATA).items()))}
    header.update(entries)  # data order, as safetensors itself writes it
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return len(raw).to_bytes(8, "little") + raw, offsets


class ShardWriter:
    """Write planned tensors into shards in ``directory``, one tensor at a time.

    Args:
        directory: an existing (temp) output directory.
        specs: every output tensor, in the order :meth:`write` will receive them.
        max_shard_size: shard size limit (bytes or ``"2GB"``).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> w = ShardWriter(d, [OutSpec("w", (2,), torch.float32)], "1GB")
        >>> w.write("w", torch.ones(2))
        >>> [r.name for r in w.close()]
        ['model.safetensors']
    """

    def __init__(self, directory: "str | os.PathLike[str]", specs: Iterable[OutSpec], max_shard_size: "int | str") -> None:
        self.dir = Path(directory)
        self.specs: dict[str, OutSpec] = {}
        for s in specs:
            if s.name in self.specs:
                raise BadInputError(f"tensor {s.name} is planned twice; names must be unique")
            self.specs[s.name] = s
        self.plan = plan_shards({n: s.nbytes for n, s in self.specs.items()}, max_shard_size)
        self._headers: dict[str, bytes] = {}
        self._remaining: dict[str, list[str]] = {}
        for fname, names in self.plan.filename_to_tensors.items():
            hdr, _ = build_header([self.specs[n] for n in names])
            self._headers[fname] = hdr
            self._remaining[fname] = list(names)
        self._open: dict[str, Any] = {}
        self._hash: dict[str, Any] = {}
        self._size: dict[str, int] = {}
        self.bytes_written = 0
        self._records: list[FileRecord] = []

    def _file(self, fname: str) -> Any:
        f = self._open.get(fname)
        if f is None:
            try:
                f = open(self.dir / fname, "xb")
            except OSError as e:
                raise OutputWriteError(f"cannot create {self.dir / fname}: {e}; free space or choose another --out") from e
            self._open[fname] = f
            self._hash[fname] = hashlib.sha256()
            self._size[fname] = 0
            self._write(fname, self._headers[fname])
        return f

    def _write(self, fname: str, data: "bytes | memoryview") -> None:
        try:
            self._open[fname].write(data)
        except OSError as e:
            raise OutputWriteError(f"writing {self.dir / fname} failed: {e}; free space or choose another --out") from e
        self._hash[fname].update(data)
        self._size[fname] += len(data)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append ``tensor`` (must match its planned shape and dtype, in planned order)."""
        spec = self.specs.get(name)
        if spec is None:
            raise BadInputError(f"tensor {name} was not planned; cannot write it")
        if tuple(tensor.shape) != tuple(spec.shape) or tensor.dtype != spec.dtype:
            raise BadInputError(
                f"tensor {name}: got {tuple(tensor.shape)} {tensor.dtype}, planned {tuple(spec.shape)} {spec.dtype}"
            )
        fname = self.plan.tensor_to_filename[name]
        rem = self._remaining[fname]
        if not rem or rem[0] != name:
            raise BadInputError(f"tensor {name} written out of planned order (expected {rem[0] if rem else 'none'})")
        self._file(fname)
        if spec.nbytes:
            t = tensor.detach()
            if t.device.type != "cpu":
                t = t.cpu()
            t = t.contiguous().reshape(-1)
            if t.stride(-1) != 1:  # a one-element slice of a larger tensor keeps its old stride
                t = torch.empty(t.shape, dtype=t.dtype).copy_(t)
            data = memoryview(t.view(torch.uint8).numpy())
            self._write(fname, data)
            del data, t
        self.bytes_written += spec.nbytes
        rem.pop(0)
        if not rem:
            self._finish(fname)

    def _finish(self, fname: str) -> None:
        f = self._open.pop(fname)
        try:
            f.flush()
            os.fsync(f.fileno())
            f.close()
        except OSError as e:
            raise OutputWriteError(f"writing {self.dir / fname} failed: {e}; free space or choose another --out") from e
        self._records.append(FileRecord(fname, self._hash[fname].hexdigest(), self._size[fname]))

    def close(self) -> list[FileRecord]:
        """Check that every planned tensor was written; write the index when sharded; return file records."""
        missing = [n for names in self._remaining.values() for n in names]
        if missing:
            self.abort()
            raise BadInputError(f"{len(missing)} planned tensors were never written (first: {missing[0]})")
        for fname in [f for f in self.plan.filename_to_tensors if f not in {r.name for r in self._records}]:
            self._file(fname)  # a shard with only empty tensors still gets its header
            self._finish(fname)
        if self.plan.is_sharded:
            index = {"metadata": {"total_size": self.plan.total_size},
                     "weight_map": dict(sorted(self.plan.tensor_to_filename.items()))}
            data = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode("utf-8")
            p = self.dir / SAFETENSORS_INDEX_FILE
            try:
                p.write_bytes(data)
            except OSError as e:
                raise OutputWriteError(f"cannot write {p}: {e}; free space or choose another --out") from e
            self._records.append(FileRecord(SAFETENSORS_INDEX_FILE, hashlib.sha256(data).hexdigest(), len(data)))
        return sorted(self._records, key=lambda r: r.name)

    def abort(self) -> None:
        """Close open files (the caller removes the directory)."""
        for f in self._open.values():
            try:
                f.close()
            except OSError:
                pass
        self._open.clear()
