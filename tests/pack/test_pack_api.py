"""llmpack.pack: layout, layers, config, determinism, incremental re-pack, ModelPack, compression, security."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from llmpack.errors import (
    BadInputError,
    IntegrityError,
    OutputExistsError,
    OutputLockedError,
    SecretFileError,
    UnsafePathError,
)
from llmpack.pack import pack, verify_layout
from llmpack.pack.api import CACHE_FILE, LOCK_FILE
from llmpack.pack.registry_limits import registry_warnings

from packtools import tree_files


def _blob(out: Path, digest: str) -> bytes:
    return (out / "oci" / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()


def _json_blob(out: Path, digest: str) -> dict:
    return json.loads(_blob(out, digest))


def _tar_contents(data: bytes) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        for m in tf.getmembers():
            out[m.name] = tf.extractfile(m).read() if m.isfile() else None
    return out


def test_layout_layers_config_and_files(packable_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "build"
    res = pack(packable_model, out, name="tiny", tag="v1", quiet=True)
    shards = sorted(p.name for p in packable_model.glob("*.safetensors"))
    assert len(shards) == 5
    # one layer per shard, in order, then the small layer
    assert [layer.files for layer in res.layers[:-1]] == [(s,) for s in shards]
    small = res.layers[-1].files
    assert set(small) == {"config.json", "generation_config.json", "llmpack.json", "model.safetensors.index.json",
                          "tokenizer.json"}
    layout = json.loads((out / "oci" / "oci-layout").read_text())
    assert layout == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((out / "oci" / "index.json").read_text())
    assert index["manifests"][0]["digest"] == res.manifest_digest
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "v1"
    man = _json_blob(out, res.manifest_digest)
    assert man["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [d["digest"] for d in man["layers"]] == [layer.digest for layer in res.layers]
    assert all(d["mediaType"] == "application/vnd.oci.image.layer.v1.tar" for d in man["layers"])
    cfg = _json_blob(out, man["config"]["digest"])
    assert cfg["rootfs"] == {"type": "layers", "diff_ids": [layer.diff_id for layer in res.layers]}
    assert "LLMPACK_MODEL=/models/tiny" in cfg["config"]["Env"]
    assert cfg["config"]["User"] == "65532:65532"
    labels = cfg["config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == "tiny"
    assert labels["org.opencontainers.image.version"] == "v1"
    assert labels["org.opencontainers.image.created"] == cfg["created"] == "1970-01-01T00:00:00Z"
    assert labels["io.llmpack.method"] == "bf16"
    # uncompressed: digest == diff_id == sha256 of the blob; files byte-identical under /models/tiny
    unpacked: dict[str, bytes] = {}
    for layer in res.layers:
        data = _blob(out, layer.digest)
        assert layer.digest == layer.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
        assert layer.size == len(data)
        for name, content in _tar_contents(data).items():
            assert name == "models" or name.startswith("models/tiny")
            if content is not None:
                unpacked[name.removeprefix("models/tiny/")] = content
    assert unpacked == tree_files(packable_model)
    # build context: hard links to the source files, Dockerfile, .dockerignore
    for rel in tree_files(packable_model):
        assert os.path.samefile(out / "model" / rel, packable_model / rel)
    assert (out / "Dockerfile").read_text().count("COPY --link") == 6
    assert "oci/" in (out / ".dockerignore").read_text().splitlines()
    assert sorted(res.paths) == ["context", "dockerfile", "dockerignore", "index", "oci"]
    d = res.to_dict()
    assert json.loads(json.dumps(d))["manifest_digest"] == res.manifest_digest
    assert [layer["digest"] for layer in d["layers"]] == [layer.digest for layer in res.layers]
    assert verify_layout(out).diff_ids == 6
    # output modes: files 0644, dirs 0755
    for p in (out / "oci").rglob("*"):
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p


def _pack_in_subprocess(model: Path, out: Path, umask: int) -> None:
    code = (f"import os; os.umask({umask}); from llmpack.pack import pack; "
            f"pack({str(model)!r}, {str(out)!r}, quiet=True)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, capture_output=True)


def test_deterministic_after_touch_and_other_umask(model_copy: Path, tmp_path: Path) -> None:
    _pack_in_subprocess(model_copy, tmp_path / "a", 0o022)
    for p in model_copy.iterdir():
        os.utime(p, (1234567890, 1234567890))
        os.chmod(p, 0o600)
    _pack_in_subprocess(model_copy, tmp_path / "b", 0o077)
    a, b = tree_files(tmp_path / "a" / "oci"), tree_files(tmp_path / "b" / "oci")
    assert a == b and len(a) == 2 + 8
    # SOURCE_DATE_EPOCH changes the bytes (and only through mtime/created)
    res_c = pack(model_copy, tmp_path / "c", source_date_epoch=1700000000, quiet=True)
    assert res_c.manifest_digest != json.loads(a["index.json"])["manifests"][0]["digest"]


def _record_file(model: Path, rel: str) -> None:
    """Update llmpack.json's size/sha256 of ``rel`` (as re-running the quantizer would)."""
    m = json.loads((model / "llmpack.json").read_text())
    data = (model / rel).read_bytes()
    m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (model / "llmpack.json").write_text(json.dumps(m, indent=2, sort_keys=True))


