"""The CPU's feature flags, read from ``/proc/cpuinfo`` (the kernel choice and the native build key on them).

Example:
    >>> isinstance(cpu_flags(), set)
    True
"""

from __future__ import annotations

__all__ = ["cpu_flags"]


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
