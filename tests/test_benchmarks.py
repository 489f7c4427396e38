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


def test_gpu_check_cpu_quick_runs_every_step(tmp_path: Path) -> None:
    """``gpu_check.sh --device cpu --quick``: the GPU check's every step runs on a tiny shape, so it cannot rot."""
    import os

    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_TIMEOUT="900")
    p = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick", "--out-dir",
                        str(out), "--work-dir", str(tmp_path / "work")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=1000, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["errors"] == [] and res["skipped"] == []
    assert set(res["methods"]) == {"fp8", "int8", "int8-weight-only", "fp16", "int8+qemb"}
    for name, e in res["methods"].items():
        assert e["quantize_s"] > 0 and e["prefill_model"]["load_s"] >= 0
        assert set(e["prefill"]) == {"1x64", "2x32"} and all(v["ms"] > 0 for v in e["prefill"].values())
        for key in ("decode", "decode_prefill_model"):
            assert set(e[key]) == {"b1", "b2"} and all(v["ms_per_token"] > 0 for v in e[key].values())
        ag = e["agreement"]
        assert ag["kl"] < 1e-3 and ag["top1"] >= 0.9, (name, ag)
        if name != "fp16":
            assert e["memory_ratio"] < 0.8 and ag["worst_layer_sqnr_db"] > 30, (name, e)
    # the int8 table and head: the tiny model's 512 x 64 embedding and head are half its weights
    assert res["methods"]["int8+qemb"]["memory_ratio"] < res["methods"]["int8"]["memory_ratio"] - 0.2
    assert res["bf16"]["decode"]["b1"]["mode"] == "eager"  # no CUDA graphs on CPU
    assert res["bf16"]["decode_prefill_model"]["b2"]["ms_per_token"] > 0
    assert res["fusion"] == {"fp8_tokens": "not used", "int8_tokens": "not used", "int8_rescale": "not used"}
    md = (out / "gpu_check.md").read_text()
    assert "| fp8 |" in md and "prefill 1x64" in md and "Fused 8-bit steps" in md and "Decode on the prefill" in md
