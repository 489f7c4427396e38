"""Atomic files and directories, and the one lock: every llmpack writer goes through this module.

* :func:`atomic_write` / :func:`atomic_path`: a file is written to ``<parent>/.llmpack-tmp-<name>-<random>``
  and renamed over ``<parent>/<name>`` only once complete (optionally fsynced); any exception, Ctrl-C included,
  removes the temp file.
* :func:`atomic_dir`: the same for a directory (``.llmpack-tmp-<name>-<random>``), with an overwrite rule and
  the lock below; SIGTERM is turned into :class:`~llmpack.errors.Interrupted` so cleanup runs.
* the lock every writer takes is :func:`llmpack._lock.file_lock` (one protocol, see there).

Every temp name is ``<TEMP_PREFIX><name>-<8 random characters>``, so a killed run's leftovers are recognisable
(``llmpack pack`` skips them, :func:`atomic_dir` removes them on the next run).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from llmpack._lock import file_lock
from llmpack.constants import LOCK_SUFFIX, TEMP_PREFIX
from llmpack.errors import Interrupted, OutputExistsError, OutputWriteError

__all__ = ["atomic_dir", "atomic_path", "atomic_write", "lock_path", "temp_path", "write_all",
           "sigterm_as_interrupt"]

def lock_path(target: Path) -> Path:
    """The lock file guarding ``target``.

    Example:
        >>> lock_path(Path("/m/out")).name
        'out.llmpack.lock'
    """
    return target.parent / (target.name + LOCK_SUFFIX)


def temp_path(target: "str | os.PathLike[str]") -> Path:
    """A fresh temp name beside ``target``: ``<parent>/.llmpack-tmp-<name>-<8 random hex>`` (not created).

    Example:
        >>> p = temp_path("/m/report.json")
        >>> p.parent, p.name.startswith(".llmpack-tmp-report.json-"), len(p.name) == len(".llmpack-tmp-report.json-") + 8
        (PosixPath('/m'), True, True)
    """
    target = Path(target)
    return target.parent / f"{TEMP_PREFIX}{target.name}-{secrets.token_hex(4)}"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: "str | os.PathLike[str]", *, fsync: bool = False) -> Iterator[Path]:
    """Yield a fresh temp path beside ``target`` (not created) for the caller to write; on clean exit rename it
    over ``target``. On any exception (``KeyboardInterrupt`` and ``SystemExit`` too) the temp file is removed
    and ``target`` is untouched.

    Args:
        target: the final file.
        fsync: flush the file and the directory to disk (a crash then leaves the old or the new file).

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> with atomic_path(root / "a.txt") as tmp:
        ...     _ = tmp.write_text("hi")
        >>> (root / "a.txt").read_text(), sorted(p.name for p in root.iterdir())
        ('hi', ['a.txt'])
    """
    target = Path(target)
    tmp = temp_path(target)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(target.parent)


def write_all(fd: int, data: memoryview) -> None:
    """Write all of ``data`` to the file descriptor ``fd`` (``os.write`` may write less per call).

    Example:
        >>> import tempfile
        >>> fd, name = tempfile.mkstemp(); write_all(fd, memoryview(b"abc")); os.close(fd)
        >>> Path(name).read_bytes()
        b'abc'
    """
    while data:
        n = os.write(fd, data)
        data = data[n:]


def atomic_write(target: "str | os.PathLike[str]", data: "bytes | str", *, fsync: bool = False, mode: int = 0o644,
                 fix: str = "check the folder and its permissions") -> None:
    """Write ``data`` (``str`` as UTF-8) to ``target`` atomically: a temp file beside it, then a rename.

    Args:
        target: the file to write (its folder must exist).
        data: the whole content.
        fsync: flush file and folder to disk before returning.
        mode: the file mode (not reduced by the umask).
        fix: the end of the error message when writing fails.

    Raises:
        OutputWriteError: the temp file cannot be created or written, or the rename fails (the temp file is
            removed; ``target`` keeps its old content).

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "index.json"
        >>> atomic_write(p, "{}"); p.read_text(), oct(p.stat().st_mode & 0o777)
        ('{}', '0o644')
    """
    target = Path(target)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        with atomic_path(target, fsync=False) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            try:
                os.fchmod(fd, mode)
                write_all(fd, memoryview(raw))
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
    except OutputWriteError:
        raise
    except OSError as e:
        raise OutputWriteError(f"cannot write {target}: {e.strerror or e}; {fix}") from e
    if fsync:
        _fsync_dir(target.parent)


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` would race with other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _clean_stale(target: Path) -> None:
    """Remove temp dirs a killed run (SIGKILL, power loss) left beside ``target``; call with the lock held.

    ``<TEMP_PREFIX><name>-XXXXXXXX`` is a half-written output: removed. ``<TEMP_PREFIX><name>-old-XXXXXXXX`` is
    the previous output, moved aside just before the new one was renamed into place: when ``target`` is
    missing it is put back (nothing is lost), otherwise removed. Temp dirs of a target named ``<name>-old``
    (same prefix) are left alone while that target's lock is held by a live process.
    """
    import re

    pat = re.compile(re.escape(TEMP_PREFIX + target.name) + r"-(old-)?[a-z0-9_]{8}")
    try:
        names = sorted(os.listdir(target.parent))
    except OSError:
        return
    other = lock_path(target.parent / (target.name + "-old"))
    other_live = other.exists()
    for n in names:
        m = pat.fullmatch(n)
        if m is None:
            continue
        p = target.parent / n
        if not p.is_dir() or p.is_symlink():
            continue
        if m.group(1):
            if other_live:
                continue
            if not target.exists() and (p / "llmpack.json").is_file():
                with contextlib.suppress(OSError):
                    os.replace(p, target)
                continue
        shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`~llmpack.errors.Interrupted` (so cleanup runs).

    Only effective in the main thread; elsewhere it does nothing.

    Example:
        >>> with sigterm_as_interrupt():
        ...     pass
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, frame: Any) -> None:
        raise Interrupted("terminated (SIGTERM); partial output was removed")

    try:
        old = signal.signal(signal.SIGTERM, _handler)
    except (ValueError, OSError):  # pragma: no cover - unusual embedding
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def atomic_dir(target: "str | os.PathLike[str]", *, overwrite: bool = False, wait: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir beside ``target``; on clean exit rename it to ``target``.

    Args:
        target: the final output directory.
        overwrite: replace an existing ``target`` (only after the new output is complete).
        wait: wait for another process writing ``target`` instead of failing (see :func:`llmpack._lock.file_lock`).

    Raises:
        OutputExistsError: ``target`` exists and ``overwrite`` is false.
        OutputLockedError: another process holds the lock on ``target``.
        Interrupted: Ctrl-C / SIGTERM arrived; nothing was left behind.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> with atomic_dir(root / "out") as tmp:
        ...     _ = (tmp / "a.txt").write_text("hi")
        >>> (root / "out" / "a.txt").read_text()
        'hi'
    """
    target = Path(target).absolute()
    if target.exists() and not overwrite:
        raise OutputExistsError(f"output {target} already exists: pass overwrite=True (--overwrite) or another path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(f"cannot create {target.parent}: {e}; choose a writable --out") from e
    lock = lock_path(target)

    def busy(pid: int) -> str:
        return (f"{target} is being written by another llmpack process (pid {pid or '?'}); wait for it, "
                f"or delete {lock} if that process is gone")

    with file_lock(lock, busy=busy, wait=wait):
        tmp: Path | None = None
        try:
            _clean_stale(target)
            with sigterm_as_interrupt():
                if target.exists() and not overwrite:  # appeared while we waited for the lock
                    raise OutputExistsError(f"output {target} already exists: pass overwrite=True (--overwrite) or another path")
                try:
                    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}-", dir=target.parent))
                    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; an output dir is 0755 like its files
                except OSError as e:
                    raise OutputWriteError(f"cannot create a temp dir in {target.parent}: {e}; free space or choose a writable --out") from e
                try:
                    yield tmp
                except KeyboardInterrupt as e:
                    if isinstance(e, Interrupted):
                        raise
                    raise Interrupted("interrupted (Ctrl-C); partial output was removed") from e
                old: Path | None = None
                if target.exists():
                    old = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{target.name}-old-", dir=target.parent))
                    os.rmdir(old)
                    os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except OSError as e:
                    if old is not None:
                        os.replace(old, target)
                    raise OutputWriteError(f"cannot rename {tmp} to {target}: {e}") from e
                tmp = None
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
