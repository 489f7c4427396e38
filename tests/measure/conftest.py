"""Fixtures for the measure tests: tiny model directories that carry a (byte-level) tokenizer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


# Settings that keep a tiny-model measure() call to about a second.
FAST = {"quick": True, "quiet": True, "batch_sizes": (1,), "seq_len": 16, "new_tokens": 2, "runs": 1, "warmup": 1}


@pytest.fixture
def fast() -> dict:
    """Keyword arguments for a fast measure() call."""
    return dict(FAST)


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request: pytest.FixtureRequest) -> None:
    """Tiny-model tests run single-threaded (the shared ``one_thread`` fixture); slow tests keep the default."""
    if not request.node.get_closest_marker("slow"):
        request.getfixturevalue("one_thread")
