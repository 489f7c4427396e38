"""Fixtures for pack tests: small model dirs.

* ``packable_model``: a tiny Llama saved in 5 safetensors shards (+ index, config, a tokenizer file,
  ``llmpack.json``), built once per session. Read-only: copy it (``model_copy``) before changing it.

The container fixtures (``registry``, ``podman_env``) live in tests/_fixtures/containers.py, a pytest plugin
registered by tests/conftest.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def _write_model(d: Path) -> Path:
    from llmpack.testing import tiny_model

    tiny_model("llama").save_pretrained(d, max_shard_size="100KB")
    (d / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}}}))
    from llmpack.checkpoint.manifest import Manifest, write_manifest

    write_manifest(d, Manifest(source={"kind": "test", "path": "tiny", "fingerprint": "x"},
                               recipe={"method": "bf16"}, llmpack_version="0.1.0"))
    return d


@pytest.fixture(scope="session")
def packable_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama model dir with 5 shards. Read-only!"""
    return _write_model(tmp_path_factory.mktemp("packsrc") / "tiny-llama")


@pytest.fixture
def model_copy(packable_model: Path, tmp_path: Path) -> Path:
    """A private copy of ``packable_model`` that a test may change."""
    d = tmp_path / "src" / "tiny-llama"
    shutil.copytree(packable_model, d)
    return d
