"""Fault battery, part 1: corrupt or hostile inputs (one test per row of ``faults.FAULTS``).

Each test asserts the documented exit code, one error line naming the file/tensor and the fix, that no
output, temp dir or lock was left, and that the source is byte-for-byte unchanged.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from reltools import (Src, assert_clean, assert_error, cli, make_sharded, make_src, tensors)
from stfile import write_st

FIX = r"re-download|re-quantize"


def _quantize_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path, src: Path, fault: str, *names: str,
                    fix: str = FIX, method: str = "bf16") -> str:
    s = Src(src)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "quantize", src, "--method", method, "--out", out, "-q")
    line = assert_error(fault, code, err, *names, fix=fix)
    assert_clean(out)
    s.unchanged()
    return line


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def test_fault_truncated_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, data=_truncate)
    line = _quantize_fails(capsys, tmp_path, src, "truncated-shard", "model.safetensors", "model.embed.weight")
    assert "truncated" in line


def test_fault_flipped_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")
    assert code == 0, err
    assert cli(capsys, "verify", out)[0] == 0
    shard = out / "model.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x01  # inside the last tensor's data: the header still parses
    shard.write_bytes(bytes(raw))
    s = Src(out)
    code, _, err = cli(capsys, "verify", out)
    assert_error("flipped-byte", code, err, "model.safetensors", "sha256", fix=FIX)
    s.unchanged()


def test_fault_header_past_eof(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, length=10_000)
    line = _quantize_fails(capsys, tmp_path, src, "header-past-eof", "model.safetensors")
    assert "past the end" in line


def test_fault_header_too_large(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, length=2**62)
    line = _quantize_fails(capsys, tmp_path, src, "header-too-large", "model.safetensors")
    assert "limit" in line


def test_fault_header_invalid_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, text=lambda s: s[:-1] + ",}")
    line = _quantize_fails(capsys, tmp_path, src, "header-invalid-json", "model.safetensors")
    assert "JSON" in line


def test_fault_header_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_src(tmp_path)
    p = d / "model.safetensors"
    raw = bytearray(p.read_bytes())
    raw[9] = 0xFF  # inside the header text
    p.write_bytes(bytes(raw))
    line = _quantize_fails(capsys, tmp_path, d, "header-not-utf8", "model.safetensors")
    assert "UTF-8" in line


def test_fault_unknown_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, patch=lambda h: h["model.layer.bias"].update(dtype="Q9"))
    _quantize_fails(capsys, tmp_path, src, "unknown-dtype", "model.safetensors", "model.layer.bias", "Q9",
                    fix="re-export|supported")


def test_fault_shape_size_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, patch=lambda h: h["model.layer.weight"].update(shape=[8, 9]))
    _quantize_fails(capsys, tmp_path, src, "shape-size-mismatch", "model.safetensors", "model.layer.weight")


def _overlap(h: dict) -> None:
    b, e = h["model.layer.bias"]["data_offsets"]
    h["model.layer.bias"]["data_offsets"] = [b - 4, e - 4]


def test_fault_offsets_overlap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, patch=_overlap)
    line = _quantize_fails(capsys, tmp_path, src, "offsets-overlap", "model.safetensors", "model.layer.bias")
    assert "overlap" in line and "model.layer.weight" in line


def _exceed(h: dict) -> None:
    b, e = h["model.steps"]["data_offsets"]
    h["model.steps"]["data_offsets"] = [b + 64, e + 64]


def test_fault_offsets_exceed_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, patch=_exceed, data=lambda d: d + bytes(32))
    _quantize_fails(capsys, tmp_path, src, "offsets-exceed-data", "model.safetensors", "model.steps")


def test_fault_duplicate_tensor_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # rename one key to its neighbour's name in the JSON text: the object then holds it twice
    src = make_src(tmp_path, text=lambda s: s.replace('"model.layer.bias"', '"model.layer.weight"'))
    assert (src / "model.safetensors").read_bytes().count(b'"model.layer.weight"') == 2
    line = _quantize_fails(capsys, tmp_path, src, "duplicate-tensor-names", "model.safetensors",
                           "model.layer.weight")
    assert "twice" in line


def test_fault_bad_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, patch=lambda h: h["__metadata__"].update(step=3))
    line = _quantize_fails(capsys, tmp_path, src, "bad-metadata", "model.safetensors")
    assert "__metadata__" in line


def test_fault_trailing_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, data=lambda d: d + b"junk")
    line = _quantize_fails(capsys, tmp_path, src, "trailing-bytes", "model.safetensors")
    assert "after the last tensor" in line


@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_fault_fifo_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    src = make_src(tmp_path)
    (src / "model.safetensors").unlink()
    if kind == "fifo":
        os.mkfifo(src / "model.safetensors")
    else:
        (src / "model.safetensors").mkdir()
    _quantize_fails(capsys, tmp_path, src, "fifo-weights", "model.safetensors", "not a regular file",
                    fix="replace it")


# --- index and paths -------------------------------------------------------------------------------

def test_fault_index_missing_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_sharded(tmp_path, weight_map={"model.norm.weight": "model-00003-of-00003.safetensors"})
    _quantize_fails(capsys, tmp_path, src, "index-missing-shard", "model.safetensors.index.json",
                    "model-00003-of-00003.safetensors", fix="missing.*re-download")


@pytest.mark.parametrize("text", ["{not json", '{"weight_map": ["a"]}', '{"weight_map": {"a": "x.safetensors", '
                                  '"a": "y.safetensors"}}'])
def test_fault_index_invalid_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    src = make_sharded(tmp_path, index_text=text)
    _quantize_fails(capsys, tmp_path, src, "index-invalid-json", "model.safetensors.index.json",
                    fix="re-download|re-create")


def test_fault_index_dotdot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_st(tmp_path / "outside.safetensors", {"x": torch.ones(2)})
    src = make_sharded(tmp_path, weight_map={"model.norm.weight": "../outside.safetensors"})
    line = _quantize_fails(capsys, tmp_path, src, "index-dotdot", "model.safetensors.index.json",
                           "../outside.safetensors", fix="fix the index")
    assert "not a relative path inside" in line


def test_fault_index_absolute(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = write_st(tmp_path / "outside.safetensors", {"x": torch.ones(2)})
    src = make_sharded(tmp_path, weight_map={"model.norm.weight": str(target)})
    _quantize_fails(capsys, tmp_path, src, "index-absolute", "model.safetensors.index.json", str(target),
                    fix="fix the index")


def test_fault_index_symlink_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = write_st(tmp_path / "outside.safetensors", {"model.norm.weight": torch.ones(8)})
    src = make_sharded(tmp_path, weight_map={"model.norm.weight": "model-00003-of-00003.safetensors"})
    os.symlink(target, src / "model-00003-of-00003.safetensors")
    line = _quantize_fails(capsys, tmp_path, src, "index-symlink-out", "model-00003-of-00003.safetensors",
                           fix="regular file inside")
    assert "leads outside" in line


def test_fault_weight_symlink_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = write_st(tmp_path / "outside.safetensors", tensors())
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    os.symlink(target, src / "model.safetensors")
    _quantize_fails(capsys, tmp_path, src, "weight-symlink-out", "model.safetensors", "leads outside",
                    fix="regular file inside")


def test_fault_tokenizer_symlink_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:secret\n")
    src = make_src(tmp_path)
    (src / "tokenizer.json").unlink()
    os.symlink(secret, src / "tokenizer.json")
    _quantize_fails(capsys, tmp_path, src, "tokenizer-symlink-out", "tokenizer.json", "leads outside",
                    fix="regular file inside")


def test_symlink_inside_is_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Control: a symlink that stays inside the model dir is followed (the check is not a blanket refusal)."""
    src = make_src(tmp_path)
    (src / "real-tokenizer.json").write_text('{"v": 1}')
    (src / "tokenizer.json").unlink()
    os.symlink("real-tokenizer.json", src / "tokenizer.json")
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", tmp_path / "out", "-q")
    assert code == 0, err
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"v": 1}'


