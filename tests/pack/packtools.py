"""Helpers shared by the pack tests (imported as ``packtools``; pytest puts this directory on sys.path)."""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import pytest

ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def need(*tools: str) -> None:
    """Skip the test when one of ``tools`` is not installed."""
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} not installed (make tools installs it)")


def sha256_file(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def tree_files(root: Path) -> dict[str, bytes]:
    """relative path -> bytes of every regular file under ``root``."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


