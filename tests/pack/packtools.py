"""Helpers shared by the pack tests (imported as ``packtools``; pytest puts this directory on sys.path)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from _fixtures.containers import free_port, need

__all__ = ["ULIMITS", "need", "free_port", "sha256_file", "tree_files"]

ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def sha256_file(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def tree_files(root: Path) -> dict[str, bytes]:
    """relative path -> bytes of every regular file under ``root``."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out
