"""Atomic files and directories, and the one lock: every llmpack writer goes through this module.

* :func:`atomic_write` / :func:`atomic_path`: a file is written to ``<parent>/.llmpack-tmp-<name>-<random>``
  and renamed over ``<parent>/<name>`` only once complete (optionally fsynced); any exception, Ctrl-C included,
  removes the temp file.
* :func:`atomic_dir`: the same for a directory (``.llmpack-tmp-<name>-<random>``), with an overwrite rule and
  the lock below; SIGTERM is turned into :class:`~llmpack.errors.Interrupted` so cleanup runs.
* :func:`file_lock`: one protocol for every lock. The lock file holds the holder's PID and an exclusive
  ``flock``; a second writer fails at once with :class:`~llmpack.errors.OutputLockedError` (or waits, with
  ``wait=True``). A lock is held while a process holds the ``flock`` on it, or while the file names a live PID;
  a killed holder leaves a dead PID (stale: taken over). An unlocked empty lock file is a run that is starting
  for 10 s (then stale), unless the lock file is kept between runs (``keep=True``), where empty means free.

Every temp name is ``<TEMP_PREFIX><name>-<8 random characters>``, so a killed run's leftovers are recognisable
(``llmpack pack`` skips them, :func:`atomic_dir` removes them on the next run).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from llmpack.constants import LOCK_SUFFIX, TEMP_PREFIX
from llmpack.errors import Interrupted, OutputExistsError, OutputLockedError, OutputWriteError

__all__ = ["atomic_dir", "atomic_path", "atomic_write", "file_lock", "lock_path", "temp_path", "write_all",
           "sigterm_as_interrupt"]

_STARTING_S = 10.0  # an unlocked, empty lock file younger than this is a run that is starting
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(fd: int) -> int:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        return int(text or "0")
    except (OSError, ValueError):
        return 0


def _open_lock(path: Path, fix: str) -> "tuple[int, bool] | None":
    """``(fd, created)``, or ``None`` when the file vanished between two tries (try again)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644), True
    except FileExistsError:
        pass
    except OSError as e:
        raise OutputWriteError(f"cannot create lock file {path}: {e.strerror or e}; {fix}") from e
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC), False
    except FileNotFoundError:
        return None
    except OSError as e:
        raise OutputWriteError(f"cannot open lock file {path}: {e.strerror or e}; {fix}") from e


def _busy_default(path: Path) -> Callable[[int], str]:
    return lambda pid: (f"{path} is held by another llmpack process (pid {pid or '?'}); wait for it, "
                        f"or delete {path} if that process is gone")


def _acquire(path: Path, busy: Callable[[int], str], keep: bool, wait: bool, fix: str) -> int:
    for _ in range(100):
        opened = _open_lock(path, fix)
        if opened is None:
            continue
        fd, created = opened
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                pid = _read_pid(fd)
                os.close(fd)
                raise OutputLockedError(busy(pid)) from None
            if e.errno not in _NO_FLOCK:
                os.close(fd)
                raise OutputWriteError(f"cannot lock {path}: {e.strerror or e}; {fix}") from e
            # a file system without flock: the PID in the file (below) is the whole protocol
        try:
            st, mine = os.stat(path), os.fstat(fd)
            same = (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            same = False
        if not same:  # the holder removed it as we opened it: try the new one
            os.close(fd)
            continue
        if not created:
            pid = _read_pid(fd)
            if pid and _pid_alive(pid):
                os.close(fd)
                raise OutputLockedError(busy(pid))
            if not pid and not keep and _younger_than(path, _STARTING_S):
                os.close(fd)
                raise OutputLockedError(busy(0))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as e:
            os.close(fd)
            raise OutputWriteError(f"cannot write lock file {path}: {e.strerror or e}; {fix}") from e
        return fd
    raise OutputLockedError(f"cannot take the lock {path}: delete it if no llmpack process is running")


@contextlib.contextmanager
def file_lock(path: "str | os.PathLike[str]", *, busy: "Callable[[int], str] | None" = None, keep: bool = False,
              wait: bool = False, fix: str = "choose a writable --out") -> Iterator[None]:
    """Hold the lock file ``path`` for the block (the one lock protocol of llmpack, see the module doc).

    Args:
        path: the lock file (created when missing).
        busy: the message of the :class:`~llmpack.errors.OutputLockedError` raised when another process holds
            the lock, given the holder's PID (0 when unknown).
        keep: leave the (emptied) lock file in place on release instead of removing it.
        wait: wait for a holder that uses ``flock`` instead of failing at once.
        fix: the end of the error message when the lock file cannot be created.

    Raises:
        OutputLockedError: another process holds the lock.
        OutputWriteError: the lock file cannot be created or written.

    Example:
        >>> import tempfile
        >>> lock = Path(tempfile.mkdtemp()) / "out.llmpack.lock"
        >>> with file_lock(lock):
        ...     with file_lock(lock, busy=lambda pid: f"busy (pid {pid})"):
        ...         pass
        Traceback (most recent call last):
        ...
        llmpack.errors.OutputLockedError: busy (pid ...)
        >>> lock.exists()
        False
    """
    path = Path(path)
    fd = _acquire(path, busy or _busy_default(path), keep, wait, fix)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if keep:
                os.ftruncate(fd, 0)
            else:
                os.unlink(path)  # while still locked: a waiter that opened it sees it is gone and retries
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


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


def _younger_than(path: Path, seconds: float) -> bool:
    """Whether ``path`` was last modified less than ``seconds`` ago (an empty lock: a run that is starting)."""
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


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
        wait: wait for another process writing ``target`` instead of failing (see :func:`file_lock`).

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