def test_manifest_size_mismatch_is_an_integrity_error(model_copy: Path, tmp_path: Path) -> None:
    with open(model_copy / "config.json", "a") as f:
        f.write(" ")
    with pytest.raises(IntegrityError, match="config.json has .* bytes, llmpack.json records"):
        pack(model_copy, tmp_path / "out", quiet=True)


def test_incremental_repack_writes_only_small_layer_config_manifest(model_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "build"
    first = pack(model_copy, out, quiet=True)
    assert first.blobs_written == 8 and first.bytes_written == sum(
        p.stat().st_size for p in (out / "oci" / "blobs" / "sha256").iterdir())
    shard_blobs = {layer.digest: os.stat(out / "oci" / "blobs" / "sha256" / layer.digest[7:])
                   for layer in first.layers[:-1]}
    # unchanged: nothing new at all, same digest
    again = pack(model_copy, out, quiet=True)
    assert again.manifest_digest == first.manifest_digest and again.bytes_written == 0
    # config.json changed: small layer + config + manifest only
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["llmpack_test"] = 1
    (model_copy / "config.json").write_text(json.dumps(cfg))
    _record_file(model_copy, "config.json")
    second = pack(model_copy, out, quiet=True)
    assert second.manifest_digest != first.manifest_digest
    assert second.blobs_written == 3 and second.blobs_reused == 5
    assert [layer.reused for layer in second.layers] == [True] * 5 + [False]
    new_sizes = second.layers[-1].size + len(_blob(out, second.manifest_digest)) + len(
        _blob(out, second.config_digest))
    assert second.bytes_written == new_sizes
    for digest, st in shard_blobs.items():  # never rewritten
        st2 = os.stat(out / "oci" / "blobs" / "sha256" / digest[7:])
        assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    # the old small layer/config/manifest were garbage-collected; the layout verifies
    assert len(list((out / "oci" / "blobs" / "sha256").iterdir())) == 8
    verify_layout(out)
    # a touched shard is re-hashed (cache miss) but its blob is not rewritten
    os.utime(model_copy / "model-00001-of-00005.safetensors", (5, 5))
    third = pack(model_copy, out, quiet=True)
    assert third.manifest_digest == second.manifest_digest and third.bytes_written == 0


def test_modelpack_artifact(packable_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "mp"
    res = pack(packable_model, out, artifact="modelpack", name="tiny", quiet=True)
    man = _json_blob(out, res.manifest_digest)
    assert man["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
    assert man["config"]["mediaType"] == "application/vnd.cncf.model.config.v1+json"
    cfg = _json_blob(out, man["config"]["digest"])
    assert cfg["modelfs"] == {"type": "layers", "diffIds": [layer.diff_id for layer in res.layers]}
    assert cfg["descriptor"]["name"] == "tiny" and cfg["descriptor"]["family"] == "llama"
    assert cfg["config"]["format"] == "safetensors"
    by_path = {}
    for d in man["layers"]:
        path = d["annotations"]["org.cncf.model.filepath"]
        by_path[path] = d["mediaType"]
        assert _tar_contents(_blob(out, d["digest"])) == {path: (packable_model / path).read_bytes()}
        meta = json.loads(d["annotations"]["org.cncf.model.file.metadata+json"])
        assert meta["size"] == (packable_model / path).stat().st_size and meta["mode"] == 0o644
    assert by_path["model-00001-of-00005.safetensors"] == "application/vnd.cncf.model.weight.v1.tar"
    assert by_path["config.json"] == "application/vnd.cncf.model.weight.config.v1.tar"
    assert set(by_path) == set(tree_files(packable_model))
    assert index_ref(out) == "latest"
    assert verify_layout(out).diff_ids == len(man["layers"])


def index_ref(out: Path) -> str:
    return json.loads((out / "oci" / "index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"]


def test_gzip_is_deterministic_and_verifies(packable_model: Path, tmp_path: Path) -> None:
    a = pack(packable_model, tmp_path / "a", compression="gzip", quiet=True)
    b = pack(packable_model, tmp_path / "b", compression="gzip", quiet=True)
    assert a.manifest_digest == b.manifest_digest
    layer = a.layers[0]
    assert layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip" and layer.digest != layer.diff_id
    raw = gzip.decompress(_blob(tmp_path / "a", layer.digest))
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == layer.diff_id
    assert verify_layout(tmp_path / "a").diff_ids == len(a.layers)


def test_zstd(packable_model: Path, tmp_path: Path) -> None:
    zstandard = pytest.importorskip("zstandard")
    a = pack(packable_model, tmp_path / "a", compression="zstd", quiet=True)
    b = pack(packable_model, tmp_path / "b", compression="zstd", quiet=True)
    assert a.manifest_digest == b.manifest_digest
    assert a.layers[0].media_type.endswith("+zstd")
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(_blob(tmp_path / "a", a.layers[0].digest))
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == a.layers[0].diff_id
    verify_layout(tmp_path / "a")


def test_zstd_missing_is_a_clear_error(packable_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(BadInputError, match="pip install zstandard"):
        pack(packable_model, tmp_path / "z", compression="zstd", quiet=True)
    assert not (tmp_path / "z").exists()


@pytest.mark.parametrize("secret", [".env", "server.pem", "id_rsa", "id_ed25519.pub", ".git/config",
                                    "hf_token", "sub/credentials.json", ".ssh/known_hosts"])
def test_secret_files_are_refused_unless_allowed(model_copy: Path, tmp_path: Path, secret: str) -> None:
    p = model_copy / secret
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("s3cr3t")
    with pytest.raises(SecretFileError, match="--allow-file"):
        pack(model_copy, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()
    res = pack(model_copy, tmp_path / "out", allow_files=[secret.split("/")[0]], quiet=True)
    packed = {f for layer in res.layers for f in layer.files}
    assert secret in packed


def test_caches_vcs_litter_and_pickles_are_skipped(model_copy: Path, tmp_path: Path) -> None:
    (model_copy / ".cache" / "huggingface").mkdir(parents=True)
    (model_copy / ".cache" / "huggingface" / "x.lock").write_text("")
    (model_copy / "__pycache__").mkdir()
    (model_copy / "__pycache__" / "a.pyc").write_bytes(b"x")
    (model_copy / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (model_copy / "training_args.bin").write_bytes(b"\x80\x04pickle")
    res = pack(model_copy, tmp_path / "out", quiet=True)
    packed = {f for layer in res.layers for f in layer.files}
    assert not any(f.startswith((".cache", "__pycache__", ".git")) or f.endswith(".bin") for f in packed)
    assert any("training_args.bin" in w for w in res.warnings)


def test_symlink_outside_is_refused_inside_is_followed(model_copy: Path, tmp_path: Path) -> None:
    (model_copy / "alias.json").symlink_to("config.json")
    res = pack(model_copy, tmp_path / "ok", quiet=True)
    assert "alias.json" in res.layers[-1].files
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    (model_copy / "evil.txt").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside the model directory"):
        pack(model_copy, tmp_path / "bad", quiet=True)


def test_output_rules_and_lock(packable_model: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        pack(packable_model, foreign, quiet=True)
    pack(packable_model, foreign, overwrite=True, quiet=True)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(BadInputError, match="inside the model directory"):
        pack(packable_model, packable_model / "build", quiet=True)
    with pytest.raises(BadInputError, match="invalid image name"):
        pack(packable_model, tmp_path / "x", name="Bad Name", quiet=True)
    with pytest.raises(BadInputError, match="invalid tag"):
        pack(packable_model, tmp_path / "x", tag="-bad", quiet=True)
    with pytest.raises(BadInputError, match="unknown runtime"):
        pack(packable_model, tmp_path / "x", runtime="tgi", quiet=True)
    # a second writer on the same output fails clearly while the first holds the lock
    import fcntl

    out = tmp_path / "locked"
    pack(packable_model, out, quiet=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(OutputLockedError, match="another llmpack pack"):
            pack(packable_model, out, quiet=True)
    finally:
        os.close(fd)
    assert (out / CACHE_FILE).is_file()


def test_plain_hf_dir_without_llmpack_json(tmp_path: Path) -> None:
    from llmpack.testing import tiny_model

    src = tmp_path / "My_Model"
    tiny_model("gpt2").save_pretrained(src)
    res = pack(src, tmp_path / "out", quiet=True)
    assert res.name == "my_model"
    assert [layer.files for layer in res.layers][0] == ("model.safetensors",)
    verify_layout(tmp_path / "out")


def test_registry_limit_warnings() -> None:
    assert registry_warnings([10 * 10**9], ["a"]) == []
    w = registry_warnings([10 * 10**9 + 1, 5], ["big.safetensors", "c"])
    assert len(w) == 1 and "big.safetensors" in w[0] and "--max-shard-size" in w[0]
    w = registry_warnings([1] * 101, [str(i) for i in range(101)])
    assert len(w) == 1 and "101 layers" in w[0] and "--max-shard-size" in w[0]


def test_registry_limit_warning_reaches_pack_result(model_copy: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import llmpack.pack.api as api

    monkeypatch.setattr(api, "registry_warnings",
                        lambda sizes, names: registry_warnings(sizes, names, max_layer_bytes=50_000, max_layers=3))
    res = pack(model_copy, tmp_path / "out", quiet=True)
    assert sum("--max-shard-size" in w for w in res.warnings) == 5 + 1


def test_rerun_after_killed_pack_cleans_temp_files(packable_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    pack(packable_model, out, quiet=True)
    blobs = out / "oci" / "blobs" / "sha256"
    # what a SIGKILL mid-write leaves: a partial temp blob, a temp link in model/, and a lost index update
    (blobs / ".tmp-deadbeef").write_bytes(b"partial")
    (out / "model" / ".llmpack-tmp-config.json").write_bytes(b"partial")
    (out / "oci" / "index.json").unlink()
    res = pack(packable_model, out, quiet=True)
    assert not (blobs / ".tmp-deadbeef").exists() and not (out / "model" / ".llmpack-tmp-config.json").exists()
    assert verify_layout(out).manifests == [res.manifest_digest]
