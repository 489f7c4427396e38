"""Default evaluation text slices and resolve_text()."""

from __future__ import annotations

import pytest

from llmpack.errors import BadInputError
from llmpack.measure.text import default_text, looks_like_file, resolve_text


def test_slices_are_fixed_and_disjoint() -> None:
    ev, ca, ho = (default_text(k, 1000) for k in ("eval", "calib", "heldout"))
    assert len(ev) == len(ca) == len(ho) == 1000
    assert ev == default_text("eval", 1000)  # reproducible
    assert default_text("eval", 2000) == ev + ca
    with pytest.raises(ValueError):
        default_text("train")


def test_resolve_text_forms(tmp_path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("from a file", encoding="utf-8")
    assert resolve_text(f) == "from a file"
    assert resolve_text(str(f)) == "from a file"
    assert resolve_text("just text") == "just text"
    assert resolve_text(["a", "b"]) == "a\n\nb"
    assert resolve_text(None) == default_text("eval")
    long_line = "word " * 200  # longer than a file name may be: still text, not an OSError
    assert resolve_text(long_line) == long_line and not looks_like_file(long_line)
    with pytest.raises(BadInputError, match="empty"):
        resolve_text("   ")
    with pytest.raises(BadInputError, match="cannot read text file"):
        resolve_text(tmp_path / "missing.txt")
