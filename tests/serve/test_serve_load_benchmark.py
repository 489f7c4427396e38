"""benchmarks/serve_load.py runs end to end (``--quick``: a tiny model) and reports what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_load_quick(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick", "--threads", "1",
                        "--json", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["concurrency"]: r for r in data["results"]}
    assert set(rows) == {1, 4} and data["new_tokens"] == 8
    for c, r in rows.items():
        assert r["requests"] == 8 and r["tokens"] == 8 * 8  # every request generated exactly --new-tokens tokens
        assert r["tokens_per_s"] > 0 and 0 < r["ttft_p50_s"] <= r["latency_p50_s"] <= r["latency_p99_s"]
    assert rows[1]["mean_decode_batch"] == 1.0 and rows[4]["mean_decode_batch"] > 1.0  # 4 clients are batched
    assert "llama.cpp" in data["skipped"]
    assert "| llmpack serve (tiny llama" in p.stdout and "| clients | tokens/s |" in p.stdout
