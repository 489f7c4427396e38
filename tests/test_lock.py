"""llmpack._lock: the one lock protocol excludes a second writer (in this process and from another one),
takes over stale locks, waits when asked, and names the file it cannot create."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from llmpack._lock import file_lock
from llmpack.errors import OutputLockedError, OutputWriteError


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
from llmpack._lock import file_lock
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
