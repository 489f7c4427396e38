"""Fixtures of the reliability suite; the helpers live in ``reltools.py``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def kill_on_exit() -> Iterator[list[subprocess.Popen[str]]]:
    """Children started by a test, killed (by PID) at teardown if still running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


@pytest.fixture(autouse=True)
def _no_debug_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors must be one line; ``LLMPACK_DEBUG`` (which adds the traceback) is off for this suite."""
    monkeypatch.delenv("LLMPACK_DEBUG", raising=False)
