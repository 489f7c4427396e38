"""The data-only model image as an OCI image index (linux/amd64 + linux/arm64 over the same layers).

Checked by llmpack's own verifier and by the real tools: umoci (per platform), skopeo (``--override-arch``),
and the loopback ``docker-registry`` (push with ``--all``, the tag resolves to the index digest).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from llmpack.errors import BadInputError
from llmpack.pack import pack, verify_layout
from packtools import need, tree_files

PLATFORMS = "linux/amd64,linux/arm64"


def _run(cmd: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _blob(out: Path, digest: str) -> dict:
    return json.loads((out / "oci" / "blobs" / "sha256" / digest[7:]).read_bytes())


def test_index_has_one_manifest_per_platform_over_the_same_layers(packable_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    res = pack(packable_model, out, name="tiny", tag="v1", platform=PLATFORMS, quiet=True)
    assert res.platforms == ["linux/amd64", "linux/arm64"]
    top = json.loads((out / "oci" / "index.json").read_text())["manifests"]
    assert [(m["mediaType"], m["digest"]) for m in top] == [("application/vnd.oci.image.index.v1+json",
                                                             res.manifest_digest)]
    index = _blob(out, res.manifest_digest)
    assert [m["platform"] for m in index["manifests"]] == [{"os": "linux", "architecture": "amd64"},
                                                           {"os": "linux", "architecture": "arm64"}]
    manifests = [_blob(out, m["digest"]) for m in index["manifests"]]
    assert manifests[0]["layers"] == manifests[1]["layers"] == [
        {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size} for layer in res.layers]
    archs = [_blob(out, m["config"]["digest"])["architecture"] for m in manifests]
    assert archs == ["amd64", "arm64"]
    assert verify_layout(out / "oci").ok
    # deterministic: a second pack gives the same index digest and writes no new blob
    again = pack(packable_model, out, name="tiny", tag="v1", platform=PLATFORMS, quiet=True)
    assert again.manifest_digest == res.manifest_digest and again.blobs_written == 0
    # the deploy files pin the index digest
    assert f"tiny:v1@{res.manifest_digest}" in (out / "deploy" / "compose.yaml").read_text()


def test_multiarch_refuses_bad_platform_lists(packable_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="twice"):
        pack(packable_model, tmp_path / "a", platform="linux/amd64,linux/amd64", quiet=True)
    with pytest.raises(BadInputError, match="needs artifact 'image'"):
        pack(packable_model, tmp_path / "b", platform=PLATFORMS, artifact="modelpack", quiet=True)
    with pytest.raises(BadInputError, match="os/arch"):
        pack(packable_model, tmp_path / "c", platform="linux/amd64,arm64", quiet=True)


@pytest.mark.tools
def test_umoci_unpacks_each_platform(packable_model: Path, tmp_path: Path) -> None:
    need("umoci")
    out = tmp_path / "b"
    res = pack(packable_model, out, name="tiny", tag="v1", platform=PLATFORMS, quiet=True)
    index = _blob(out, res.manifest_digest)
    # umoci 0.4 calls a tag naming an index of two manifests "ambiguous" (it has no platform selection):
    # tag each platform's manifest, the one `docker pull --platform` would pick, and unpack it
    for m in index["manifests"]:
        arch = m["platform"]["architecture"]
        layout = json.loads((out / "oci" / "index.json").read_text())
        layout["manifests"].append({"mediaType": m["mediaType"], "digest": m["digest"], "size": m["size"],
                                    "annotations": {"org.opencontainers.image.ref.name": f"v1-{arch}"}})
        (out / "oci" / "index.json").write_text(json.dumps(layout))
        bundle = tmp_path / f"bundle-{arch}"
        proc = _run(["umoci", "unpack", "--image", f"{out / 'oci'}:v1-{arch}", str(bundle)])
        assert proc.returncode == 0, proc.stderr
        assert tree_files(bundle / "rootfs" / "models" / "tiny") == tree_files(packable_model)


@pytest.mark.tools
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_skopeo_picks_the_platform_from_the_index(arch: str, packable_model: Path, tmp_path: Path) -> None:
    need("skopeo")
    out = tmp_path / "b"
    res = pack(packable_model, out, name="tiny", tag="v1", platform=PLATFORMS, quiet=True)
    want = next(m["digest"] for m in _blob(out, res.manifest_digest)["manifests"]
                if m["platform"]["architecture"] == arch)
    dest = tmp_path / "dir"
    proc = _run(["skopeo", "--override-arch", arch, "--override-os", "linux", "copy", "--quiet",
                 f"oci:{out / 'oci'}:v1", f"dir:{dest}"])
    assert proc.returncode == 0, proc.stderr
    assert "sha256:" + hashlib.sha256((dest / "manifest.json").read_bytes()).hexdigest() == want
    for layer in res.layers:
        assert (dest / layer.digest[7:]).stat().st_size == layer.size


@pytest.mark.tools
def test_registry_push_all_keeps_the_index_digest(packable_model: Path, tmp_path: Path, registry: str) -> None:
    out = tmp_path / "b"
    res = pack(packable_model, out, name="tiny", tag="v1", platform=PLATFORMS, registry=registry, quiet=True)
    ref = f"docker://{registry}/llmpack/tiny:v1"
    push = _run(["skopeo", "copy", "--quiet", "--all", "--preserve-digests", "--dest-tls-verify=false",
                 f"oci:{out / 'oci'}:v1", ref])
    assert push.returncode == 0, push.stderr
    raw = _run(["skopeo", "inspect", "--raw", "--tls-verify=false", ref])
    assert raw.returncode == 0, raw.stderr
    assert "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest() == res.manifest_digest
    assert json.loads(raw.stdout)["mediaType"] == "application/vnd.oci.image.index.v1+json"
    for arch in ("amd64", "arm64"):
        insp = _run(["skopeo", "--override-arch", arch, "inspect", "--tls-verify=false", ref])
        assert insp.returncode == 0, insp.stderr
        assert json.loads(insp.stdout)["Architecture"] == arch
    # pull back by digest: what a Deployment pinned to the digest gets
    back = tmp_path / "pulled"
    pull = _run(["skopeo", "copy", "--quiet", "--all", "--preserve-digests", "--src-tls-verify=false",
                 f"docker://{registry}/llmpack/tiny@{res.manifest_digest}", f"oci:{back}:v1"])
    assert pull.returncode == 0, pull.stderr
    assert json.loads((back / "index.json").read_text())["manifests"][0]["digest"] == res.manifest_digest
