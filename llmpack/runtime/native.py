"""llmpack's native int8 helpers for AVX2 CPUs, compiled on first use.

PyTorch has no per-token dynamic int8 linear for CPUs without VNNI, so :mod:`llmpack.runtime.modules`
composes one from a dozen tensor operations around oneDNN's matmul; at a few hundred layers per forward
their Python-level overhead is a tenth of the run time. ``_native/int8_avx2.cpp`` does the same work
(bit for bit) in one call per input. It is built with :func:`torch.utils.cpp_extension.load` (needs a
C++ compiler and ``ninja``, both checked) the first time an AVX2 int8 model runs on a machine, about
30 s, and cached under ``$LLMPACK_CACHE/native`` (default ``~/.cache/llmpack/native``) per PyTorch
version. Where it cannot be built, a warning says why and the Python path runs (same results, slower).
``LLMPACK_NATIVE=0`` turns it off.

Example:
    >>> from llmpack.runtime.native import native_status
    >>> isinstance(native_status(), str)
    True
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import torch

from llmpack.constants import ENV_CACHE

__all__ = ["ENV_NATIVE", "avx2_ops", "mark_unusable", "native_status"]

ENV_NATIVE = "LLMPACK_NATIVE"
"""Set to ``0`` to never build or use the native kernels."""

_SOURCE = Path(__file__).with_name("_native") / "int8_avx2.cpp"
_CFLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-std=c++17"]
"""FMA only where the source asks for it (``exp8``): the int8 epilogues stay bit-exact with the PyTorch path."""
_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, Any] = {}


def _disabled() -> bool:
    return os.environ.get(ENV_NATIVE, "").strip().lower() in ("0", "false", "no", "off")


def _build_dir() -> Path:
    root = os.environ.get(ENV_CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "llmpack")
    tag = re.sub(r"[^A-Za-z0-9]+", "_", f"torch{torch.__version__}_py{sys.version_info[0]}{sys.version_info[1]}")
    return Path(root) / "native" / tag


def _module_name() -> str:
    """A name that changes with the source and flags (``torch.ops`` namespaces are process-global)."""
    digest = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_CFLAGS).encode()).hexdigest()[:12]
    return f"llmpack_int8_avx2_{digest}"


def _ninja_on_path() -> str | None:
    """Make ``ninja`` visible to the build: the ``ninja`` wheel's binary sits next to this interpreter."""
    if shutil.which("ninja"):
        return None
    here = Path(sys.executable).parent
    if (here / "ninja").exists():
        old = os.environ.get("PATH", "")
        os.environ["PATH"] = f"{here}{os.pathsep}{old}"
        return old
    return None


def _build() -> Any:
    from torch.utils import cpp_extension

    if not _SOURCE.exists():
        raise RuntimeError(f"{_SOURCE} is missing from the installed package")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler!r} not found; install g++ or set CXX)")
    build_dir = _build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    old_path = _ninja_on_path()
    try:
        _log.info("building llmpack's native int8 kernels in %s (once per machine and PyTorch version)", build_dir)
        cpp_extension.load(name=_module_name(), sources=[str(_SOURCE)], extra_cflags=_CFLAGS,
                           extra_ldflags=["-fopenmp"], build_directory=str(build_dir), is_python_module=False,
                           verbose=False)
    finally:
        if old_path is not None:
            os.environ["PATH"] = old_path
    _register_fakes()
    return torch.ops.llmpack_avx2


def _register_fakes() -> None:
    """Shapes for torch.compile, which then calls the ops as they are (opaque to inductor)."""

    @torch.library.register_fake("llmpack_avx2::w8a8")
    def _w8a8(x: torch.Tensor, packed: list[torch.Tensor], corr: list[torch.Tensor], w_scale: list[torch.Tensor],
              bias: list[torch.Tensor | None], act_bits: int = 7) -> list[torch.Tensor]:
        return [x.new_empty((x.shape[0], c.shape[0])) for c in corr]

    @torch.library.register_fake("llmpack_avx2::w8a16")
    def _w8a16(x: torch.Tensor, packed: torch.Tensor, corr: torch.Tensor, w_scale: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
        return x.new_empty((x.shape[0], corr.shape[0]))

    @torch.library.register_fake("llmpack_avx2::rms_norm")
    def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.empty_like(x)

    @torch.library.register_fake("llmpack_avx2::gelu_tanh")
    def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    @torch.library.register_fake("llmpack_avx2::silu_mul")
    def _silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(g)

    @torch.library.register_fake("llmpack_avx2::few_token_linear")
    def _few_token_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return x.new_empty((x.shape[0], weight.shape[0]))


def avx2_ops() -> Any | None:
    """``torch.ops.llmpack_avx2`` (building it on first call), or ``None`` where it is off or cannot be
    built (the reason is in :func:`native_status`; a failed build also warns once).

    Example:
        >>> ops = avx2_ops()
        >>> ops is None or hasattr(ops, "w8a8")
        True
    """
    if "ops" in _state:
        return _state["ops"]
    with _lock:
        if "ops" in _state:
            return _state["ops"]
        ops, status = None, "ok"
        if _disabled():
            status = f"off ({ENV_NATIVE}=0)"
        elif torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
            status = f"not built: the CPU lacks AVX2 ({torch.backends.cpu.get_cpu_capability()})"
        else:
            try:
                ops = _build()
            except Exception as e:  # noqa: BLE001 -- any build failure falls back to the Python path
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                status = f"not built: {first}"
                warnings.warn(f"llmpack: the native int8 kernels could not be built ({first}); int8 layers run "
                              f"the slower PyTorch path with the same results. Install a C++ compiler and "
                              f"ninja, or set {ENV_NATIVE}=0 to silence this.", RuntimeWarning, stacklevel=2)
        _state["status"] = status
        _state["ops"] = ops
        return ops


def mark_unusable(reason: str) -> None:
    """Record why the built kernels are not used (e.g. they failed their self-check), for :func:`native_status`.

    Example:
        >>> mark_unusable("not used: wrong results on this machine")  # doctest: +SKIP
        >>> native_status()                                           # doctest: +SKIP
        'not used: wrong results on this machine'
    """
    _state["status"] = reason


def native_status() -> str:
    """``"ok"``, ``"not tried"`` or why the native kernels are not in use.

    Example:
        >>> native_status() in ("ok", "not tried") or native_status().startswith(("off", "not built"))
        True
    """
    return _state.get("status", "not tried")