# --- model content -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nan_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny Llama whose one Linear weight holds NaN and Inf."""
    from safetensors.torch import load_file, save_file

    from llmpack.testing import tiny_model

    d = tmp_path_factory.mktemp("nan") / "src"
    tiny_model("llama-untied").save_pretrained(d)
    sd = load_file(d / "model.safetensors")
    bad = "model.layers.1.mlp.down_proj.weight"
    sd[bad][0, 0] = float("nan")
    sd[bad][1, 1] = float("inf")
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    return d, bad


@pytest.mark.parametrize("method", ["int8", "fp16", "bf16"])
def test_fault_nan_inf_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str], nan_llama: tuple[Path, str],
                               method: str) -> None:
    src, bad = nan_llama
    line = _quantize_fails(capsys, tmp_path, src, "nan-inf-weights", bad, method=method, fix="fix the source|source")
    assert "NaN" in line or "nan" in line


def test_fault_zero_size_and_0dim(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import llmpack

    t = {"scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "empty3": torch.zeros(3, 0, 2),
         "int_scalar": torch.tensor(7, dtype=torch.int64), "w": torch.randn(4, 4), "flag": torch.tensor(True)}
    src = make_src(tmp_path, tensors=t)
    s = Src(src)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")
    assert code == 0, err
    assert cli(capsys, "verify", out)[0] == 0
    got = llmpack.open(out)
    assert set(got) == set(t)
    for name, want in t.items():
        want = want.to(torch.bfloat16) if want.is_floating_point() else want
        g = got[name]
        assert g.dtype == want.dtype and tuple(g.shape) == tuple(want.shape), name
        assert torch.equal(g.reshape(-1).view(torch.uint8) if g.numel() else g, want.reshape(-1).view(torch.uint8)
                           if want.numel() else want), name
    s.unchanged()
    assert by_id_exit("zero-size-and-0dim") == code


def by_id_exit(fault_id: str) -> int:
    from faults import by_id

    return by_id(fault_id).exit_code


def test_fault_empty_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, tensors={"x": torch.ones(1)}, patch=lambda h: [h.pop("x")], data=lambda d: b"")
    _quantize_fails(capsys, tmp_path, src, "empty-model", str(src), fix="no tensors")


