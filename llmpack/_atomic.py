"""Atomic output directories: build beside the target, rename into place, leave nothing on failure.

An output is written into ``<parent>/.llmpack-tmp-<name>-<random>`` and renamed to ``<parent>/<name>``
only once it is complete. An exception, Ctrl-C or SIGTERM removes the temp dir. An existing target is
refused unless ``overwrite=True``; with it, the old target is replaced only after the new one is complete.
A lock file ``<parent>/<name>.llmpack.lock`` (created with ``O_EXCL``) makes a second concurrent run
fail with :class:`~llmpack.errors.OutputLockedError`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

from llmpack.constants import LOCK_SUFFIX, TEMP_PREFIX
from llmpack.errors import Interrupted, OutputExistsError, OutputLockedError, OutputWriteError

__all__ = ["atomic_dir", "lock_path", "sigterm_as_interrupt"]


def lock_path(target: Path) -> Path:
    """The lock file guarding ``target``.

    Example:
        >>> lock_path(Path("/m/out")).name
        'out.llmpack.lock'
    """
    return target.parent / (target.name + LOCK_SUFFIX)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _acquire_lock(lock: Path) -> None:
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if (pid and pid != os.getpid() and not _pid_alive(pid)) or (not pid and _older_than(lock, 10.0)):
                with contextlib.suppress(OSError):
                    lock.unlink()  # stale lock of a dead process
                continue
            raise OutputLockedError(
                f"{lock.parent / lock.name[: -len(LOCK_SUFFIX)]} is being written by another llmpack process "
                f"(pid {pid or '?'}); wait for it, or delete {lock} if that process is gone"
            ) from None
        except OSError as e:
            raise OutputWriteError(f"cannot create lock file {lock}: {e}; choose a writable --out") from e
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return
    raise OutputLockedError(f"cannot take the lock {lock}: delete it if no llmpack process is running")


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


def _older_than(path: Path, seconds: float) -> bool:
    """Whether ``path`` was last modified more than ``seconds`` ago (a lock without a PID: its writer died)."""
    import time

    try:
        return time.time() - path.stat().st_mtime > seconds
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
def atomic_dir(target: "str | os.PathLike[str]", *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir beside ``target``; on clean exit rename it to ``target``.

    Args:
        target: the final output directory.
        overwrite: replace an existing ``target`` (only after the new output is complete).

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
    _acquire_lock(lock)
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
        with contextlib.suppress(OSError):
            lock.unlink()
