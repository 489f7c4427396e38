"""Shared fixtures: tiny models, the real SmolLM2 / MiniLM, a device list that adds CUDA when present."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("LLMPACK_PROGRESS", "0")

# fixtures shared by several test directories (tests/ is on sys.path: pytest prepends the conftest's folder)
pytest_plugins = ["_fixtures.containers"]


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.fixture(params=_devices())
def device(request: pytest.FixtureRequest) -> str:
    """Runs a test on CPU, and on CUDA too when a GPU is present."""
    return request.param


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an FP32 HF dir, converted once from the shipped GGUF and cached. Read-only!"""
    from llmpack.testing import smollm2_dir as _smollm2_dir

    return _smollm2_dir()


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 shipped inside its wheel. Read-only!"""
    from llmpack.testing import minilm_dir as _minilm_dir

    return _minilm_dir()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny random-init model saved once with stock ``save_pretrained`` (safetensors). Read-only!"""
    from llmpack.testing import TINY_KINDS, tiny_model

    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for kind in TINY_KINDS:
        d = root / kind
        tiny_model(kind).save_pretrained(d)
        out[kind] = d
    return out


@pytest.fixture(scope="session")
def tok_dirs(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model dirs copied and given ``byte_tokenizer()`` files (256 tokens = their vocab). Read-only!"""
    from llmpack.testing import byte_tokenizer

    root = tmp_path_factory.mktemp("tiny-tok")
    tok = byte_tokenizer()
    out = {}
    for kind, src in tiny_dirs.items():
        d = root / kind
        shutil.copytree(src, d)
        tok.save_pretrained(d)
        out[kind] = d
    return out


@pytest.fixture
def one_thread():
    """Run a test single-threaded: tiny models gain nothing from 2 threads, and on a busy machine each
    parallel op can wait a whole scheduler tick for its partner thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
