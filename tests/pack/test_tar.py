"""The deterministic tar writer: byte layout, tarfile round trip, pax for long names and > 8 GiB files."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from llmpack.errors import IntegrityError, UnsafePathError
from llmpack.pack.tar import (
    BLOCK,
    USTAR_MAX_SIZE,
    layer_members,
    normalize_relpath,
    tar_header,
    tar_size,
    write_tar,
)


def _tar_bytes(files: dict[str, bytes], tmp: Path, prefix: str = "models/m", mtime: int = 0) -> bytes:
    entries = []
    for i, (rel, data) in enumerate(files.items()):
        p = tmp / f"f{i}"
        p.write_bytes(data)
        entries.append((rel, p, len(data)))
    members = layer_members(entries, prefix=prefix)
    buf = io.BytesIO()
    n = write_tar(members, buf.write, mtime=mtime)
    assert n == len(buf.getvalue()) == tar_size(members, mtime)
    return buf.getvalue()


def test_tarfile_reads_entries_sorted_with_parents_fixed_owner_mode_mtime(tmp_path: Path) -> None:
    files = {"z.json": b"{}", "a/b.txt": b"hello", "model.safetensors": os.urandom(1000)}
    data = _tar_bytes(files, tmp_path, mtime=1700000000)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        infos = tf.getmembers()
        assert [i.name for i in infos] == ["models", "models/m", "models/m/a", "models/m/a/b.txt",
                                           "models/m/model.safetensors", "models/m/z.json"]
        for i in infos:
            assert (i.uid, i.gid, i.uname, i.gname) == (0, 0, "", "")
            assert i.mtime == 1700000000
            assert i.mode == (0o755 if i.isdir() else 0o644)
            assert i.isdir() or i.isfile()
        for rel, content in files.items():
            assert tf.extractfile(f"models/m/{rel}").read() == content


def test_header_bytes_are_exact(tmp_path: Path) -> None:
    h = tar_header("models/m/a", size=5, is_dir=False, mtime=0)
    assert len(h) == BLOCK
    assert h[:10] == b"models/m/a" and h[100:108] == b"0000644\0"
    assert h[124:136] == b"00000000005\0" and h[156:157] == b"0" and h[257:265] == b"ustar\x0000"
    assert tarfile.TarInfo.frombuf(h, "utf-8", "strict").chksum == int(h[148:154], 8)
    # end of archive: two zero blocks, no record padding
    assert _tar_bytes({}, tmp_path, prefix="")[-1024:] == b"\0" * 1024


def test_same_input_same_bytes_whatever_mtime_and_mode(tmp_path: Path) -> None:
    a = _tar_bytes({"x.bin": b"abc" * 1000}, tmp_path)
    p = tmp_path / "f0"
    os.utime(p, (1, 1))
    os.chmod(p, 0o600)
    assert _tar_bytes({"x.bin": b"abc" * 1000}, tmp_path) == a


def test_long_and_unicode_names_use_pax(tmp_path: Path) -> None:
    long = "d" * 120 + "/" + "f" * 150 + ".json"
    files = {long: b"1", "tökenizer.json": b"2"}
    data = _tar_bytes(files, tmp_path)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        names = tf.getnames()
        assert f"models/m/{long}" in names and "models/m/tökenizer.json" in names
        assert tf.extractfile(f"models/m/{long}").read() == b"1"


class _Virtual(io.RawIOBase):
    """A seekable file of ``head`` bytes, then ``zeros`` zero bytes, then ``tail`` bytes (no big allocation)."""

    def __init__(self, head: bytes, zeros: int, tail: bytes) -> None:
        self.head, self.zeros, self.tail, self.pos = head, zeros, tail, 0
        self.size = len(head) + zeros + len(tail)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, off: int, whence: int = 0) -> int:
        self.pos = off if whence == 0 else (self.pos + off if whence == 1 else self.size + off)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        n = min(len(b), self.size - self.pos)
        out = bytearray(n)
        for i in range(n):
            j = self.pos + i
            if j < len(self.head):
                out[i] = self.head[j]
            elif j >= len(self.head) + self.zeros:
                out[i] = self.tail[j - len(self.head) - self.zeros]
            if i > 4096 and len(self.head) <= j < len(self.head) + self.zeros:
                break
        n = min(n, i + 1) if n else 0
        b[:n] = out[:n]
        self.pos += n
        return n


def test_file_over_8_gib_gets_a_pax_size_record() -> None:
    size = USTAR_MAX_SIZE + 1 + 4096  # 8 GiB + 4 KiB
    header = tar_header("models/m/big.safetensors", size=size, is_dir=False, mtime=0)
    assert b" size=%d\n" % size in header
    tail = tar_header("models/m/z", size=0, is_dir=False, mtime=0) + b"\0" * 1024
    f = _Virtual(header, size + (-size % BLOCK), tail)
    with tarfile.open(fileobj=io.BufferedReader(f), mode="r:") as tf:
        infos = tf.getmembers()
    assert [(i.name, i.size) for i in infos] == [("models/m/big.safetensors", size), ("models/m/z", 0)]


def test_file_changing_size_while_packing_is_an_integrity_error(tmp_path: Path) -> None:
    p = tmp_path / "w.bin"
    p.write_bytes(b"x" * 100)
    members = layer_members([("w.bin", p, 200)], prefix="")
    with pytest.raises(IntegrityError, match="shrank"):
        write_tar(members, lambda b: None)
    members = layer_members([("w.bin", p, 50)], prefix="")
    with pytest.raises(IntegrityError, match="grew"):
        write_tar(members, lambda b: None)


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../x", "", ".", "a\nb", "a\0b"])
def test_unsafe_names_are_refused(bad: str) -> None:
    with pytest.raises(UnsafePathError):
        normalize_relpath(bad)


def test_names_are_normalised_inside_prefix() -> None:
    assert normalize_relpath("a/./b//c.json") == "a/b/c.json"
    assert normalize_relpath("a/x/../c.json") == "a/c.json"
    ms = layer_members([("./sub/../config.json", None, 1)], prefix="/models/m/")
    assert [m.name for m in ms] == ["models/", "models/m/", "models/m/config.json"]
    with pytest.raises(UnsafePathError, match="duplicate"):
        layer_members([("a", None, 1), ("./a", None, 1)], prefix="")
