"""llmpack._atomic: atomic files (temp beside the target, cleanup on any failure, Ctrl-C included, optional
fsync); the lock is tested in test_lock.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llmpack import _atomic
from llmpack._atomic import atomic_path, atomic_write, temp_path
from llmpack.constants import TEMP_PREFIX
from llmpack.errors import OutputWriteError


def _names(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def test_temp_path_is_random_and_beside_the_target(tmp_path: Path) -> None:
    a, b = temp_path(tmp_path / "x.json"), temp_path(tmp_path / "x.json")
    assert a != b and a.parent == tmp_path and a.name.startswith(TEMP_PREFIX + "x.json-")


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "f.json"
    p.write_text("old")
    atomic_write(p, '{"a": 1}')
    assert p.read_text() == '{"a": 1}' and _names(tmp_path) == ["f.json"]
    assert p.stat().st_mode & 0o777 == 0o644
    atomic_write(p, b"\x00\x01", mode=0o600)
    assert p.read_bytes() == b"\x00\x01" and p.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_path_cleans_up_on_exception_and_ctrl_c(tmp_path: Path, exc: BaseException) -> None:
    p = tmp_path / "report.md"
    p.write_text("old")
    with pytest.raises(type(exc)):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise exc
    assert p.read_text() == "old" and _names(tmp_path) == ["report.md"]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_atomic_write_cleans_up_when_writing_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   exc: BaseException) -> None:
    p = tmp_path / "index.json"
    p.write_text("old")

    def failing(fd: int, data: memoryview) -> None:
        os.write(fd, data[:1])
        raise exc

    monkeypatch.setattr(_atomic, "write_all", failing)
    expected = OutputWriteError if isinstance(exc, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as info:
        atomic_write(p, "new content", fix="free space")
    if expected is OutputWriteError:
        assert str(info.value) == f"cannot write {p}: No space left on device; free space"
    assert p.read_text() == "old" and _names(tmp_path) == ["index.json"]


def test_atomic_write_error_names_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(OutputWriteError, match=r"cannot write .*missing/f\.txt: No such file or directory; check it"):
        atomic_write(tmp_path / "missing" / "f.txt", "x", fix="check it")


def test_fsync_flushes_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    atomic_write(tmp_path / "a", "x")
    assert calls == []
    atomic_write(tmp_path / "a", "y", fsync=True)
    assert len(calls) == 2  # the file, then the folder
    with atomic_path(tmp_path / "b", fsync=True) as tmp:
        tmp.write_text("z")
    assert len(calls) == 4 and (tmp_path / "b").read_text() == "z"
