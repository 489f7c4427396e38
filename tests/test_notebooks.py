"""The notebooks run headless, offline, with the project's kernel, and are saved without outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01-quickstart.ipynb", "02-accuracy-budget.ipynb", "03-container.ipynb"]
CELL_TIMEOUT = 900  # per cell; the three notebooks take a few minutes together on 2 idle cores


def test_notebooks_are_saved_without_outputs_and_match_their_source() -> None:
    for name in NAMES:
        nb = json.loads((NOTEBOOKS / name).read_text(encoding="utf-8"))
        assert nb["metadata"]["kernelspec"]["name"] == "python3"
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{name} was saved with outputs"
    proc = subprocess.run([sys.executable, str(NOTEBOOKS / "make_notebooks.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smollm2_dir: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    # the kernel is this interpreter (jupyter_client maps the kernelspec's "python" to sys.executable),
    # it imports this checkout, writes only under tmp_path, and never reaches the network
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    monkeypatch.setenv("LLMPACK_NB_WORKDIR", str(tmp_path / "work"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("LLMPACK_PROGRESS", "0")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # keep ipykernel's inline backend: plots become PNG outputs
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - t0
    print(f"{name}: executed in {seconds:.1f} s")
    for i, c in enumerate(nb.cells):
        timing = c.get("metadata", {}).get("execution", {})
        if c.cell_type == "code" and timing.get("iopub.execute_input") and timing.get("shell.execute_reply"):
            from datetime import datetime

            start = datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            end = datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            print(f"  cell {i:2d}: {(end - start).total_seconds():6.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    html = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "text/html" in o.get("data", {})]
    pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
    if name.startswith("01"):
        assert "Paris" in text  # the int8 model still knows
        assert html and "<table" in html[0]["data"]["text/html"]  # the report renders as an HTML table
        assert pngs
        assert (tmp_path / "work" / "build" / "oci" / "index.json").is_file()
    elif name.startswith("02"):
        assert pngs and "kept in float" in text
    else:
        assert "IntegrityError exit code 3" in text
        assert "reused" in text
        lines = {ln.split(":", 1)[0].strip(): ln.split(":", 1)[1].strip() for ln in text.splitlines()
                 if ln.startswith(("registry digest:", "llmpack digest:"))}
        if lines:
            assert lines["registry digest"] == lines["llmpack digest"]
    assert not list(NOTEBOOKS.glob("*.png")), "a notebook wrote into the repository"
