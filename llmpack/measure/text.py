"""Evaluation and calibration text.

The default text is a fixed, documented slice of CPython's ``pydoc_data.topics`` (English reference
prose that ships with every Python): topics in sorted key order, each stripped, joined with a blank
line. Three disjoint slices:

* ``eval``     characters ``[0, n)``        — perplexity / KL in reports,
* ``calib``    characters ``[n, 2n)``       — calibration for int8 (never used to report accuracy),
* ``heldout``  characters ``[2n, 3n)``      — held-out check of the accuracy budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

__all__ = ["default_text", "resolve_text", "looks_like_file", "SLICES"]

SLICES = ("eval", "calib", "heldout")
DEFAULT_NBYTES = 8192


def _corpus() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def default_text(kind: str = "eval", nbytes: int = DEFAULT_NBYTES) -> str:
    """Return one slice of the default text.

    Example:
        >>> len(default_text("eval", 100))
        100
    """
    if kind not in SLICES:
        raise ValueError(f"unknown text slice {kind!r}: choose one of {SLICES}")
    i = SLICES.index(kind)
    return _corpus()[i * nbytes:(i + 1) * nbytes]


def looks_like_file(text: str) -> bool:
    """True when ``text`` is the path of an existing file (a short, one-line string naming a file).

    Example:
        >>> looks_like_file("hello world, " * 40)
        False
    """
    if len(text) >= 4096 or "\n" in text:
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # name too long, NUL byte ...
        return False


def resolve_text(text: "str | Path | Iterable[str] | None", kind: str = "eval", nbytes: int = DEFAULT_NBYTES) -> str:
    """Turn ``text=`` arguments into one string: ``None`` → default slice; a path → its contents;
    an iterable of strings → joined with blank lines; any other string → itself.

    Example:
        >>> resolve_text(["a", "b"])
        'a\\n\\nb'
    """
    from llmpack.errors import BadInputError

    if text is None:
        return default_text(kind, nbytes)
    if isinstance(text, Path) or (isinstance(text, str) and looks_like_file(text)):
        p = Path(text)
        try:
            out = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise BadInputError(f"cannot read text file {p}: {e}; pass a UTF-8 text file") from e
    elif isinstance(text, str):
        out = text
    else:
        out = "\n\n".join(str(t) for t in text)
    if not out.strip():
        raise BadInputError("the evaluation text is empty: pass a non-empty text, file or iterable of strings")
    return out
