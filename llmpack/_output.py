"""Human / JSON output and progress bars for the CLI and long-running API calls."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Iterator

from tqdm import tqdm

from llmpack._env import progress_enabled

__all__ = ["progress", "emit", "color_enabled"]


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(total: int | None, desc: str, *, unit: str = "B", quiet: bool = False, **kw: Any) -> tqdm:
    """A tqdm bar on stderr, counted in bytes by default; disabled when quiet or stderr is not a TTY.

    Example:
        >>> with progress(10, "work", quiet=True) as bar:
        ...     bar.update(10)
    """
    disable = quiet or not _tty() or not progress_enabled()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=(unit == "B"), unit_divisor=1024 if unit == "B" else 1000,
                disable=disable, file=sys.stderr, leave=False, dynamic_ncols=True, **kw)


def color_enabled() -> bool:
    """Colours only on a TTY and never when ``NO_COLOR`` is set."""
    return _tty() and "NO_COLOR" not in os.environ


def emit(fmt: str, human: str | Iterator[str], data: Any) -> None:
    """Print ``data`` as one JSON document (``fmt == "json"``), the human text, or nothing (``"none"``)."""
    if fmt == "none":
        return
    if fmt == "json":
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        text = human if isinstance(human, str) else "\n".join(human)
        if text:
            print(text)
