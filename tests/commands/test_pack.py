"""`llmpack pack` CLI: json output with digests, human output, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import llmpack.cli


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llmpack.testing import tiny_model

    d = tmp_path_factory.mktemp("clipack") / "gpt2-tiny"
    tiny_model("gpt2").save_pretrained(d, max_shard_size="200KB")
    return d


def test_pack_json_gives_digests(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "build"
    code = llmpack.cli.main(["pack", str(small_model), "--out", str(out), "--name", "gpt2-tiny", "--tag", "v1",
                             "--source-date-epoch", "1700000000", "--format", "json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    index = json.loads((out / "oci" / "index.json").read_text())
    assert data["manifest_digest"] == index["manifests"][0]["digest"]
    assert data["reference"] == "gpt2-tiny:v1"
    assert len(data["layers"]) >= 2 and all(layer["digest"].startswith("sha256:") for layer in data["layers"])
    assert data["paths"]["dockerfile"] == str(out / "Dockerfile")
    # same input, same flags -> same digest; human output names it
    code = llmpack.cli.main(["pack", str(small_model), "--out", str(tmp_path / "again"), "--name", "gpt2-tiny",
                             "--tag", "v1", "--source-date-epoch", "1700000000"])
    assert code == 0
    assert data["manifest_digest"] in capsys.readouterr().out


def test_pack_modelpack_and_runtime_flags(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mp"
    code = llmpack.cli.main(["pack", str(small_model), "--out", str(out), "--artifact", "modelpack",
                             "--runtime", "vllm", "--base-image", "vllm/vllm-openai:v0.11.0", "--format", "json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["artifact"] == "modelpack" and data["runtime"] == "vllm"
    text = (out / "Dockerfile").read_text()  # the image's entrypoint runs `vllm serve`: arguments only
    assert "ENTRYPOINT" not in text and 'CMD ["/models/' in text and "ARG BASE_IMAGE=vllm/vllm-openai:v0.11.0\n" in text


def test_pack_errors_map_to_exit_codes(small_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert llmpack.cli.main(["pack", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    model = tmp_path / "m"
    shutil.copytree(small_model, model)
    (model / ".env").write_text("TOKEN=x")
    assert llmpack.cli.main(["pack", str(model), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert ".env" in err and "--allow-file" in err and err.count("\n") == 1
    assert llmpack.cli.main(["pack", str(model), "--out", str(tmp_path / "o"), "--allow-file", ".env",
                             "--quiet"]) == 0


def test_python_m_llmpack_pack(small_model: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "llmpack", "pack", str(small_model), "--out", str(tmp_path / "b"),
                           "--format", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["manifest_digest"].startswith("sha256:")
