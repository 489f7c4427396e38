"""The one lock protocol of llmpack: every writer that must exclude a second one takes :func:`file_lock`.

The lock file holds the holder's PID and an exclusive ``flock``; a second writer fails at once with
:class:`~llmpack.errors.OutputLockedError` (or waits, with ``wait=True``). A lock is held while a process holds
the ``flock`` on it, or while the file names a live PID (a writer that does not take ``flock``, such as an
older llmpack); a killed holder leaves a dead PID (stale: taken over). An unlocked empty lock file is a run that
is starting for 10 s (then stale), unless the lock file is kept between runs (``keep=True``), where empty means
free. On release the file is removed (``keep=False``, while still locked, so a waiter retries on the new file)
or emptied (``keep=True``).

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> lock = Path(tempfile.mkdtemp()) / "out.llmpack.lock"
    >>> with file_lock(lock):
    ...     lock.read_text() == f"{os.getpid()}\\n"
    True
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterator

from llmpack.errors import OutputLockedError, OutputWriteError

__all__ = ["file_lock"]

_STARTING_S = 10.0  # an unlocked, empty lock file younger than this is a run that is starting
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


def _younger_than(path: Path, seconds: float) -> bool:
    """Whether ``path`` was last modified less than ``seconds`` ago (an empty lock: a run that is starting)."""
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


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
