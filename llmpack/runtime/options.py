"""The runtime's environment variables, read in one place.

* ``LLMPACK_INT8_KERNEL`` (:data:`ENV_KERNEL`): which int8 kernel runs W8A8 layers (see
  :mod:`llmpack.runtime.kernels`). ``auto`` (the default) picks, by CPU flags, the fastest kernel that computes
  the file's compressed-tensors semantics up to float rounding; ``avx2-7bit`` and ``onednn-7bit`` are the
  faster, less exact opt-in modes (7-bit centred tokens); ``vnni``, ``avx2``, ``int_mm`` and ``dequant`` force
  one exact kernel.
* ``LLMPACK_CACHE`` (:data:`llmpack.constants.ENV_CACHE`): where the native kernels are built.

Example:
    >>> kernel_option() in KERNEL_CHOICES
    True
"""

from __future__ import annotations

import os

from llmpack.constants import ENV_CACHE
from llmpack.errors import ConfigError

__all__ = ["ENV_KERNEL", "KERNEL_CHOICES", "APPROXIMATE", "kernel_option", "cache_root"]

ENV_KERNEL = "LLMPACK_INT8_KERNEL"
KERNEL_CHOICES = ("auto", "vnni", "avx2", "int_mm", "dequant", "avx2-7bit", "onednn-7bit")
"""Values of ``LLMPACK_INT8_KERNEL``."""
APPROXIMATE = frozenset({"avx2-7bit", "onednn-7bit"})
"""Kernels that do not compute the file's semantics (7-bit centred tokens): opt-in only."""


def kernel_option() -> str:
    """``LLMPACK_INT8_KERNEL`` lower-cased (``auto`` when unset).

    Raises:
        ConfigError: the value is not one of :data:`KERNEL_CHOICES`.

    Example:
        >>> kernel_option()
        'auto'
    """
    raw = os.environ.get(ENV_KERNEL, "").strip().lower() or "auto"
    if raw not in KERNEL_CHOICES:
        raise ConfigError(f"{ENV_KERNEL}={raw!r} is not a kernel: choose one of {', '.join(KERNEL_CHOICES)}")
    return raw


def cache_root() -> str:
    """``$LLMPACK_CACHE`` or ``~/.cache/llmpack``.

    Example:
        >>> isinstance(cache_root(), str)
        True
    """
    return os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "llmpack")
