"""Shard plan (integers), streaming writer: byte-compatible with safetensors, deterministic."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save

from llmpack.checkpoint.reader import Checkpoint, read_header
from llmpack.checkpoint.writer import OutSpec, ShardWriter, build_header, plan_shards
from llmpack.errors import BadInputError


def test_plan_shards_integers() -> None:
    p = plan_shards({"a": 6, "b": 6, "c": 2, "d": 6, "e": 2, "f": 2}, 10)
    assert list(p.filename_to_tensors.values()) == [["a"], ["b", "c"], ["d", "e", "f"]]
    assert p.total_size == 24
    assert p.tensor_to_filename["e"] == "model-00003-of-00003.safetensors"
    one = plan_shards({"a": 1, "b": 2}, "1GB")
    assert one.filename_to_tensors == {"model.safetensors": ["a", "b"]} and not one.is_sharded


def test_plan_oversize_tensor_gets_own_shard() -> None:
    p = plan_shards({"a": 3, "big": 50, "c": 3}, 10)
    assert ["big"] in p.filename_to_tensors.values()
    assert sorted(n for v in p.filename_to_tensors.values() for n in v) == ["a", "big", "c"]


def test_header_matches_safetensors_reference() -> None:
    tensors = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(3, dtype=torch.float16)}
    ref = save(tensors, metadata={"format": "pt"})
    # safetensors lays data out by (alignment desc, name); write in that order and compare bytes exactly
    hdr, _ = build_header([OutSpec("b", (2, 3), torch.float32), OutSpec("a", (3,), torch.float16)])
    ours = hdr + tensors["b"].numpy().tobytes() + tensors["a"].numpy().tobytes()
    assert ours == ref


def test_writer_roundtrip_sharded(tmp_path) -> None:
    torch.manual_seed(0)
    ts = {f"layer{i}.weight": torch.randn(16, 8) for i in range(5)}
    ts["bf"] = torch.randn(4).to(torch.bfloat16)
    specs = [OutSpec(n, tuple(t.shape), t.dtype) for n, t in ts.items()]
    w = ShardWriter(tmp_path, specs, 1100)
    for n, t in ts.items():
        w.write(n, t)
    recs = w.close()
    names = [r.name for r in recs]
    assert "model.safetensors.index.json" in names
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ts.values())
    for n, t in ts.items():
        with safe_open(tmp_path / index["weight_map"][n], "pt") as f:
            assert torch.equal(f.get_tensor(n), t)
    ck = Checkpoint(tmp_path)
    assert set(ck) == set(ts)
    for n, t in ts.items():
        assert torch.equal(ck[n], t)
    for r in recs:
        assert (tmp_path / r.name).stat().st_size == r.size
        if r.name.endswith(".safetensors"):
            hdr, start = read_header(tmp_path / r.name)
            assert start % 8 == 0 and hdr["__metadata__"] == {"format": "pt"}


def test_writer_deterministic(tmp_path) -> None:
    ts = {"x": torch.randn(10, 10), "y": torch.randn(3)}
    outs = []
    for k in range(2):
        d = tmp_path / str(k)
        d.mkdir()
        w = ShardWriter(d, [OutSpec(n, tuple(t.shape), t.dtype) for n, t in ts.items()], 300)
        for n, t in ts.items():
            w.write(n, t)
        outs.append([(r.name, r.sha256) for r in w.close()])
        outs[-1].append([(p.name, p.read_bytes()) for p in sorted(d.iterdir())])
    assert outs[0] == outs[1]


def test_writer_refuses_wrong_shape_and_order(tmp_path) -> None:
    w = ShardWriter(tmp_path, [OutSpec("a", (2,), torch.float32), OutSpec("b", (2,), torch.float32)], "1GB")
    with pytest.raises(BadInputError, match="planned"):
        w.write("a", torch.ones(3))
    with pytest.raises(BadInputError, match="order"):
        w.write("b", torch.ones(2))
    w.write("a", torch.ones(2))
    with pytest.raises(BadInputError, match="never written"):
        w.close()
