"""CLI inspect: human and JSON output."""

from __future__ import annotations

import json

from llmpack.cli import main


def test_cli_inspect(tiny_dirs, capsys) -> None:
    assert main(["inspect", str(tiny_dirs["bert"]), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["dtypes"]["F32"]["tensors"] == data["num_tensors"] and data["shards"][0]["file"] == "model.safetensors"
    assert main(["inspect", str(tiny_dirs["bert"])]) == 0
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "F32" in out
