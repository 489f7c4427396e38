"""The int8_cpu benchmark harness runs end to end (on a tiny model) and writes a table that says what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_int8_cpu_harness_tiny(tmp_path: Path) -> None:
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "int8_cpu.py"), "--models", "tiny", "--only", "fp32,llmpack,llmpack+qemb,torch.ao",
         "--runs", "2", "--warmup", "0", "--batches", "1,2", "--seq", "16", "--json", str(out), "--md", str(md)],
        check=True, cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    rows = {r["candidate"]: r for r in json.loads(out.read_text())["results"][0]["rows"]}
    assert set(rows) == {"fp32", "llmpack", "llmpack+qemb", "torch.ao"}
    ours = rows["llmpack"]
    assert ours["error"] == "" and ours["saves"].startswith("yes")
    for b in (1, 2):
        assert ours[f"b{b}_ms"] > 0 and ours[f"b{b}_kl"] < 1e-3 and ours[f"b{b}_top1"] >= 0.9
        assert rows["fp32"][f"b{b}_speedup"] == 1.0
        assert rows["torch.ao"][f"b{b}_vs_ao"] == 1.0 and ours[f"b{b}_vs_ao"] > 0  # paired ratio to torch.ao
    assert ours["size_mb"] < rows["fp32"]["size_mb"]
    qemb = rows["llmpack+qemb"]
    assert qemb["error"] == "" and qemb["saves"].startswith("yes") and qemb["size_mb"] < ours["size_mb"]
    assert qemb["b1_top1"] >= 0.9
    assert "| tiny | llmpack |" in md.read_text() and "b1 vs torch.ao" in md.read_text()
