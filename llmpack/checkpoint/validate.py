"""Strict validation of untrusted checkpoint files, run before any tensor byte is read.

A pre-build step runs unattended on files nobody checked, so every structural promise a file makes is
checked against the file itself before llmpack trusts it:

* **safetensors header** (:func:`validate_safetensors`): the 8-byte header length fits the file and a sane
  maximum; the header is UTF-8 JSON holding one object, without duplicate keys (``json.loads`` would
  silently keep the last one) or ``NaN``/``Infinity``; ``__metadata__`` maps strings to strings; every
  tensor has a known dtype, a shape of non-negative integers and ``data_offsets`` whose span is exactly
  ``prod(shape) * itemsize``; the spans, sorted, tile the data section with no overlap, gap or overrun,
  and end exactly at the end of the file (the rule the ``safetensors`` library applies itself).
* **index** (:func:`validate_index`): ``model.safetensors.index.json`` is a JSON object whose
  ``weight_map`` maps tensor names to relative ``.safetensors`` paths that stay inside the model
  directory (no ``..``, no absolute path, no symlink leading out) and exist as regular files.
* **side files** (:func:`check_inside`): a tokenizer or other file copied from a model directory must not
  be a symlink leading out of it (it would copy, say, ``/etc/shadow`` into the output).

Every failure raises an :class:`~llmpack.errors.LlmpackError` subclass whose one-line message names the
file (and the tensor) and says how to fix it: structural corruption is an
:class:`~llmpack.errors.IntegrityError` (CLI exit 3); unsupported content or unsafe paths are
:class:`~llmpack.errors.BadInputError` subclasses (exit 2).

Example:
    >>> import tempfile, pathlib, json
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.safetensors"
    >>> hdr = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    >>> _ = p.write_bytes(len(hdr).to_bytes(8, "little") + hdr + bytes(8))
    >>> header, start = validate_safetensors(p)
    >>> sorted(header), start == 8 + len(hdr)
    (['w'], True)
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from pathlib import Path
from typing import Any, Mapping

from llmpack._dtypes import ST_SIZES
from llmpack.errors import IntegrityError, UnsafePathError, UnsupportedFormatError

__all__ = [
    "MAX_HEADER_BYTES",
    "DTYPE_SIZES",
    "CorruptFileError",
    "validate_safetensors",
    "validate_index",
    "check_inside",
    "strict_json_loads",
]

#: Largest safetensors header accepted (the ``safetensors`` library uses the same 100 MB limit).
MAX_HEADER_BYTES = 100_000_000

#: safetensors dtype name -> bytes per element, for every dtype llmpack reads.
DTYPE_SIZES: dict[str, int] = dict(ST_SIZES)

_FIX = "the file is corrupt or truncated; re-download the source or re-quantize"
_INDEX_FIX = "re-download the model or re-create the index"


class CorruptFileError(IntegrityError):
    """A checkpoint file's structure contradicts itself (truncated, bad header, bad offsets) — exit 3."""


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def strict_json_loads(text: "str | bytes") -> Any:
    """``json.loads`` that refuses duplicate object keys and ``NaN``/``Infinity``.

    Raises:
        ValueError: invalid JSON; a duplicate key raises a ``ValueError`` whose ``key`` attribute names it.

    Example:
        >>> strict_json_loads('{"a": 1}')
        {'a': 1}
        >>> strict_json_loads('{"a": 1, "a": 2}')  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        llmpack.checkpoint.validate._DuplicateKey: a
    """
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def validate_safetensors(path: "str | os.PathLike[str]", *, dtype_sizes: Mapping[str, int] | None = None,
                         max_header: int = MAX_HEADER_BYTES) -> tuple[dict[str, Any], int]:
    """Check a ``.safetensors`` file's header against the file; return (header, data start offset).

    Reads only the 8-byte length and the header itself, never tensor data.

    Args:
        path: the file.
        dtype_sizes: accepted dtype names -> element size (default :data:`DTYPE_SIZES`).
        max_header: largest header length accepted, in bytes.

    Raises:
        CorruptFileError: truncated file, header length past the end of the file or above ``max_header``,
            header not UTF-8 JSON object, duplicate tensor names, malformed entries, a shape that does not
            match its byte span, offsets that overlap, leave a gap or run past the data (exit 3).
        UnsupportedFormatError: a tensor has a dtype llmpack cannot read, or the path is not a regular file
            (exit 2).
        SourceNotFoundError: the file cannot be opened.

    Example:
        >>> validate_safetensors("model.safetensors")  # doctest: +SKIP
        ({'__metadata__': {'format': 'pt'}, 'lm_head.weight': {...}}, 4096)
    """
    from llmpack.errors import SourceNotFoundError

    p = Path(path)
    sizes = DTYPE_SIZES if dtype_sizes is None else dtype_sizes
    try:
        mode = os.stat(p).st_mode
    except OSError as e:
        raise SourceNotFoundError(f"cannot read {p}: {e.strerror or e}; check the path and permissions") from e
    if not stat.S_ISREG(mode):  # a FIFO would block the open() forever
        raise UnsupportedFormatError(f"{p} is not a regular file (a FIFO, device or directory); "
                                     "replace it with the real .safetensors file")
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            raw = f.read(8)
            if len(raw) < 8:
                raise CorruptFileError(f"{p}: only {size} bytes, too short for a safetensors header; {_FIX}")
            n = int.from_bytes(raw, "little")
            if n == 0:
                raise CorruptFileError(f"{p}: safetensors header length is 0; {_FIX}")
            if n > max_header:
                raise CorruptFileError(f"{p}: safetensors header length {n} exceeds the {max_header}-byte limit; {_FIX}")
            if 8 + n > size:
                raise CorruptFileError(f"{p}: safetensors header length {n} runs past the end of the file "
                                       f"({size} bytes); {_FIX}")
            hdr = f.read(n)
    except OSError as e:
        raise SourceNotFoundError(f"cannot read {p}: {e.strerror or e}; check the path and permissions") from e
    if len(hdr) != n:
        raise CorruptFileError(f"{p}: file shrank while its header was read; {_FIX}")
    try:
        text = hdr.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(f"{p}: safetensors header is not UTF-8 (byte {e.start}); {_FIX}") from None
    try:
        header = strict_json_loads(text)
    except _DuplicateKey as e:
        raise CorruptFileError(f"{p}: tensor name {e.key!r} appears twice in the header; {_FIX}") from None
    except ValueError as e:
        raise CorruptFileError(f"{p}: safetensors header is not valid JSON ({e}); {_FIX}") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{p}: safetensors header is a JSON {type(header).__name__}, not an object; {_FIX}")
    meta = header.get("__metadata__")
    if meta is not None:
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            raise CorruptFileError(f"{p}: __metadata__ must map strings to strings; {_FIX}")
    data_start = 8 + n
    data_len = size - data_start
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        where = f"{p}: tensor {name!r}"
        if not name:
            raise CorruptFileError(f"{p}: a tensor has an empty name; {_FIX}")
        if not isinstance(entry, dict):
            raise CorruptFileError(f"{where}: header entry is not an object; {_FIX}")
        missing = sorted({"dtype", "shape", "data_offsets"} - set(entry))
        if missing:
            raise CorruptFileError(f"{where}: header entry lacks {', '.join(missing)}; {_FIX}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in sizes:
            raise UnsupportedFormatError(
                f"{where} has dtype {dtype!r}, which llmpack cannot read (supported: {', '.join(sorted(sizes))}); "
                "re-export the checkpoint with a standard dtype")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape):
            raise CorruptFileError(f"{where}: shape {shape!r} is not a list of non-negative integers; {_FIX}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) and o >= 0 for o in offsets)
                or offsets[0] > offsets[1]):
            raise CorruptFileError(f"{where}: data_offsets {offsets!r} are not [begin, end] with 0 <= begin <= end; "
                                   f"{_FIX}")
        numel = 1
        for s in shape:
            numel *= s
        span = offsets[1] - offsets[0]
        if numel * sizes[dtype] != span:
            raise CorruptFileError(f"{where}: shape {shape} x {dtype} needs {numel * sizes[dtype]} bytes but its "
                                   f"data_offsets span {span}; {_FIX}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    pos = 0
    prev = ""
    for b, e, name in spans:
        if b < pos:
            raise CorruptFileError(f"{p}: tensor {name!r} data_offsets [{b}, {e}] overlap tensor {prev!r} "
                                   f"(ends at {pos}); {_FIX}")
        if b > pos:
            raise CorruptFileError(f"{p}: gap of {b - pos} bytes before tensor {name!r} (data_offsets [{b}, {e}]); "
                                   f"{_FIX}")
        if e > data_len:
            raise CorruptFileError(f"{p}: tensor {name!r} data_offsets [{b}, {e}] run past the end of the data "
                                   f"({data_len} bytes); {_FIX}")
        pos = e
        prev = name
    if pos != data_len:
        raise CorruptFileError(f"{p}: {data_len - pos} unexpected bytes after the last tensor; {_FIX}")
    return header, data_start


def _hf_cache_blobs(directory: Path) -> Path | None:
    """The ``blobs/`` dir of a Hugging Face cache snapshot (``<repo>/snapshots/<rev>``), else ``None``."""
    d = directory.absolute()
    if d.parent.name == "snapshots" and (d.parent.parent / "blobs").is_dir():
        return (d.parent.parent / "blobs").resolve()
    return None


def check_inside(path: "str | os.PathLike[str]", root: "str | os.PathLike[str]", *, what: str = "file",
                 named_in: "str | os.PathLike[str] | None" = None) -> Path:
    """Check that ``path`` (symlinks followed) stays inside ``root``; return its resolved path.

    A Hugging Face cache snapshot (``.../snapshots/<rev>``) may also link into its repo's ``blobs/``.

    Raises:
        UnsafePathError: the path leads outside ``root`` (exit 2).

    Example:
        >>> import tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> check_inside(root / "a.json", root) == (root / "a.json").resolve()
        True
        >>> check_inside(root / ".." / "x", root)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        llmpack.errors.UnsafePathError: ...leads outside...
    """
    r = Path(root).resolve()
    p = Path(path)
    real = p.resolve()
    if real == r or r in real.parents:
        return real
    blobs = _hf_cache_blobs(Path(root))
    if blobs is not None and blobs in real.parents:
        return real
    where = named_in if named_in is not None else r
    raise UnsafePathError(f"{where}: {what} {str(p)!r} leads outside {r} (to {real}); refusing to read it. "
                          "Replace it with a regular file inside the model directory")


def validate_index(index: "str | os.PathLike[str]", directory: "str | os.PathLike[str] | None" = None) -> list[Path]:
    """Check ``model.safetensors.index.json``; return the shard paths it names (sorted, unique).

    Raises:
        CorruptFileError: not a JSON object with a ``weight_map`` of string -> string, or a duplicate key (exit 3).
        UnsafePathError: a shard path is absolute, holds ``..``, or leads outside the directory (exit 2).
        IntegrityError: a named shard is missing or not a regular ``.safetensors`` file (exit 3).

    Example:
        >>> validate_index("model-dir/model.safetensors.index.json")  # doctest: +SKIP
        [PosixPath('model-dir/model-00001-of-00002.safetensors'), ...]
    """
    ip = Path(index)
    d = Path(directory) if directory is not None else ip.parent
    try:
        text = ip.read_bytes()
    except OSError as e:
        raise CorruptFileError(f"cannot read {ip}: {e.strerror or e}; {_INDEX_FIX}") from e
    try:
        data = strict_json_loads(text.decode("utf-8"))
    except _DuplicateKey as e:
        raise CorruptFileError(f"{ip}: key {e.key!r} appears twice; {_INDEX_FIX}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptFileError(f"{ip}: not valid JSON ({e}); {_INDEX_FIX}") from None
    if not isinstance(data, dict) or not isinstance(data.get("weight_map"), dict):
        raise CorruptFileError(f"{ip}: expected a JSON object with a \"weight_map\" object; {_INDEX_FIX}")
    shards: set[str] = set()
    for name, rel in data["weight_map"].items():
        if not isinstance(rel, str) or not rel:
            raise CorruptFileError(f"{ip}: tensor {name!r} maps to {rel!r}, not a file name; {_INDEX_FIX}")
        shards.add(rel)
    out = []
    for rel in sorted(shards):
        norm = posixpath.normpath(rel)
        if ("\0" in rel or "\\" in rel or rel.startswith("/") or (len(rel) > 1 and rel[1] == ":")
                or ".." in rel.split("/") or norm.startswith("..")):
            raise UnsafePathError(f"{ip} names shard {rel!r}, which is not a relative path inside {d}; refusing it. "
                                  f"Fix the index: shards must be plain file names. {_INDEX_FIX.capitalize()}")
        if not rel.endswith(".safetensors"):
            raise UnsafePathError(f"{ip} names shard {rel!r}, which is not a .safetensors file; {_INDEX_FIX}")
        p = d / rel
        check_inside(p, d, what="shard", named_in=ip)
        if not p.is_file():
            raise IntegrityError(f"{ip} names shard {rel}, which is missing from {d}; {_INDEX_FIX}")
        out.append(p)
    return out
