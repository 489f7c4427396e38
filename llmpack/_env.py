"""Every environment variable llmpack reads or writes, named and parsed in this one module.

Each variable has a reader here; no other module calls ``os.environ`` for them. Yes/no variables go through
:func:`env_flag`, the one parser of "true" (``1``/``true``/``yes``/``on`` and ``0``/``false``/``no``/``off``,
any case; unset or empty gives the default; anything else is a :class:`~llmpack.errors.ConfigError`).
The table is documented in ``docs/environment.md``.

Example:
    >>> import os
    >>> os.environ[ENV_PROGRESS] = "Off"
    >>> progress_enabled()
    False
    >>> del os.environ[ENV_PROGRESS]
"""

from __future__ import annotations

import os
from pathlib import Path

from llmpack.errors import BadInputError, ConfigError

__all__ = [
    "ENV_CACHE",
    "ENV_DEBUG",
    "ENV_PROGRESS",
    "ENV_KERNEL",
    "ENV_CUDA_FUSE",
    "ENV_API_KEY",
    "ENV_MODEL",
    "ENV_SOURCE_DATE_EPOCH",
    "KERNEL_CHOICES",
    "APPROXIMATE",
    "TRUE_VALUES",
    "FALSE_VALUES",
    "env_flag",
    "debug",
    "progress_enabled",
    "cuda_fuse_enabled",
    "kernel_option",
    "cache_root",
    "api_key",
    "source_date_epoch",
]

ENV_CACHE = "LLMPACK_CACHE"
"""Where llmpack caches what it builds (native kernels, converted test models); default ``~/.cache/llmpack``."""
ENV_DEBUG = "LLMPACK_DEBUG"
"""A yes/no flag: the CLI prints the traceback with an error."""
ENV_PROGRESS = "LLMPACK_PROGRESS"
"""A yes/no flag (default yes): progress bars on a terminal."""
ENV_KERNEL = "LLMPACK_INT8_KERNEL"
"""Which int8 kernel runs W8A8 layers (one of :data:`KERNEL_CHOICES`)."""
ENV_CUDA_FUSE = "LLMPACK_CUDA_FUSE"
"""A yes/no flag (default yes): CUDA 8-bit layers quantize tokens and rescale in ``torch.compile``-fused kernels."""
ENV_API_KEY = "LLMPACK_API_KEY"
"""``llmpack serve``: the Bearer key (instead of ``--api-key`` on the command line)."""
ENV_MODEL = "LLMPACK_MODEL"
"""Written, not read: the model path inside the images and deployments ``llmpack pack`` makes."""
ENV_SOURCE_DATE_EPOCH = "SOURCE_DATE_EPOCH"
"""The reproducible-builds convention: ``llmpack pack`` stamps every file and ``created`` with it (default 0)."""

KERNEL_CHOICES = ("auto", "vnni", "avx2", "int_mm", "dequant", "avx2-7bit", "onednn-7bit")
"""Values of ``LLMPACK_INT8_KERNEL``."""
APPROXIMATE = frozenset({"avx2-7bit", "onednn-7bit"})
"""Kernels that do not compute the file's semantics (7-bit centred tokens): opt-in only."""

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})
"""What :func:`env_flag` reads as yes (compared lower-cased, spaces stripped)."""
FALSE_VALUES = frozenset({"0", "false", "no", "off"})
"""What :func:`env_flag` reads as no."""


def _raw(name: str) -> str:
    return os.environ.get(name, "").strip()


def env_flag(name: str, default: bool = False) -> bool:
    """The yes/no environment variable ``name``: the one parser of "true" in llmpack.

    Args:
        name: the variable.
        default: the value when it is unset or empty.

    Raises:
        ConfigError: the value is neither in :data:`TRUE_VALUES` nor in :data:`FALSE_VALUES`.

    Example:
        >>> import os
        >>> os.environ["LLMPACK_X"] = "YES"; env_flag("LLMPACK_X")
        True
        >>> os.environ["LLMPACK_X"] = "maybe"; env_flag("LLMPACK_X")
        Traceback (most recent call last):
        ...
        llmpack.errors.ConfigError: LLMPACK_X='maybe' is not a yes/no value: set it to 1, true, yes or on, to 0, false, no or off, or unset it
        >>> del os.environ["LLMPACK_X"]; env_flag("LLMPACK_X", default=True)
        True
    """
    raw = _raw(name)
    if not raw:
        return default
    v = raw.lower()
    if v in TRUE_VALUES:
        return True
    if v in FALSE_VALUES:
        return False
    raise ConfigError(f"{name}={raw!r} is not a yes/no value: set it to 1, true, yes or on, "
                      "to 0, false, no or off, or unset it")


def debug() -> bool:
    """``LLMPACK_DEBUG``: show tracebacks. A value :func:`env_flag` cannot read counts as yes (asking for
    debug output with a typo should still give it, and this runs while an error is being reported).

    Example:
        >>> debug() in (True, False)
        True
    """
    try:
        return env_flag(ENV_DEBUG)
    except ConfigError:
        return True


def progress_enabled() -> bool:
    """``LLMPACK_PROGRESS`` (default yes): whether progress bars may be shown.

    Raises:
        ConfigError: the value is not a yes/no value.

    Example:
        >>> progress_enabled() in (True, False)
        True
    """
    return env_flag(ENV_PROGRESS, default=True)


def cuda_fuse_enabled() -> bool:
    """``LLMPACK_CUDA_FUSE`` (default yes): on CUDA, the 8-bit layers' per-token quantization and int8 rescale
    run as ``torch.compile``-fused kernels (:mod:`llmpack.runtime.kernels.cuda`); no runs them op by op.

    Example:
        >>> cuda_fuse_enabled() in (True, False)
        True
    """
    return env_flag(ENV_CUDA_FUSE, default=True)


def kernel_option() -> str:
    """``LLMPACK_INT8_KERNEL`` lower-cased (``auto`` when unset).

    Raises:
        ConfigError: the value is not one of :data:`KERNEL_CHOICES`.

    Example:
        >>> kernel_option() in KERNEL_CHOICES
        True
    """
    raw = _raw(ENV_KERNEL).lower() or "auto"
    if raw not in KERNEL_CHOICES:
        raise ConfigError(f"{ENV_KERNEL}={raw!r} is not a kernel: choose one of {', '.join(KERNEL_CHOICES)}")
    return raw


def cache_root() -> Path:
    """``$LLMPACK_CACHE`` or ``~/.cache/llmpack`` (not created).

    Example:
        >>> isinstance(cache_root(), Path)
        True
    """
    return Path(os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "llmpack"))


def api_key() -> str | None:
    """``$LLMPACK_API_KEY``, or ``None`` when unset or empty.

    Example:
        >>> api_key() is None or isinstance(api_key(), str)
        True
    """
    return os.environ.get(ENV_API_KEY) or None


def source_date_epoch() -> int | None:
    """``$SOURCE_DATE_EPOCH`` as an integer, or ``None`` when unset or empty.

    Raises:
        BadInputError: the value is not an integer.

    Example:
        >>> import os
        >>> os.environ[ENV_SOURCE_DATE_EPOCH] = "1700000000"; source_date_epoch()
        1700000000
        >>> del os.environ[ENV_SOURCE_DATE_EPOCH]
    """
    raw = _raw(ENV_SOURCE_DATE_EPOCH)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadInputError(f"{ENV_SOURCE_DATE_EPOCH}={raw!r} is not an integer: "
                            "set it to seconds since 1970 or unset it") from None
