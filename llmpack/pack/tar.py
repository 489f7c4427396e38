"""Deterministic tar streams for OCI layers, written by llmpack's own code.

Every layer llmpack writes is a POSIX ustar archive (pax extended headers only where ustar cannot
hold a value: names longer than 100 bytes or not ASCII, files of 8 GiB or more). The bytes depend
on the file contents and the entry names alone:

* entries sorted by path components, each parent directory listed before its children;
* uid/gid 0, empty user and group names, mode 0644 for files and 0755 for directories;
* mtime = ``SOURCE_DATE_EPOCH`` (or 0) for every entry, pax headers included;
* the archive ends with two zero blocks and is not padded to a 10 KiB record.

Both Python's :mod:`tarfile` and Go's ``archive/tar`` (umoci, skopeo, podman) read these archives.

Example:
    >>> import io, tarfile
    >>> members = layer_members([("a.txt", None, 3)], prefix="models/m")
    >>> [m.name for m in members]
    ['models/', 'models/m/', 'models/m/a.txt']
    >>> len(tar_header("models/m/a.txt", size=3, is_dir=False, mtime=0))
    512
"""

from __future__ import annotations

import os
import posixpath
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from llmpack.errors import IntegrityError, UnsafePathError

__all__ = [
    "BLOCK",
    "FILE_MODE",
    "DIR_MODE",
    "USTAR_MAX_SIZE",
    "TarMember",
    "normalize_relpath",
    "layer_members",
    "tar_header",
    "tar_size",
    "write_tar",
]

BLOCK = 512
FILE_MODE = 0o644
DIR_MODE = 0o755
# The ustar size field holds 11 octal digits: anything larger goes into a pax "size" record.
USTAR_MAX_SIZE = 0o77777777777
_USTAR_MAX_NAME = 100
_MAX_MTIME = 0o77777777777
_EOF = b"\0" * (2 * BLOCK)


@dataclass(frozen=True)
class TarMember:
    """One entry of a layer: a directory (``source is None`` and ``is_dir``) or a regular file.

    Attributes:
        name: the archive path, relative, ``/``-separated; directories end with ``/``.
        source: the file on disk whose bytes are archived (``None`` for directories).
        size: the file size in bytes (0 for directories).
        is_dir: whether this entry is a directory.
    """

    name: str
    source: Path | None
    size: int
    is_dir: bool = False


def normalize_relpath(rel: str) -> str:
    """Check and normalise a path relative to the model directory (``/``-separated, no ``..``).

    Raises:
        UnsafePathError: the path is absolute, escapes the directory, is empty or holds control characters.

    Example:
        >>> normalize_relpath("sub/./config.json")
        'sub/config.json'
    """
    if not rel or "\0" in rel or any(ord(c) < 32 or ord(c) == 127 for c in rel):
        raise UnsafePathError(f"unsafe file name {rel!r} in the model directory: rename the file")
    rel = rel.replace(os.sep, "/")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise UnsafePathError(f"absolute path {rel!r} cannot go into a layer: use paths inside the model directory")
    norm = posixpath.normpath(rel)
    if norm in (".", "") or norm == ".." or norm.startswith("../"):
        raise UnsafePathError(f"path {rel!r} escapes the model directory: remove it from the model directory")
    return unicodedata.normalize("NFC", norm)


def layer_members(files: Iterable[tuple[str, Path | None, int]], prefix: str) -> list[TarMember]:
    """Tar entries for ``files`` (relative path, source, size) under ``prefix``, parents included, sorted.

    ``prefix`` (e.g. ``models/<name>``) may be empty: the files then sit at the archive root.

    Example:
        >>> [m.name for m in layer_members([("b/c.json", None, 1), ("a", None, 1)], prefix="")]
        ['a', 'b/', 'b/c.json']
    """
    prefix = prefix.strip("/")
    members: dict[str, TarMember] = {}
    for rel, source, size in files:
        rel = normalize_relpath(rel)
        full = f"{prefix}/{rel}" if prefix else rel
        parts = full.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i]) + "/"
            members.setdefault(d, TarMember(d, None, 0, True))
        if full in members or full + "/" in members:
            raise UnsafePathError(f"duplicate entry {full!r} in a layer: each file may appear once")
        members[full] = TarMember(full, source, int(size), False)
    return sorted(members.values(), key=lambda m: m.name.rstrip("/").split("/"))


def _octal(value: int, width: int) -> bytes:
    """``width``-byte NUL-terminated octal field."""
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode("utf-8")
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode("ascii") + body


