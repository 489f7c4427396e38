"""CLI quantize: exit codes 0 / 2, JSON output, int8-only flags refused for float methods."""

from __future__ import annotations

import json

from llmpack.cli import main


def test_cli_quantize_ok_json(tiny_dirs, tmp_path, capsys) -> None:
    rc = main(["quantize", str(tiny_dirs["llama"]), "--method", "bf16", "--out", str(tmp_path / "o"),
               "--max-shard-size", "100KB", "--ignore", "lm_head*", "--format", "json", "--quiet"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"]["method"] == "bf16" and data["recipe"]["ignore"] == ["lm_head*"]
    assert any(k.startswith("model-00001-of-") for k in data["files"])


def test_cli_quantize_errors(tiny_dirs, tmp_path, capsys) -> None:
    assert main(["quantize", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmpack: error:") and err.count("\n") == 1
    assert main(["quantize", str(tiny_dirs["llama"]), "--method", "nope", "--out", str(tmp_path / "o")]) == 2
    assert main(["quantize", str(tiny_dirs["llama"]), "--method", "bf16", "--max-kl", "0.1",
                 "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "w.bin").write_bytes(b"x")
    assert main(["quantize", str(tmp_path / "w.bin"), "--out", str(tmp_path / "o")]) == 2
    assert "never unpickles" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_cli_quantize_measure_gates(tok_dirs, tmp_path, capsys) -> None:
    """`quantize --measure` prints the report; a gate given on the command line decides the exit code."""
    base = ["quantize", str(tok_dirs["llama"]), "--method", "bf16", "--measure", "--quick", "--quiet"]
    rc = main([*base, "--out", str(tmp_path / "a"), "--format", "json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"]["method"] == "bf16"
    assert data["report"]["accuracy"]["top1"] > 0.5
    # BF16 halves the size; a 0.1 size-ratio gate cannot pass: exit 1 naming the gate, output kept for inspection.
    rc = main([*base, "--max-size-ratio", "0.1", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "max_size_ratio" in err and err.count("\n") == 1
    assert (tmp_path / "b" / "llmpack.json").exists()


def test_cli_quantize_int8_budget_flags(tok_dirs, tmp_path, capsys) -> None:
    """--max-ppl-increase / --smooth land in the recipe; --calibration-text is what the calibration reads."""
    text = tmp_path / "calib.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 10, encoding="utf-8")
    rc = main(["quantize", str(tok_dirs["llama"]), "--method", "int8", "--out", str(tmp_path / "o"),
               "--max-ppl-increase", "50", "--smooth", "0.5", "--calibration-text", str(text),
               "--format", "json", "--quiet"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["recipe"]["max_ppl_increase"] == 50 and data["recipe"]["smooth"] == 0.5
    assert data["budget"]["calibrated"] and set(data["budget"]["alpha"].values()) == {0.5}
    assert data["budget"]["calibration_tokens"] < 460  # the short file (450 bytes), not the built-in text
    man = json.loads((tmp_path / "o" / "llmpack.json").read_text())
    assert man["recipe"]["max_ppl_increase"] == 50 and man["extra"]["int8_budget"]["alpha"]["mlp_in"] == 0.5
    assert main(["quantize", str(tok_dirs["llama"]), "--method", "bf16", "--smooth", "0.5",
                 "--out", str(tmp_path / "x")]) == 2
