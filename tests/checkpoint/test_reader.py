"""Lazy checkpoint reader: reads only what is asked; refuses pickles; detects corrupt headers."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from llmpack.checkpoint.manifest import hash_file
from llmpack.checkpoint.reader import Checkpoint
from llmpack.errors import IntegrityError, SourceNotFoundError, UnsupportedFormatError


def test_reader_lazy_and_info(tmp_path) -> None:
    ts = {"a": torch.randn(4, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).half()}
    save_file(ts, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ck = Checkpoint(tmp_path)
    assert len(ck) == 3 and ck.reads == 0
    assert ck.info("a").shape == (4, 4) and ck.info("c").dtype == torch.float16 and ck.info("b").nbytes == 40
    assert ck.reads == 0
    assert torch.equal(ck["b"], ts["b"])
    assert ck.reads == 1
    assert ck.config is None


def test_sequential_hasher_matches_file_hash(tmp_path) -> None:
    ts = {f"t{i}": torch.randn(100) for i in range(4)}
    save_file(ts, tmp_path / "model.safetensors")
    ck = Checkpoint(tmp_path)
    h = ck.sequential_hasher()
    for _ in ck.stream(hasher=h):
        pass
    assert h.digests()[tmp_path / "model.safetensors"] == hash_file(tmp_path / "model.safetensors")
    h2 = ck.sequential_hasher()  # out of order falls back to a full re-read
    for _ in ck.stream(list(reversed(list(ck))), hasher=h2):
        pass
    assert h2.digests()[tmp_path / "model.safetensors"] == hash_file(tmp_path / "model.safetensors")


def test_reader_refuses_pickles_and_missing(tmp_path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UnsupportedFormatError, match="save_pretrained"):
        Checkpoint(tmp_path)
    with pytest.raises(SourceNotFoundError):
        Checkpoint(tmp_path / "nope")


def test_reader_corrupt(tmp_path) -> None:
    p = tmp_path / "model.safetensors"
    save_file({"a": torch.randn(64)}, p)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="truncated"):
        Checkpoint(tmp_path)
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json......}")
    with pytest.raises(IntegrityError, match="corrupt"):
        Checkpoint(tmp_path)
