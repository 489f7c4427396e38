"""Fault battery, part 3: the output's file system fails (full, read-only). Needs root to mount a tmpfs;
skips where mounting is not permitted."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import torch
from reltools import Src, assert_clean, assert_error, cli, make_src, try_mount, umount


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs mounted at ``tmp_path/disk`` (unmounted at teardown)."""
    d = tmp_path / "disk"
    if not try_mount(d, "size=2m,mode=0755"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield d
    finally:
        umount(d)


@pytest.fixture
def ro_disk(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs mounted at ``tmp_path/ro`` (as root, chmod would not stop writes)."""
    d = tmp_path / "ro"
    if not try_mount(d, "size=1m,ro"):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield d
    finally:
        umount(d)


def test_fault_full_disk(tmp_path: Path, capsys: pytest.CaptureFixture[str], small_disk: Path) -> None:
    g = torch.Generator().manual_seed(0)
    src = make_src(tmp_path, tensors={"a.weight": torch.randn(640, 1024, generator=g),
                                      "b.weight": torch.randn(640, 1024, generator=g)})
    s = Src(src)
    out = small_disk / "out"
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")
    assert_error("full-disk", code, err, "model.safetensors", "No space left", fix="free space|another --out")
    assert_clean(out)
    assert list(small_disk.iterdir()) == []
    s.unchanged()
    # pack onto the full disk: one line, no temp file, and no image (index.json) that would look complete
    model = tmp_path / "m"
    assert cli(capsys, "quantize", src, "--method", "bf16", "--out", model, "-q")[0] == 0
    build = small_disk / "build"
    code, _, err = cli(capsys, "pack", model, "--out", build, "-q")
    assert_error("full-disk", code, err, "model.safetensors", "No space left", fix="free space")
    assert not (build / "oci" / "index.json").exists() and not (build / "Dockerfile").exists()
    assert [p.name for p in build.rglob("*") if p.name.startswith((".tmp-", ".llmpack-tmp-"))] == []


def test_fault_read_only_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], ro_disk: Path) -> None:
    src = make_src(tmp_path)
    s = Src(src)
    out = ro_disk / "out"
    code, _, err = cli(capsys, "quantize", src, "--method", "bf16", "--out", out, "-q")
    assert_error("read-only-output", code, err, str(ro_disk), "Read-only", fix="another --out|writable")
    assert_clean(out)
    s.unchanged()
    # pack into a read-only dir fails the same way
    model = tmp_path / "m"
    assert cli(capsys, "quantize", src, "--method", "bf16", "--out", model, "-q")[0] == 0
    code, _, err = cli(capsys, "pack", model, "--out", ro_disk / "build", "-q")
    assert_error("read-only-output", code, err, str(ro_disk), "Read-only", fix="check|writable|another --out")
    assert list(ro_disk.iterdir()) == []
