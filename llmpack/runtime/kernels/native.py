"""llmpack's native int8 kernels for AVX2 CPUs, compiled on first use.

PyTorch has no exact per-token dynamic int8 linear for CPUs without VNNI (``torch._int_mm`` is a reference
loop there; oneDNN's and FBGEMM's ``u8 x s8`` kernels saturate 8-bit tokens). ``_native/int8_avx2.cpp`` does
the layer in one call: per-token quantization with the file's compressed-tensors arithmetic, an exact integer
matmul and the float epilogue (see the file's header). It is built with :func:`torch.utils.cpp_extension.load`
(needs a C++ compiler and ``ninja``, both checked) the first time an AVX2 int8 model runs on a machine, about
30 s, and cached under ``$LLMPACK_CACHE/native`` (default ``~/.cache/llmpack/native``) per PyTorch version.
Where it cannot be built, a warning says why and the exact PyTorch reference runs (same results, slower).
``LLMPACK_INT8_KERNEL=dequant`` (or ``int_mm``) never builds it.

Example:
    >>> from llmpack.runtime.kernels.native import native_status
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

from llmpack._env import cache_root, kernel_option
from llmpack.runtime.kernels import cpu as _cpu

__all__ = ["avx2_ops", "checked_ops", "pack", "has_vnni", "mark_unusable", "native_status"]

_SOURCE = Path(__file__).with_name("_native") / "int8_avx2.cpp"
_CFLAGS = ["-O3", "-mavx2", "-mfma", "-ffp-contract=off", "-fopenmp", "-std=c++17"]
"""FMA only where the source asks for it (``exp8``): the int8 epilogues stay bit-exact with the PyTorch path."""
_log = logging.getLogger(__name__)
_lock = threading.Lock()
_state: dict[str, Any] = {}
_flags: dict[str, bool] = {}


def _disabled() -> bool:
    """The user forced a kernel that is not llmpack's native one."""
    return kernel_option() in ("dequant", "int_mm", "onednn-7bit")  # (vnni, avx2, avx2-7bit and auto use them)


def _build_dir() -> Path:
    root = cache_root()
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
    prebuilt = _build_dir() / f"{_module_name()}.so"
    if prebuilt.is_file():
        # Built earlier (e.g. in a container's build stage): load it as it is, no compiler needed. The name
        # carries the digest of the source and flags, so a stale library is never picked up.
        torch.ops.load_library(str(prebuilt))
        _register_fakes()
        return torch.ops.llmpack_avx2
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


_fakes_registered = False


def _register_fakes() -> None:
    """Shapes for torch.compile, which then calls the ops as they are (opaque to inductor). Once per process:
    PyTorch before 2.13 refuses a second fake for an op (a second build in one process, as tests do)."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True

    @torch.library.register_fake("llmpack_avx2::w8a8")
    def _w8a8(x: torch.Tensor, packed: list[torch.Tensor], corr: list[torch.Tensor], w_scale: list[torch.Tensor],
              bias: list[torch.Tensor | None], act_bits: int = 8) -> list[torch.Tensor]:
        return [x.new_empty((x.shape[0], c.shape[0])) for c in corr]

    @torch.library.register_fake("llmpack_avx2::w8a8_vnni")
    def _w8a8_vnni(x: torch.Tensor, packed: list[torch.Tensor], corr: list[torch.Tensor], w_scale: list[torch.Tensor],
                   bias: list[torch.Tensor | None]) -> list[torch.Tensor]:
        return [x.new_empty((x.shape[0], c.shape[0])) for c in corr]

    @torch.library.register_fake("llmpack_avx2::w8a16")
    def _w8a16(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
               wide: bool = True) -> torch.Tensor:
        return x.new_empty((x.shape[0], weight.shape[0]))

    @torch.library.register_fake("llmpack_avx2::rms_norm")
    def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        return torch.empty_like(x)

    @torch.library.register_fake("llmpack_avx2::gelu_tanh")
    def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(x)

    @torch.library.register_fake("llmpack_avx2::silu_mul")
    def _silu_mul(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(g)

    @torch.library.register_fake("llmpack_avx2::quantize_rows")
    def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.new_empty(x.shape, dtype=torch.int8), x.new_empty((x.shape[0],))

    @torch.library.register_fake("llmpack_avx2::int_mm_epilogue")
    def _int_mm_epilogue(acc: torch.Tensor, tok_scale: torch.Tensor, w_scale: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
        return acc.new_empty(acc.shape, dtype=torch.float32)

    @torch.library.register_fake("llmpack_avx2::few_token_linear")
    def _few_token_linear(x: torch.Tensor, weight: torch.Tensor, wide: bool = True) -> torch.Tensor:
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
            status = f"off (LLMPACK_INT8_KERNEL={kernel_option()})"
        elif torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
            status = f"not built: the CPU lacks AVX2 ({torch.backends.cpu.get_cpu_capability()})"
        else:
            try:
                ops = _build()
            except Exception as e:  # noqa: BLE001 -- any build failure falls back to the Python path
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                status = f"not built: {first}"
                warnings.warn(f"llmpack: the native int8 kernels could not be built ({first}); int8 layers run "
                              f"the slower PyTorch reference with the same results. Install a C++ compiler "
                              f"and ninja, or set LLMPACK_INT8_KERNEL=dequant to silence this.", RuntimeWarning, stacklevel=2)
        _state["status"] = status
        _state["ops"] = ops
        return ops


def pack(ops: Any, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(panels, ``64 * row sums`` as int32) of an int8 ``[out, in]`` weight for the native W8A8 kernel; the
    panels take the weight's size again.

    Example:
        >>> ops = checked_ops()
        >>> ops is None or pack(ops, torch.ones(3, 5, dtype=torch.int8))[1].tolist() == [320, 320, 320]
        True
    """
    return ops.pack(weight)


