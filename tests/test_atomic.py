"""llmpack._atomic: atomic files (temp beside the target, cleanup on any failure, Ctrl-C included, optional
fsync) and the one lock protocol (a second writer is excluded, in this process and from another one)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmpack import _atomic
from llmpack._atomic import atomic_path, atomic_write, file_lock, temp_path
from llmpack.constants import TEMP_PREFIX
from llmpack.errors import OutputLockedError, OutputWriteError


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


# --- the lock ------------------------------------------------------------------------------------------


def test_lock_excludes_a_second_writer_in_this_process(tmp_path: Path) -> None:
    lock = tmp_path / "out.llmpack.lock"
    with file_lock(lock):
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputLockedError, match=rf"busy, pid {os.getpid()}"):
            with file_lock(lock, busy=lambda pid: f"busy, pid {pid}"):
                pass
        assert lock.exists()  # the failed attempt did not remove the holder's lock
    assert not lock.exists()
    with file_lock(lock):  # free again
        pass


_HOLDER = """
import sys, time
from pathlib import Path
from llmpack._atomic import file_lock
with file_lock(Path(sys.argv[1]), keep=sys.argv[2] == "keep"):
    Path(sys.argv[3]).write_text("held")
    while not Path(sys.argv[4]).exists():
        time.sleep(0.02)
"""


@pytest.mark.parametrize("keep", ["keep", "remove"])
def test_lock_excludes_a_second_writer_in_another_process(tmp_path: Path, keep: str) -> None:
    lock, held, go = tmp_path / "x.lock", tmp_path / "held", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock), keep, str(held), str(go)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not held.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the holder did not start"
            time.sleep(0.02)
        with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
            with file_lock(lock, keep=keep == "keep", busy=lambda pid: f"held by pid {pid}"):
                pass
    finally:
        go.write_text("go")
        assert holder.wait(timeout=60) == 0
    assert lock.exists() == (keep == "keep")
    if keep == "keep":
        assert lock.read_text() == ""  # kept, but names no holder
    with file_lock(lock, keep=keep == "keep"):
        pass


def test_lock_rules_for_files_left_behind(tmp_path: Path) -> None:
    lock = tmp_path / "out.llmpack.lock"
    lock.write_text("999999999\n")  # a dead PID: stale, taken over
    with file_lock(lock):
        pass
    lock.write_text(f"{os.getpid()}\n")  # a live PID that does not use flock (an older llmpack): held
    with pytest.raises(OutputLockedError):
        with file_lock(lock):
            pass
    lock.write_text("")  # empty and fresh: a run that is starting
    with pytest.raises(OutputLockedError):
        with file_lock(lock):
            pass
    with file_lock(lock, keep=True):  # ... unless the lock file is kept between runs: empty means free
        pass
    os.utime(lock, (0, 0))  # empty and old: its writer died before writing its PID
    with file_lock(lock):
        pass


def test_lock_wait_blocks_until_the_holder_releases(tmp_path: Path) -> None:
    lock = tmp_path / "w.lock"
    entered = threading.Event()
    order: list[str] = []

    def hold() -> None:
        with file_lock(lock):
            entered.set()
            time.sleep(0.3)
            order.append("first released")

    t = threading.Thread(target=hold)
    t.start()
    entered.wait(10)
    with file_lock(lock, wait=True):
        order.append("second acquired")
    t.join()
    assert order == ["first released", "second acquired"]


def test_lock_file_that_cannot_be_created(tmp_path: Path) -> None:
    with pytest.raises(OutputWriteError, match=r"cannot create lock file .*nowhere/x\.lock: No such file or directory; fix it"):
        with file_lock(tmp_path / "nowhere" / "x.lock", fix="fix it"):
            pass
