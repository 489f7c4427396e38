"""The real container tools accept llmpack's output: umoci, skopeo, docker-registry, podman.

Each test skips only when its tool is absent (``make tools`` installs them).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from llmpack.pack import pack
from packtools import ULIMITS, need, tree_files

pytestmark = pytest.mark.tools


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=kw.pop("timeout", 120), **kw)  # type: ignore[arg-type]


def test_umoci_unpack_gives_byte_identical_files(packable_model: Path, tmp_path: Path) -> None:
    need("umoci")
    out = tmp_path / "b"
    pack(packable_model, out, name="tiny", tag="v1", quiet=True)
    bundle = tmp_path / "bundle"
    proc = _run(["umoci", "unpack", "--image", f"{out / 'oci'}:v1", str(bundle)])
    assert proc.returncode == 0, proc.stderr
    model = bundle / "rootfs" / "models" / "tiny"
    assert tree_files(model) == tree_files(packable_model)
    for p in [model, *model.rglob("*")]:
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (0, 0)
        assert st.st_mode & 0o777 == (0o755 if p.is_dir() else 0o644)
    runtime_cfg = json.loads((bundle / "config.json").read_text())
    assert "LLMPACK_MODEL=/models/tiny" in runtime_cfg["process"]["env"]


def test_umoci_refuses_a_corrupt_blob(packable_model: Path, tmp_path: Path) -> None:
    need("umoci")
    out = tmp_path / "b"
    res = pack(packable_model, out, quiet=True)
    blob = out / "oci" / "blobs" / "sha256" / res.layers[1].digest[7:]
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the shard's bytes, not a tar header
    blob.write_bytes(bytes(data))
    proc = _run(["umoci", "unpack", "--image", f"{out / 'oci'}:latest", str(tmp_path / "bundle")])
    assert proc.returncode != 0
    assert "digest" in (proc.stderr + proc.stdout).lower()


def test_skopeo_copy_to_dir_reads_every_blob(packable_model: Path, tmp_path: Path) -> None:
    need("skopeo")
    out = tmp_path / "b"
    res = pack(packable_model, out, quiet=True)
    dest = tmp_path / "dir"
    proc = _run(["skopeo", "copy", "--quiet", "--preserve-digests", f"oci:{out / 'oci'}:latest", f"dir:{dest}"])
    assert proc.returncode == 0, proc.stderr
    assert "sha256:" + hashlib.sha256((dest / "manifest.json").read_bytes()).hexdigest() == res.manifest_digest
    for layer in res.layers:
        assert (dest / layer.digest[7:]).read_bytes() == (out / "oci" / "blobs" / "sha256" / layer.digest[7:]).read_bytes()


@pytest.mark.parametrize("artifact", ["image", "modelpack"])
def test_push_to_registry_and_pull_back_same_digests(artifact: str, packable_model: Path, tmp_path: Path,
                                                      registry: str) -> None:
    out = tmp_path / "b"
    res = pack(packable_model, out, artifact=artifact, name="tiny", tag="t1", quiet=True)
    ref = f"docker://{registry}/llmpack/tiny-{artifact}:t1"
    push = _run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                 f"oci:{out / 'oci'}:t1", ref])
    assert push.returncode == 0, push.stderr
    raw = _run(["skopeo", "inspect", "--raw", "--tls-verify=false", ref])
    assert raw.returncode == 0, raw.stderr
    assert "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest() == res.manifest_digest
    back = tmp_path / "pulled"
    pull = _run(["skopeo", "copy", "--quiet", "--preserve-digests", "--src-tls-verify=false", ref,
                 f"oci:{back}:t1"])
    assert pull.returncode == 0, pull.stderr
    index = json.loads((back / "index.json").read_text())
    assert index["manifests"][0]["digest"] == res.manifest_digest
    blobs = out / "oci" / "blobs" / "sha256"
    for layer in res.layers:
        assert (back / "blobs" / "sha256" / layer.digest[7:]).read_bytes() == (blobs / layer.digest[7:]).read_bytes()
    man = json.loads((back / "blobs" / "sha256" / res.manifest_digest[7:]).read_text())
    if artifact == "modelpack":
        assert man["artifactType"] == "application/vnd.cncf.model.manifest.v1+json"
        assert {d["annotations"]["org.cncf.model.filepath"] for d in man["layers"]} == set(tree_files(packable_model))


def test_podman_build_and_run_checks_every_file(packable_model: Path, tmp_path: Path,
                                                podman_env: dict[str, str]) -> None:
    out = tmp_path / "b"
    res = pack(packable_model, out, name="tiny", runtime="none", quiet=True)
    dockerfile = (out / "Dockerfile").read_text()
    # Debian's podman 4.3 (buildah 1.28) rejects COPY --link (BuildKit and newer buildah accept it):
    # the layers are the same without it.
    assert dockerfile.count("COPY --link ") == 6
    (out / "Dockerfile.podman").write_text(dockerfile.replace("COPY --link ", "COPY "))
    build = _run(["podman", "build", *ULIMITS, "--build-arg", "BASE_IMAGE=localhost/base:latest",
                  "-f", str(out / "Dockerfile.podman"), "-t", "localhost/tiny:test", str(out)],
                 env=podman_env, timeout=300)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    expected = {rel: hashlib.sha256(data).hexdigest() for rel, data in tree_files(packable_model).items()}
    script = 'cd "$LLMPACK_MODEL" && id -u && find . -type f | sort | xargs sha256sum'
    run = _run(["podman", "run", "--rm", *ULIMITS, "--network=none", "localhost/tiny:test", "sh", "-c", script],
               env=podman_env, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0] == "65532"  # non-root USER
    got = {}
    for line in lines[1:]:
        digest, path = line.split(maxsplit=1)
        got[path.removeprefix("./")] = digest
    assert got == expected
    assert len(res.layers) == 6