def checked_ops() -> Any | None:
    """:func:`avx2_ops`, once checked against the exact result here (both token widths, and the weight-only
    product); ``None`` where they are off, cannot be built, or are wrong (then :func:`native_status` says so).

    Example:
        >>> checked_ops() is None or native_status() == "ok"
        True
    """
    if "checked" in _state:
        return _state["checked"]
    ops = avx2_ops()
    if ops is not None and not _self_check(ops):
        mark_unusable("not used: wrong results on this machine")
        warnings.warn("llmpack: the native int8 kernels give wrong results on this machine; using the PyTorch "
                      "reference.", RuntimeWarning, stacklevel=2)
        ops = None
    _state["checked"] = ops
    return ops


def _self_check(ops: Any) -> bool:
    from llmpack.runtime.kernels import reference

    g = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (37, 45), dtype=torch.int8, generator=g)
    scale = torch.rand(37, generator=g) / 50 + 1e-3
    bias = torch.randn(37, generator=g)
    x = torch.randn(7, 45, generator=g) * 3
    panels, corr = pack(ops, w)
    ok = all(torch.allclose(ops.w8a8(x, [panels], [corr], [scale], [bias], bits)[0].double(),
                            reference.w8a8_exact(x, w, scale, bias, bits), rtol=1e-5, atol=1e-5) for bits in (7, 8))
    if ok and has_vnni():
        ok = torch.allclose(ops.w8a8_vnni(x, [panels], [corr], [scale], [bias])[0].double(),
                            reference.w8a8_exact(x, w, scale, bias, 8), rtol=1e-5, atol=1e-5)
    exact16 = x[:5].double() @ (w.double() * scale.double().reshape(-1, 1)).t() + bias.double()
    return ok and torch.allclose(ops.w8a16(x[:5].contiguous(), w, scale, bias).double(), exact16, rtol=1e-5, atol=1e-5)


def has_vnni() -> bool:
    """The CPU runs the AVX512-VNNI kernel (``avx512_vnni`` and ``avx512bw`` flags; read once, a plain dict
    lookup afterwards, so torch.compile traces through it)."""
    if "vnni" not in _flags:
        flags = _cpu.cpu_flags()
        _flags["vnni"] = {"avx512_vnni", "avx512bw"} <= flags or {"avx512vnni", "avx512bw"} <= flags
    return _flags["vnni"]


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


def _main(argv: "list[str] | None" = None) -> int:
    """``python -m llmpack.runtime.kernels.native --build``: compile the kernels into ``$LLMPACK_CACHE/native``
    now (a container's build stage), print the status; exit 0 also where they cannot be built (the runtime
    then runs the PyTorch reference, as it would anyway).

    Example:
        >>> _main(["--status"]) in (0,)  # doctest: +SKIP
        True
    """
    import argparse

    ap = argparse.ArgumentParser(prog="python -m llmpack.runtime.kernels.native")
    ap.add_argument("--build", action="store_true", help="build the kernels now (once per machine and torch)")
    ap.add_argument("--status", action="store_true", help="print whether they are built")
    args = ap.parse_args(argv)
    if args.build:
        avx2_ops()
        print(f"llmpack native int8 kernels: {native_status()} ({_build_dir()})")
    else:
        print(f"llmpack native int8 kernels: {native_status()}")
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised by the container build
    raise SystemExit(_main())
