"""Fixtures of the runtime tests: a forced int8 kernel (``LLMPACK_INT8_KERNEL``), and the native ops."""

from __future__ import annotations

import platform
from typing import Iterator

import pytest

from llmpack.runtime.kernels import native, select
from llmpack._env import ENV_KERNEL

X86 = platform.machine().lower() in ("x86_64", "amd64")
ALL_KERNELS = ("avx2", "int_mm", "dequant", "avx2-7bit", "onednn-7bit") + (("vnni",) if native.has_vnni() else ())


def force_kernel(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Run CPU int8 layers on ``name`` for the rest of the test (the choice is reset afterwards)."""
    monkeypatch.setenv(ENV_KERNEL, name)
    select.reset()


@pytest.fixture
def force(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 -- a callable
    """``force("avx2")``: :func:`force_kernel` for this test."""
    return lambda name: force_kernel(monkeypatch, name)


@pytest.fixture(autouse=True)
def _fresh_choice() -> Iterator[None]:
    select.reset()
    yield
    select.reset()


@pytest.fixture
def ops() -> object:
    """The native ops; on an x86 machine (CI's kind) they must build."""
    if not X86:
        pytest.skip("llmpack's native kernels serve x86 CPUs with AVX2 (not this machine)")
    got = native.checked_ops()
    if got is None:
        pytest.fail(f"native kernels unavailable: {native.native_status()}")
    return got


@pytest.fixture(params=[k for k in ALL_KERNELS if X86 or not k.startswith(("avx2", "onednn"))])
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every CPU kernel in turn (forced as a user would, with ``LLMPACK_INT8_KERNEL``)."""
    force_kernel(monkeypatch, request.param)
    if request.param.startswith(("avx2", "vnni")) and native.checked_ops() is None:
        pytest.fail(f"native kernels unavailable: {native.native_status()}")
    return request.param
