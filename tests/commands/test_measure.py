"""CLI measure: exit codes 0 / 1 / 2, output files (JSON, Markdown, HTML, PNG), --format json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmpack.cli import main

FAST = ["--quick", "--quiet", "--batch-sizes", "1", "--seq-len", "16", "--new-tokens", "2", "--runs", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok_llama(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny llama dir copied with a byte tokenizer (vocab 256). Read-only!"""
    from llmpack.testing import byte_tokenizer

    d = tmp_path_factory.mktemp("cli-measure") / "llama"
    shutil.copytree(tiny_dirs["llama"], d)
    byte_tokenizer().save_pretrained(d)
    return d


def test_cli_measure_ok_writes_every_output(tok_llama: Path, tmp_path: Path, capsys) -> None:
    text = tmp_path / "eval.txt"
    text.write_text("A short evaluation text, repeated to have enough tokens. " * 20, encoding="utf-8")
    out = {k: tmp_path / f"r.{k}" for k in ("json", "md", "html", "png")}
    rc = main(["measure", str(tok_llama), str(tok_llama), *FAST, "--text", str(text), "--device", "cpu",
               "--min-top1", "0.99", "--max-ppl-increase", "0.1", "--max-size-ratio", "1.0",
               "--json", str(out["json"]), "--markdown", str(out["md"]), "--html", str(out["html"]),
               "--plot", str(out["png"])])
    assert rc == 0
    assert "fp32: 1.00× size" in capsys.readouterr().out
    data = json.loads(out["json"].read_text())
    assert data["schema"] == "llmpack.measure.report" and data["passed"] is True
    assert data["settings"]["text"]["source"].startswith("file:")
    assert "### Latency" in out["md"].read_text()
    assert "<table>" in out["html"].read_text()
    assert out["png"].read_bytes()[:4] == b"\x89PNG" and out["png"].stat().st_size > 5000


def test_cli_measure_failed_gate_exits_1(tok_llama: Path, tmp_path: Path, capsys) -> None:
    rc = main(["measure", str(tok_llama), str(tok_llama), *FAST, "--min-speedup", "1000",
               "--json", str(tmp_path / "r.json")])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.startswith("llmpack: error: measure gate failed: min_speedup") and err.count("\n") == 1
    # the report is still written, and records the failure
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["failed_gates"] == ["min_speedup"] and data["passed"] is False


def test_cli_measure_json_format(tok_llama: Path, capsys) -> None:
    rc = main(["measure", str(tok_llama), str(tok_llama), *FAST, "--format", "json", "--min-top1", "0.5"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["accuracy"]["top1"] == 1.0 and data["gate_results"][0]["name"] == "min_top1"


def test_cli_measure_bad_input_exits_2(tok_llama: Path, tmp_path: Path, capsys) -> None:
    assert main(["measure", str(tmp_path / "missing"), str(tok_llama), *FAST]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["measure", str(tok_llama), str(tok_llama), *FAST, "--text", str(tmp_path / "nope.txt")]) == 2
    assert "cannot read text file" in capsys.readouterr().err
    assert main(["measure", str(tok_llama), str(tok_llama), "--batch-sizes", "1,x"]) == 2
    assert "invalid batch sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # argparse usage error
        main(["measure", str(tok_llama)])
    assert e.value.code == 2
