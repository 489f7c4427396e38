"""The native kernels built once (a container's build stage) load later without a compiler (its runtime stage)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmpack.runtime.kernels.native import avx2_ops, native_status


def test_prebuilt_kernels_load_without_a_compiler(tmp_path: Path) -> None:
    if avx2_ops() is None:
        pytest.skip(f"the native kernels are not built on this machine: {native_status()}")
    # no compiler anywhere: CXX names nothing and PATH holds only the interpreter's folder (ninja, no c++)
    env = dict(os.environ, CXX=str(tmp_path / "no-such-c++"), PATH=str(Path(sys.executable).parent))
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-m", "llmpack.runtime.kernels.native",
                           "--build"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "llmpack native int8 kernels: ok" in proc.stdout, proc.stdout + proc.stderr