def test_fault_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path, config=None)
    _quantize_fails(capsys, tmp_path, src, "missing-config", "config.json", method="int8",
                    fix="pass an HF model directory")
    # float methods convert bare tensors: no config.json in the output, and it verifies
    out = tmp_path / "float-out"
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")
    assert code == 0, err
    assert not (out / "config.json").exists()
    assert cli(capsys, "verify", out)[0] == 0


@pytest.mark.parametrize("config", ['{"model_type": ', "[1, 2]"])
def test_fault_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str) -> None:
    src = make_src(tmp_path, config=config)
    _quantize_fails(capsys, tmp_path, src, "invalid-config", "config.json", fix="fix or re-create config.json")


def test_fault_pickle_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pickle

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "llama"}))

    class Boom:
        def __reduce__(self):  # noqa: ANN204 - would run on unpickling
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    (src / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    _quantize_fails(capsys, tmp_path, src, "pickle-source", "pytorch_model.bin", fix="never unpickles.*convert")
    _quantize_fails(capsys, tmp_path, src / "pytorch_model.bin", "pickle-source", "pytorch_model.bin",
                    fix="never unpickles.*convert")
    assert not (tmp_path / "PWNED").exists()


def test_fault_output_exists(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = make_src(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")
    assert_error("output-exists", code, err, str(out), fix="--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".llmpack")] == []
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "--overwrite", "-q")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "llmpack.json").is_file()


def test_hf_cache_snapshot_symlinks_are_fine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Control: a Hugging Face cache snapshot links every file into ``../../blobs``; that is not an escape."""
    import shutil

    flat = make_sharded(tmp_path, "flat")
    (flat / "tokenizer.json").write_text('{"v": 2}')
    repo = tmp_path / "models--org--tiny"
    blobs, snap = repo / "blobs", repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, p in enumerate(sorted(flat.iterdir())):
        shutil.copyfile(p, blobs / f"blob{i}")
        os.symlink(f"../../blobs/blob{i}", snap / p.name)
    code, _, err = cli(capsys, "quantize", snap, "--method", "bf16", "--out", tmp_path / "out", "-q")
    assert code == 0, err
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"v": 2}'
