"""Fault battery, part 4: security (issue 8 item 3) — nothing unpickled, safe tar entries, secrets refused,
non-root image, fixed file modes, ``.dockerignore`` contents."""

from __future__ import annotations

import json
import os
import pickle
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest
from reltools import Src, assert_error, cli, make_src

from faults import by_id


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model dir, build dir) of a small bf16 model packed with ``--name rel``."""
    from llmpack.cli import main

    root = tmp_path_factory.mktemp("sec")
    src = make_src(root)
    assert main(["quantize", str(src), "--method", "bf16", "--out", str(root / "m"), "--max-shard-size", "200B",
                 "-q"]) == 0
    assert main(["pack", str(root / "m"), "--out", str(root / "build"), "--name", "rel", "-q"]) == 0
    return root / "m", root / "build"


def _layers(build: Path) -> list[Path]:
    oci = build / "oci"
    index = json.loads((oci / "index.json").read_text())
    man = json.loads((oci / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    return [oci / "blobs" / "sha256" / layer["digest"].split(":")[1] for layer in man["layers"]]


@pytest.mark.parametrize("secret", [".env", "server.pem", "id_rsa", ".git/config", "hf_token", "credentials.json"])
def test_fault_secret_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], packed: tuple[Path, Path],
                           secret: str) -> None:
    import shutil

    model = tmp_path / "m"
    shutil.copytree(packed[0], model)
    (model / secret).parent.mkdir(parents=True, exist_ok=True)
    (model / secret).write_text("TOKEN=hf_abc\n")
    s = Src(model)
    code, _, err = cli(capsys, "pack", model, "--out", tmp_path / "build", "-q")
    assert_error("secret-file", code, err, secret.split("/")[0], fix="--allow-file")
    assert not (tmp_path / "build").exists()  # refused before anything is written
    s.unchanged()
    if "/" not in secret:
        code, _, err = cli(capsys, "pack", model, "--out", tmp_path / "build2", "--allow-file", secret, "-q")
        assert code == 0, err


def test_fault_tar_entries(packed: tuple[Path, Path]) -> None:
    model, build = packed
    layers = _layers(build)
    assert len(layers) >= 3  # sharded model: one layer per shard + the small layer
    seen: dict[str, bytes] = {}
    for blob in layers:
        with tarfile.open(blob, mode="r:") as tf:
            for m in tf.getmembers():
                assert not m.name.startswith("/") and ".." not in m.name.split("/"), m.name
                assert os.path.normpath(m.name) == m.name.rstrip("/"), m.name
                assert m.name == "models" or m.name.startswith(("models/rel/", "models/rel")), m.name
                assert m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "", m.name
                assert m.isdir() or m.isreg(), f"{m.name}: links/devices are never written"
                assert m.mode == (0o755 if m.isdir() else 0o644), (m.name, oct(m.mode))
                if m.isreg():
                    f = tf.extractfile(m)
                    assert f is not None
                    seen[m.name[len("models/rel/"):]] = f.read()
    files = {p.relative_to(model).as_posix(): p.read_bytes() for p in model.rglob("*") if p.is_file()}
    assert seen == files
    # the tar writer normalises names and refuses any that would leave models/<name>/
    from llmpack.errors import UnsafePathError
    from llmpack.pack.tar import layer_members

    names = [m.name for m in layer_members([("sub/./a.json", None, 1), ("b//c.json", None, 1)], prefix="models/x")]
    assert names == ["models/", "models/x/", "models/x/b/", "models/x/b/c.json", "models/x/sub/", "models/x/sub/a.json"]
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../x", "", "a\x00b"):
        with pytest.raises(UnsafePathError):
            layer_members([(bad, None, 1)], prefix="models/x")
    assert by_id("tar-entries").exit_code == 0


def test_file_modes(packed: tuple[Path, Path]) -> None:
    """Files llmpack writes are 0644 and dirs 0755 (model dir and OCI layout), whatever mkdtemp does."""
    model, build = packed
    for root in (model, build / "oci"):
        assert stat.S_IMODE(root.stat().st_mode) == 0o755, root
        for p in root.rglob("*"):
            mode = stat.S_IMODE(p.stat().st_mode)
            assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


def test_fault_dockerfile_user(packed: tuple[Path, Path]) -> None:
    _, build = packed
    lines = (build / "Dockerfile").read_text().splitlines()
    users = [ln.split(None, 1)[1].strip() for ln in lines if ln.startswith("USER ")]
    assert users, "no USER instruction"
    last = users[-1].split(":")[0]
    assert last not in ("root", "0"), users
    ignore = (build / ".dockerignore").read_text().splitlines()
    for entry in (".git", "__pycache__", ".cache", "oci"):
        assert any(ln.strip().strip("/").lstrip("*/").startswith(entry) for ln in ignore), (entry, ignore)
    assert by_id("dockerfile-user").exit_code == 0


class _Unpickled(AssertionError):
    pass


def test_fault_no_unpickling(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Booby-trap every unpickling entry point, then quantize (fp16, with the activation check that loads the
    model), int8, load, measure-free open, and pack a real tiny Llama: none may be called."""
    import torch

    import llmpack
    from llmpack.testing import tiny_model

    calls: list[str] = []

    def trap(name: str) -> Any:
        def f(*a: Any, **k: Any) -> Any:
            calls.append(name)
            raise _Unpickled(f"{name} called")
        return f

    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    s = Src(src)
    monkeypatch.setattr(pickle, "load", trap("pickle.load"))
    monkeypatch.setattr(pickle, "loads", trap("pickle.loads"))
    monkeypatch.setattr(pickle, "Unpickler", trap("pickle.Unpickler"))
    monkeypatch.setattr(torch, "load", trap("torch.load"))
    for method in ("fp16", "int8"):
        out = tmp_path / method
        code, _, err = cli(capsys, "quantize", src, "--method", method, "--out", out, "-q")
        assert code == 0, err
        model = llmpack.load(out)
        assert model is not None
        assert len(llmpack.open(out)) > 0
    code, _, err = cli(capsys, "pack", tmp_path / "int8", "--out", tmp_path / "build", "-q")
    assert code == 0, err
    assert calls == []
    s.unchanged()
    assert by_id("no-unpickling").exit_code == 0
