"""Memory between streamed steps: what the machine has now, and giving freed memory back.

A streamed step frees a block's weights as it moves on; glibc keeps freed block-sized chunks in its heap
(RSS grows block by block otherwise), so :func:`trim_heap` hands them back after each block and
:func:`free_memory` also collects reference cycles after a whole step.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["available_bytes", "free_memory", "trim_heap"]

_LIBC: Any = None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (``malloc_trim``; a no-op where glibc is not the allocator).

    Example:
        >>> trim_heap()
    """
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def free_memory() -> None:
    """Collect reference cycles and trim the heap (after a streamed step, before the next).

    Example:
        >>> free_memory()
    """
    import gc

    gc.collect()
    trim_heap()


def available_bytes(device: "str | torch.device" = "cpu") -> int:
    """Memory a new model may use on ``device`` now (``MemAvailable`` on CPU, free memory on CUDA).

    Example:
        >>> available_bytes("cpu") > 0
        True
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().available)
