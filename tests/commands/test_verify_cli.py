"""CLI verify: 0 when intact, 3 on a corrupt shard, 2 on a missing path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from llmpack.cli import main
from llmpack.pipeline import quantize


def test_cli_verify_codes(tiny_dirs, tmp_path, capsys) -> None:
    out = quantize(tiny_dirs["llama"], "fp16", out=tmp_path / "o", quiet=True).out_dir
    assert main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    p = out / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0x55
    p.write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 3
    assert "model.safetensors" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nope")]) == 2


def test_python_m_llmpack_verify_exit3(tiny_dirs, tmp_path) -> None:
    out = quantize(tiny_dirs["gpt2"], "bf16", out=tmp_path / "o", quiet=True).out_dir
    (out / "config.json").write_text("{}")
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "llmpack", "verify", str(out)], capture_output=True, text=True,
                       cwd=tmp_path, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 3 and "config.json" in r.stderr