def _raw_header(name: bytes, *, size: int, typeflag: bytes, mode: int, mtime: int) -> bytes:
    if not 0 <= mtime <= _MAX_MTIME:
        raise ValueError(f"mtime {mtime} out of range for a tar header: use 0 <= SOURCE_DATE_EPOCH < 2**33")
    fields = [
        name.ljust(100, b"\0"),
        _octal(mode, 8),
        _octal(0, 8),  # uid
        _octal(0, 8),  # gid
        _octal(size, 12),
        _octal(mtime, 12),
        b" " * 8,  # checksum placeholder
        typeflag,
        b"\0" * 100,  # linkname
        b"ustar\0",
        b"00",
        b"\0" * 32,  # uname
        b"\0" * 32,  # gname
        _octal(0, 8),  # devmajor
        _octal(0, 8),  # devminor
        b"\0" * 155,  # prefix
        b"\0" * 12,
    ]
    block = bytearray(b"".join(fields))
    chksum = sum(block)
    block[148:156] = b"%06o\0 " % chksum
    return bytes(block)


def tar_header(name: str, *, size: int, is_dir: bool, mtime: int) -> bytes:
    """The header block(s) of one entry: a pax ``x`` header first when ustar cannot hold the name or size.

    Example:
        >>> len(tar_header("a" * 200, size=1, is_dir=False, mtime=0))  # pax header + data + ustar header
        1536
    """
    raw = name.encode("utf-8")
    pax: list[bytes] = []
    if len(raw) > _USTAR_MAX_NAME or not name.isascii():
        pax.append(_pax_record("path", name))
        short = raw[:_USTAR_MAX_NAME].decode("utf-8", "ignore").encode("ascii", "replace")
    else:
        short = raw
    if size > USTAR_MAX_SIZE:
        pax.append(_pax_record("size", str(size)))
    out = b""
    if pax:
        body = b"".join(pax)
        base = posixpath.basename(name.rstrip("/")).encode("ascii", "replace")[:80]
        pax_name = b"PaxHeaders/" + base
        out = _raw_header(pax_name, size=len(body), typeflag=b"x", mode=FILE_MODE, mtime=mtime)
        out += body + b"\0" * (-len(body) % BLOCK)
    header = _raw_header(
        short,
        size=0 if is_dir or size > USTAR_MAX_SIZE else size,
        typeflag=b"5" if is_dir else b"0",
        mode=DIR_MODE if is_dir else FILE_MODE,
        mtime=mtime,
    )
    return out + header


def tar_size(members: Sequence[TarMember], mtime: int = 0) -> int:
    """The exact byte size of the archive :func:`write_tar` produces for ``members``.

    Example:
        >>> tar_size(layer_members([("a", None, 1)], prefix=""))
        2048
    """
    total = len(_EOF)
    for m in members:
        total += len(tar_header(m.name, size=m.size, is_dir=m.is_dir, mtime=mtime))
        total += m.size + (-m.size % BLOCK)
    return total


def write_tar(members: Sequence[TarMember], write: Callable[[memoryview], object], *, mtime: int = 0,
              bufsize: int = 8 << 20, on_progress: Callable[[int], object] | None = None) -> int:
    """Stream the archive of ``members`` into ``write`` (called with memoryviews); returns the bytes written.

    Files are read with ``readinto`` into one preallocated buffer of ``bufsize`` bytes.

    Raises:
        IntegrityError: a file's size changed while it was being archived.

    Example:
        >>> chunks = []
        >>> write_tar(layer_members([], prefix=""), lambda b: chunks.append(bytes(b)))
        1024
    """
    buf = bytearray(bufsize)
    view = memoryview(buf)
    total = 0
    for m in members:
        header = tar_header(m.name, size=m.size, is_dir=m.is_dir, mtime=mtime)
        write(memoryview(header))
        total += len(header)
        if m.is_dir:
            continue
        if m.source is None:
            raise ValueError(f"tar member {m.name!r} has no source file")
        remaining = m.size
        with open(m.source, "rb", buffering=0) as f:
            while remaining:
                n = f.readinto(view[: min(bufsize, remaining)])
                if not n:
                    raise IntegrityError(
                        f"{m.source} shrank while it was being packed (expected {m.size} bytes): "
                        "do not modify the model while packing, then pack again")
                write(view[:n])
                remaining -= n
                total += n
                if on_progress is not None:
                    on_progress(n)
            if f.read(1):
                raise IntegrityError(
                    f"{m.source} grew while it was being packed (expected {m.size} bytes): "
                    "do not modify the model while packing, then pack again")
        pad = -m.size % BLOCK
        if pad:
            write(memoryview(b"\0" * pad))
            total += pad
    write(memoryview(_EOF))
    return total + len(_EOF)
