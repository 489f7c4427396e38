"""Property tests (issue 8 item 2), with hypothesis: round trips through the core writer and the lazy
reader, shard-plan invariants, deterministic tar layers (parsed by ``tarfile`` and ``umoci``), and strict
header validation of everything the writer produces.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from llmpack.checkpoint.reader import DTYPE_FROM_ST, dtype_size
from llmpack.checkpoint.validate import DTYPE_SIZES, CorruptFileError, validate_safetensors
from llmpack.checkpoint.writer import OutSpec, ShardWriter, plan_shards
from llmpack.pack.tar import layer_members, write_tar

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int16,
          torch.int32, torch.int64, torch.bool]
DTYPES += [getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]
NAME = st.from_regex(r"[a-z][a-z0-9_]{0,6}(\.[a-z0-9_]{1,6}){0,2}", fullmatch=True)
SHAPE = st.lists(st.integers(0, 5), min_size=0, max_size=3).map(tuple)


def _random_tensor(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Arbitrary bit patterns (NaNs, infs, subnormals included) of ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    n = 1
    for s in shape:
        n *= s
    raw = torch.randint(0, 256, (n * dtype_size(dtype),), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """Random state dicts: every dtype, 0-dim / empty shapes, non-contiguous views, shared storage."""
    names = draw(st.lists(NAME, min_size=1, max_size=8, unique=True))
    out: dict[str, torch.Tensor] = {}
    for i, name in enumerate(names):
        dtype = draw(st.sampled_from(DTYPES))
        shape = draw(SHAPE)
        kind = draw(st.sampled_from(["plain", "transposed", "strided", "shared"]))
        seed = draw(st.integers(0, 2**31 - 1))
        if kind == "transposed" and len(shape) >= 2:
            t = _random_tensor(shape[::-1], dtype, seed).transpose(0, -1)  # non-contiguous
        elif kind == "strided" and len(shape) >= 1:
            t = _random_tensor((shape[0] * 2,) + shape[1:], dtype, seed)[::2]
        elif kind == "shared" and out:
            prev = out[draw(st.sampled_from(sorted(out)))]
            t = prev.reshape(-1)[: prev.numel() // 2] if prev.numel() else prev  # a view of another's storage
        else:
            t = _random_tensor(shape, dtype, seed)
        out[name] = t
    return out


def _bits(t: torch.Tensor) -> bytes:
    if not t.numel():
        return b""
    return torch.empty(t.shape, dtype=t.dtype).copy_(t).reshape(-1).view(torch.uint8).numpy().tobytes()


@SETTINGS
@given(sd=state_dicts(), limit=st.sampled_from([64, 256, 10**9]))
def test_state_dict_round_trip(sd: dict[str, torch.Tensor], limit: int) -> None:
    import llmpack

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        w = ShardWriter(d, [OutSpec(n, tuple(t.shape), t.dtype) for n, t in sd.items()], limit)
        for n, t in sd.items():
            w.write(n, t)
        records = w.close()
        for r in records:
            if r.name.endswith(".safetensors"):
                validate_safetensors(d / r.name)
        got = llmpack.open(d)
        assert set(got) == set(sd)
        for n, want in sd.items():
            g = got[n]
            assert g.dtype == want.dtype and tuple(g.shape) == tuple(want.shape), n
            assert _bits(g) == _bits(want), n
        # the safetensors library itself reads the same bytes
        from safetensors import safe_open

        for r in records:
            if r.name.endswith(".safetensors"):
                with safe_open(str(d / r.name), "pt") as f:
                    for k in f.keys():
                        assert _bits(f.get_tensor(k)) == _bits(sd[k]), k


@SETTINGS
@given(sizes=st.lists(st.integers(0, 5000), min_size=0, max_size=40), limit=st.integers(1, 6000))
def test_shard_plan_invariants(sizes: list[int], limit: int) -> None:
    named = {f"t{i}": s for i, s in enumerate(sizes)}
    plan = plan_shards(named, limit)
    placed = [n for names in plan.filename_to_tensors.values() for n in names]
    assert sorted(placed) == sorted(named), "every tensor exactly once"
    assert set(plan.tensor_to_filename) == set(named)
    order = list(named)
    for fname, names in plan.filename_to_tensors.items():
        assert names == sorted(names, key=order.index), "arrival order kept within a shard"
        total = sum(named[n] for n in names)
        assert total <= limit or len(names) == 1, (fname, total, limit)
        for n in names:
            assert plan.tensor_to_filename[n] == fname
    assert plan.total_size == sum(sizes)
    if len(plan.filename_to_tensors) > 1:
        assert all(f.startswith("model-") and f.endswith(".safetensors") for f in plan.filename_to_tensors)


FILE_NAME = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True).filter(lambda s: s not in (".", ".."))


@st.composite
def file_trees(draw: st.DrawFn) -> dict[str, bytes]:
    paths = draw(st.lists(st.lists(FILE_NAME, min_size=1, max_size=3).map("/".join), min_size=1, max_size=6,
                          unique=True))
    # no path may be both a file and a directory
    files = sorted(paths)
    assume(not any(b.startswith(a + "/") for a in files for b in files))
    return {p: draw(st.binary(min_size=0, max_size=700)) for p in files}


def _tar_of(root: Path, tree: dict[str, bytes], mtime: int) -> bytes:
    members = layer_members([(rel, root / rel, len(data)) for rel, data in tree.items()], prefix="models/m")
    buf = io.BytesIO()
    write_tar(members, lambda b: buf.write(b), mtime=mtime)
    return buf.getvalue()


@SETTINGS
@given(tree=file_trees(), mtime=st.sampled_from([0, 1_700_000_000]))
def test_tar_layers_deterministic_and_parse(tree: dict[str, bytes], mtime: int) -> None:
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        for root in (Path(a), Path(b)):
            for rel, data in tree.items():
                p = root / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
        (Path(b) / next(iter(tree))).chmod(0o600)  # modes, mtimes and paths on disk must not matter
        t1, t2 = _tar_of(Path(a), tree, mtime), _tar_of(Path(b), tree, mtime)
    assert t1 == t2
    with tarfile.open(fileobj=io.BytesIO(t1), mode="r:") as tf:
        got = {}
        for m in tf.getmembers():
            assert not m.name.startswith("/") and ".." not in m.name.split("/")
            assert m.name.startswith("models")
            assert m.uid == m.gid == 0 and m.uname == m.gname == "" and m.mtime == mtime
            assert m.mode == (0o755 if m.isdir() else 0o644)
            if m.isreg():
                f = tf.extractfile(m)
                assert f is not None
                got[m.name.removeprefix("models/m/")] = f.read()
    assert got == tree


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sd=state_dicts())
def test_pack_twice_identical_and_umoci_unpacks(sd: dict[str, torch.Tensor]) -> None:
    if shutil.which("umoci") is None:
        pytest.skip("umoci not installed (make tools installs it)")
    from llmpack.pack.api import pack

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        model = d / "m"
        model.mkdir()
        w = ShardWriter(model, [OutSpec(n, tuple(t.shape), t.dtype) for n, t in sd.items()], 256)
        for n, t in sd.items():
            w.write(n, t)
        w.close()
        (model / "config.json").write_text(json.dumps({"model_type": "x"}))
        r1 = pack(model, d / "b1", name="m", quiet=True)
        r2 = pack(model, d / "b2", name="m", quiet=True)
        assert r1.manifest_digest == r2.manifest_digest
        blobs = lambda b: {p.name: p.read_bytes() for p in (b / "oci" / "blobs" / "sha256").iterdir()}  # noqa: E731
        assert blobs(d / "b1") == blobs(d / "b2")
        bundle = d / "bundle"
        r = subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{d / 'b1' / 'oci'}:latest", str(bundle)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        inside = bundle / "rootfs" / "models" / "m"
        want = {p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*") if p.is_file()}
        got = {p.relative_to(inside).as_posix(): p.read_bytes() for p in inside.rglob("*") if p.is_file()}
        assert got == want


def test_validator_table_matches_reader() -> None:
    """The validator accepts exactly the dtypes the reader maps, with the same element sizes."""
    assert set(DTYPE_FROM_ST) <= set(DTYPE_SIZES)
    for name, dt in DTYPE_FROM_ST.items():
        assert DTYPE_SIZES[name] == dtype_size(dt), name


@SETTINGS
@given(sd=state_dicts(), cut=st.integers(1, 10_000), delta=st.integers(1, 2**40))
def test_validation_rejects_damage(sd: dict[str, torch.Tensor], cut: int, delta: int) -> None:
    """Truncating a written file anywhere, or growing its header length, is always caught as corruption."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        w = ShardWriter(d, [OutSpec(n, tuple(t.shape), t.dtype) for n, t in sd.items()], 10**9)
        for n, t in sd.items():
            w.write(n, t)
        w.close()
        p = d / "model.safetensors"
        raw = p.read_bytes()
        validate_safetensors(p)
        p.write_bytes(raw[: max(0, len(raw) - cut)])
        with pytest.raises(CorruptFileError):
            validate_safetensors(p)
        n = int.from_bytes(raw[:8], "little") + delta
        p.write_bytes(n.to_bytes(8, "little") + raw[8:])
        with pytest.raises(CorruptFileError):
            validate_safetensors(p)



def test_one_element_slice_regression(tmp_path: Path) -> None:
    """Found by the round-trip property: a one-element slice of a larger tensor keeps its old stride, so
    ``contiguous().reshape(-1).view(torch.uint8)`` raised. Both the writer and the in-memory source hash it."""
    import llmpack

    base = torch.arange(8, dtype=torch.float64)
    m = torch.nn.Module()
    m.register_buffer("one", base[::4][1:])  # shape [1], stride 4
    m.register_buffer("w", torch.randn(3, 3))
    assert m.one.stride() == (4,)
    res = llmpack.quantize(m, "bf16", out=tmp_path / "out", quiet=True)
    assert res.out_dir is not None
    got = llmpack.open(tmp_path / "out")
    assert got["one"].item() == 4.0 and got["one"].dtype == torch.bfloat16
