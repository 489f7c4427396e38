"""verify(): digests, sizes, index vs shards; a mismatch names the file."""

from __future__ import annotations

import json
import shutil

import pytest

from llmpack.errors import IntegrityError, SourceNotFoundError
from llmpack.pipeline import quantize
from llmpack.verify import verify


@pytest.fixture()
def model_dir(tiny_dirs, tmp_path):
    return quantize(tiny_dirs["gpt2"], "bf16", out=tmp_path / "m", max_shard_size="60KB", quiet=True).out_dir


def test_verify_ok(model_dir) -> None:
    r = verify(model_dir)
    assert r.ok and r.kind == "model" and r.tensors > 10 and r.files >= 4


def test_corrupt_shard(model_dir) -> None:
    p = sorted(model_dir.glob("model-*.safetensors"))[1]
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=p.name):
        verify(model_dir)


def test_truncated_and_missing(model_dir) -> None:
    p = sorted(model_dir.glob("model-*.safetensors"))[0]
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(IntegrityError, match=f"{p.name}: size"):
        verify(model_dir)
    p.unlink()
    with pytest.raises(IntegrityError, match="missing"):
        verify(model_dir)
    with pytest.raises(SourceNotFoundError):
        verify(model_dir / "nope")


def test_index_mismatch_and_extra_file(model_dir, tmp_path) -> None:
    other = tmp_path / "copy"
    shutil.copytree(model_dir, other)
    idx = model_dir / "model.safetensors.index.json"
    data = json.loads(idx.read_text())
    name = sorted(data["weight_map"])[0]
    data["weight_map"][name] = "model-00002-of-00009.safetensors"
    idx.write_text(json.dumps(data))
    # also fix up llmpack.json so only the index/shard check can catch it
    man = json.loads((model_dir / "llmpack.json").read_text())
    from llmpack.checkpoint.manifest import file_entry

    man["files"]["model.safetensors.index.json"] = file_entry(idx)
    (model_dir / "llmpack.json").write_text(json.dumps(man))
    with pytest.raises(IntegrityError, match=name.replace(".", r"\.")):
        verify(model_dir)
    shutil.copy(sorted(other.glob("model-*.safetensors"))[0], other / "stray.safetensors")
    with pytest.raises(IntegrityError, match="stray.safetensors"):
        verify(other)
