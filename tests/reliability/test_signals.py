"""Fault battery, part 2: processes killed or interrupted mid-write, and concurrent runs.

The child (``child.py``) runs the real CLI in a subprocess and pauses right after it has written the first
tensor of a shard (or the first bytes of a layer blob), so the signal lands at a known point mid-write.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from reltools import (Src, assert_clean, assert_error, cli, leftovers, make_src, spawn, wait_marker)

from llmpack.constants import TEMP_PREFIX


def _blob_temps(build: Path) -> list[str]:
    d = build / "oci" / "blobs" / "sha256"
    return sorted(p.name for p in d.iterdir() if not p.name.isalnum()) if d.is_dir() else []


def _pack_leftovers(build: Path) -> list[str]:
    return sorted(p.relative_to(build).as_posix() for p in build.rglob("*")
                  if p.name.startswith((".tmp-", TEMP_PREFIX)))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small quantized model dir (for the pack tests)."""
    from llmpack.cli import main

    root = tmp_path_factory.mktemp("sigmodel")
    src = make_src(root)
    assert main(["quantize", str(src), "--method", "bf16", "--out", str(root / "m"), "-q"]) == 0
    return root / "m"


def test_fault_sigkill_quantize(tmp_path: Path, capsys: pytest.CaptureFixture[str], kill_on_exit: list) -> None:
    src = make_src(tmp_path)
    s = Src(src)
    out = tmp_path / "out"
    marker = tmp_path / "paused"
    proc = spawn(["quantize", str(src), "--method", "bf16", "--out", str(out), "-q"], marker)
    kill_on_exit.append(proc)
    wait_marker(proc, marker)
    stale = leftovers(tmp_path)
    assert any(n.startswith(TEMP_PREFIX + "out-") for n in stale), stale  # killed mid-write: temp dir exists
    assert "out.llmpack.lock" in stale
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    # rerun: the stale lock (dead PID) and the stale temp dir are cleaned, the run succeeds, verify passes
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")
    assert code == 0, err
    assert leftovers(tmp_path) == []
    assert cli(capsys, "verify", out)[0] == 0
    s.unchanged()


def test_fault_sigkill_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path,
                            kill_on_exit: list) -> None:
    s = Src(model)
    build = tmp_path / "build"
    marker = tmp_path / "paused"
    proc = spawn(["pack", str(model), "--out", str(build), "-q"], marker, pause="blob")
    kill_on_exit.append(proc)
    wait_marker(proc, marker)
    assert _blob_temps(build), "killed before any blob was being written"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    code, _, err = cli(capsys, "pack", model, "--out", build, "-q")
    assert code == 0, err
    assert _pack_leftovers(build) == []
    assert cli(capsys, "verify", build / "oci")[0] == 0
    s.unchanged()


def test_fault_ctrl_c_quantize(tmp_path: Path, kill_on_exit: list) -> None:
    src = make_src(tmp_path)
    s = Src(src)
    out = tmp_path / "out"
    marker = tmp_path / "paused"
    proc = spawn(["quantize", str(src), "--method", "bf16", "--out", str(out), "-q"], marker)
    kill_on_exit.append(proc)
    wait_marker(proc, marker)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert_error("ctrl-c-quantize", proc.returncode, err, "interrupted", fix="removed")
    assert_clean(out)
    s.unchanged()


def test_fault_sigterm_quantize(tmp_path: Path, kill_on_exit: list) -> None:
    src = make_src(tmp_path)
    out = tmp_path / "out"
    marker = tmp_path / "paused"
    proc = spawn(["quantize", str(src), "--method", "bf16", "--out", str(out), "-q"], marker)
    kill_on_exit.append(proc)
    wait_marker(proc, marker)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert_error("sigterm-quantize", proc.returncode, err, "SIGTERM", fix="removed")
    assert_clean(out)


def test_fault_ctrl_c_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path,
                           kill_on_exit: list) -> None:
    build = tmp_path / "build"
    marker = tmp_path / "paused"
    proc = spawn(["pack", str(model), "--out", str(build), "-q"], marker, pause="blob")
    kill_on_exit.append(proc)
    wait_marker(proc, marker)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert_error("ctrl-c-pack", proc.returncode, err, "interrupted", fix="removed|rerun|again")
    assert _blob_temps(build) == []
    code, _, err = cli(capsys, "pack", model, "--out", build, "-q")
    assert code == 0, err
    assert cli(capsys, "verify", build / "oci")[0] == 0


def test_fault_concurrent_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str], kill_on_exit: list) -> None:
    src = make_src(tmp_path)
    out = tmp_path / "out"
    marker, go = tmp_path / "paused", tmp_path / "go"
    first = spawn(["quantize", str(src), "--method", "bf16", "--out", str(out), "-q"], marker, go=go)
    kill_on_exit.append(first)
    wait_marker(first, marker)
    pid = marker.read_text().strip()
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")
    assert_error("concurrent-runs", code, err, str(out), f"pid {pid}", "out.llmpack.lock", fix="wait for it")
    go.write_text("go")
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert leftovers(tmp_path) == []
    assert cli(capsys, "verify", out)[0] == 0


def test_concurrent_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path, kill_on_exit: list) -> None:
    """Two packs into the same build dir: the second fails clearly, the first completes."""
    build = tmp_path / "build"
    marker, go = tmp_path / "paused", tmp_path / "go"
    first = spawn(["pack", str(model), "--out", str(build), "-q"], marker, go=go, pause="blob")
    kill_on_exit.append(first)
    wait_marker(first, marker)
    code, _, err = cli(capsys, "pack", model, "--out", build, "-q")
    assert code == 2 and "another llmpack pack" in err, err
    go.write_text("go")
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert cli(capsys, "verify", build / "oci")[0] == 0



def test_killed_during_swap_restores_previous_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGKILL between 'old output moved aside' and 'new output renamed in': the next run puts the old one back."""
    src = make_src(tmp_path)
    out = tmp_path / "out"
    assert cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")[0] == 0
    before = Src(out).before
    aside = tmp_path / f"{TEMP_PREFIX}out-old-abcd1234"
    out.rename(aside)  # what the killed run left: the previous output aside, the new one half-written
    (tmp_path / f"{TEMP_PREFIX}out-zz9_x8y7").mkdir()
    (tmp_path / "out.llmpack.lock").write_text("999999999\n")  # a dead PID
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")
    assert code == 2 and "already exists" in err, err  # the restored previous output is not clobbered
    assert Src(out).before == before
    assert leftovers(tmp_path) == []
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q", "--overwrite")
    assert code == 0, err
    assert cli(capsys, "verify", out)[0] == 0


def test_lock_without_pid_is_stale_after_a_while(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lock file killed before its PID was written (empty) is stale once it is old."""
    import os

    src = make_src(tmp_path)
    lock = tmp_path / "out.llmpack.lock"
    lock.write_text("")
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", tmp_path / "out", "-q")
    assert code == 2 and "being written by another" in err, err  # fresh: maybe a run that is starting
    os.utime(lock, (0, 0))
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", tmp_path / "out", "-q")
    assert code == 0, err
    assert leftovers(tmp_path) == []
