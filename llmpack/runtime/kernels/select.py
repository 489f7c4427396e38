"""Which int8 kernel runs: chosen once per process from the CPU's flags and ``LLMPACK_INT8_KERNEL``.

The ladder for ``auto`` (every rung computes the file's semantics up to float rounding):

1. CPUs with AVX512-VNNI: ``vnni``, llmpack's native kernel on ``vpdpbusd`` (:mod:`~llmpack.runtime.kernels.native`),
   when the native kernels build and pass their self-check here;
2. other CPUs with VNNI or AMX int8 instructions (or AVX512-VNNI without the native kernels), and non-x86 CPUs:
   ``int_mm`` (``torch._int_mm``, exact int32 sums);
3. AVX2 CPUs without them: ``avx2``, llmpack's native AVX2 kernel, when it builds and passes its self-check;
4. otherwise ``dequant``, the reference arithmetic (:mod:`~llmpack.runtime.kernels.reference`).

On rungs 1 and 2, inputs of at most :data:`FEW_TOKENS` tokens (decode steps) run llmpack's native AVX2 kernel
instead where it measures faster on this machine (:func:`few_token_kernel`; all are exact); on rung 1, longer
inputs run ``int_mm`` where it measures faster (:func:`many_token_kernel`: CPUs with AMX tiles). CUDA tensors run ``int_mm`` where
``in`` and ``out`` are multiples of 8, else ``dequant``. The opt-in
``avx2-7bit`` / ``onednn-7bit`` kernels trade exactness for speed (see ``docs/int8-format.md``).
:func:`use` switches kernels for a block of code (``measure --runtime reference`` runs ``dequant``).

Example:
    >>> cpu_kernel() in ("vnni", "avx2", "int_mm", "dequant", "avx2-7bit", "onednn-7bit")
    True
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Iterator

import torch

from llmpack._env import APPROXIMATE, kernel_option
from llmpack.runtime.kernels import cpu as _cpu

__all__ = ["FEW_TOKENS", "cpu_kernel", "few_token_kernel", "many_token_kernel", "kernel_for", "prepared_kernel", "is_native", "is_exact",
           "use", "reset", "native_float_ops_on", "fp8_kernel_for", "FP8_MIN_CAPABILITY", "fallback_reason",
           "cuda_capability", "warn_once"]

FEW_TOKENS = 8
"""Inputs of at most this many tokens may take :func:`few_token_kernel`."""
_override: list[str] = []


@functools.lru_cache(maxsize=None)
def _chosen() -> str:
    forced = kernel_option()
    if forced == "avx2-7bit":
        from llmpack.runtime.kernels import native, onednn

        if native.checked_ops() is not None:
            return forced
        return "onednn-7bit" if onednn.onednn_available() else "dequant"
    if forced == "onednn-7bit":
        from llmpack.runtime.kernels import onednn

        return forced if onednn.onednn_available() else "dequant"
    if forced != "auto":
        return forced
    flags = _cpu.cpu_flags()
    from llmpack.runtime.kernels import native

    if native.has_vnni() and native.checked_ops() is not None:
        return "vnni"
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni"} or not flags:
        return "int_mm"  # (non-x86, e.g. ARM: _int_mm has optimized paths there too)

    return "avx2" if native.checked_ops() is not None else "dequant"


def cpu_kernel() -> str:
    """The kernel W8A8 layers run on this CPU (see the module's ladder).

    Raises:
        ConfigError: ``LLMPACK_INT8_KERNEL`` names no kernel.

    Example:
        >>> with use("dequant"):
        ...     cpu_kernel()
        'dequant'
    """
    return _override[-1] if _override else _chosen()


@functools.lru_cache(maxsize=None)
def few_token_kernel() -> str | None:
    """``"avx2"`` where ``auto`` chose ``int_mm`` or ``vnni`` on an x86 CPU and llmpack's native AVX2 kernel
    multiplies a decode step's input faster here (timed once per process on a 1 x 2048 x 2048 layer, best of 20
    calls each; all of them exact); else ``None``. (Measured on an AMD EPYC with AVX512-VNNI, 1 token x 576 x
    1536: avx2 0.026 ms, vnni 0.076, int_mm 0.058; 128 tokens: 0.84, 0.46, 0.52 -- hence only for few tokens.)

    Example:
        >>> few_token_kernel() in (None, "avx2")
        True
    """
    chosen = _chosen()
    if kernel_option() != "auto" or chosen not in ("int_mm", "vnni") or "avx2" not in _cpu.cpu_flags():
        return None
    from llmpack.runtime.kernels import native, reference

    ops = native.checked_ops()
    if ops is None:
        return None
    w, scale, x, panels, corr = _timing_layer(ops, 2048, 1)

    t_avx2 = _best(lambda: ops.w8a8(x, [panels], [corr], [scale], [None], 8), 20)
    if chosen == "vnni":
        t_chosen = _best(lambda: ops.w8a8_vnni(x, [panels], [corr], [scale], [None]), 20)
    else:
        t_chosen = _best(lambda: reference.int_mm_w8a8(x, w, scale.reshape(1, -1), None), 20)
    return "avx2" if t_avx2 < t_chosen else None


@functools.lru_cache(maxsize=None)
def many_token_kernel() -> str | None:
    """``"int_mm"`` where ``auto`` chose ``vnni`` and ``torch._int_mm`` (oneDNN, AMX tiles on CPUs that have
    them) runs a prefill-sized product faster here (timed once per process on a 256 x 1024 x 1024 layer, best
    of 5 calls each, quantization and rescale included; both exact); else ``None``. (Measured on an Intel Xeon
    with AMX, 1024 tokens x 576 x 1536: vnni 2.88 ms, int_mm 1.14 with llmpack's native quantization and
    rescale around it.)

    Example:
        >>> many_token_kernel() in (None, "int_mm")
        True
    """
    if kernel_option() != "auto" or _chosen() != "vnni":
        return None
    from llmpack.runtime.kernels import native

    ops = native.checked_ops()
    if ops is None:
        return None
    w, scale, x, panels, corr = _timing_layer(ops, 1024, 256)
    wt = w.t()

    def int_mm() -> torch.Tensor:  # what the dispatcher runs for "int_mm": native quantization and rescale around it
        q, tok = ops.quantize_rows(x)
        return ops.int_mm_epilogue(torch._int_mm(q, wt), tok, scale, None)

    t_vnni = _best(lambda: ops.w8a8_vnni(x, [panels], [corr], [scale], [None]), 5)
    t_int_mm = _best(int_mm, 5)
    return "int_mm" if t_int_mm < t_vnni else None


def _timing_layer(ops: object, size: int, tokens: int) -> tuple[torch.Tensor, ...]:
    """A fixed random ``size x size`` int8 layer (weight, scale, ``tokens`` inputs, native panels and correction)
    that the kernel choices are timed on."""
    from llmpack.runtime.kernels import native

    g = torch.Generator().manual_seed(0)
    w = torch.randint(-127, 128, (size, size), dtype=torch.int8, generator=g)
    scale, x = torch.full((size,), 1e-3), torch.randn(tokens, size, generator=g)
    panels, corr = native.pack(ops, w)
    return w, scale, x, panels, corr


def _best(fn: object, calls: int) -> float:
    fn()  # type: ignore[operator]  # (first call: allocations, oneDNN's primitive cache)
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def native_float_ops_on() -> bool:
    """llmpack's native float swaps (:mod:`llmpack.runtime.fused`) run where its native int8 kernels do."""
    return is_native(cpu_kernel()) or (not _override and few_token_kernel() is not None)


def kernel_for(device_type: str, in_features: int, out_features: int, tokens: int | None = None) -> str:
    """The kernel for a layer of this shape on a ``"cpu"`` / ``"cuda"`` input of ``tokens`` tokens.

    Example:
        >>> kernel_for("cuda", 12, 16)
        'dequant'
    """
    if device_type == "cpu":
        kernel = cpu_kernel()
        if kernel in ("int_mm", "vnni") and tokens is not None and tokens <= FEW_TOKENS and not _override:
            return few_token_kernel() or kernel
        if kernel == "vnni" and not _override:
            return many_token_kernel() or kernel
        return kernel
    if _override and _override[-1] == "dequant":
        return "dequant"
    if device_type == "cuda" and in_features % 8 == 0 and out_features % 8 == 0:
        return "int_mm"
    return "dequant"


FP8_MIN_CAPABILITY = (8, 9)
"""CUDA compute capability with FP8 tensor cores (Ada 8.9, Hopper 9.0, Blackwell 10.x ...)."""


def fp8_kernel_for(device_type: str, capability: tuple[int, int] | None, in_features: int, out_features: int,
                   act_quant: bool = True) -> str:
    """The kernel of an FP8 layer: a pure function of the device, its compute capability and the layer's shape.

    * ``"scaled_mm"``: ``torch._scaled_mm`` with row-wise scales (per token x per output channel) on CUDA with
      compute capability >= :data:`FP8_MIN_CAPABILITY` for W8A8 layers whose ``in`` and ``out`` are multiples of 16;
    * ``"weight_only"``: FP8 weights with float activations (``fp8-weight-only``): the weight is converted to the
      activations' dtype per call (:func:`~llmpack.runtime.kernels.reference.w8a16_float`);
    * ``"dequant"``: compressed-tensors' reference arithmetic in float32 (CPUs, older GPUs, odd shapes).

    Example:
        >>> fp8_kernel_for("cuda", (9, 0), 4096, 4096), fp8_kernel_for("cuda", (8, 0), 4096, 4096)
        ('scaled_mm', 'dequant')
        >>> fp8_kernel_for("cpu", None, 64, 64), fp8_kernel_for("cuda", (9, 0), 64, 64, act_quant=False)
        ('dequant', 'weight_only')
    """
    if not act_quant:
        return "weight_only"
    if _override and _override[-1] == "dequant":
        return "dequant"
    if (device_type == "cuda" and capability is not None and tuple(capability) >= FP8_MIN_CAPABILITY
            and in_features % 16 == 0 and out_features % 16 == 0):
        return "scaled_mm"
    return "dequant"


def fallback_reason(scheme: str, device_type: str, capability: tuple[int, int] | None, kernel: str) -> str | None:
    """Why a layer runs the slow reference path where a fast one was expected (``None``: it does not), for the
    one-time warning. Pure.

    Example:
        >>> fallback_reason("fp8", "cpu", None, "dequant")
        'fp8 on CPU runs the reference (dequantize) path: correct but slow; FP8 matmuls need a CUDA GPU with compute capability >= 8.9'
        >>> fallback_reason("fp8", "cuda", (9, 0), "scaled_mm") is None
        True
    """
    if kernel != "dequant" or _override:
        return None
    if scheme == "fp8":
        need = ".".join(map(str, FP8_MIN_CAPABILITY))
        if device_type == "cpu":
            return (f"fp8 on CPU runs the reference (dequantize) path: correct but slow; FP8 matmuls need a CUDA GPU "
                    f"with compute capability >= {need}")
        if capability is not None and tuple(capability) < FP8_MIN_CAPABILITY:
            cap = ".".join(map(str, capability))
            return f"fp8 on a GPU of compute capability {cap} (< {need}, no FP8 tensor cores) runs the reference path"
        return "fp8 layers whose sizes are not multiples of 16 run the reference path (torch._scaled_mm needs them)"
    if device_type == "cuda":
        return "int8 W8A8 layers whose sizes are not multiples of 8 run the reference path on CUDA (torch._int_mm)"
    return None


@functools.lru_cache(maxsize=None)
def cuda_capability(index: int = 0) -> tuple[int, int] | None:
    """``torch.cuda.get_device_capability(index)`` (cached), ``None`` without CUDA."""
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(index))  # type: ignore[return-value]


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """``warnings.warn(message)`` the first time this process sees ``message``.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     warn_once("doctest: said once"); warn_once("doctest: said once")
        >>> len(w)
        1
    """
    if message in _warned:
        return
    _warned.add(message)
    import warnings

    warnings.warn(message, RuntimeWarning, stacklevel=3)


def prepared_kernel(many: str, few: str | None, tokens: int | None) -> str:
    """Of a layer's two prepared kernels (long inputs, decode steps), the one for ``tokens`` tokens: what
    :func:`kernel_for` would say, read from attributes while ``torch.compile`` traces (shapes are static then).

    Example:
        >>> prepared_kernel("int_mm", "avx2", 1), prepared_kernel("int_mm", "avx2", 128)
        ('avx2', 'int_mm')
    """
    return few if few is not None and tokens is not None and tokens <= FEW_TOKENS else many


def is_native(kernel: str) -> bool:
    """``kernel`` runs llmpack's native AVX2 ops (so do the float swaps of :mod:`llmpack.runtime.fused`)."""
    return kernel in ("vnni", "avx2", "avx2-7bit")


def is_exact(kernel: str) -> bool:
    """``kernel`` computes the file's semantics up to float rounding.

    Example:
        >>> is_exact("avx2"), is_exact("avx2-7bit")
        (True, False)
    """
    return kernel not in APPROXIMATE


@contextlib.contextmanager
def use(kernel: str) -> Iterator[None]:
    """Run CPU int8 layers (and, for ``dequant``, CUDA ones) on ``kernel`` inside the block. Layers prepared
    for another kernel re-pack on first use.

    Example:
        >>> with use("dequant"):
        ...     kernel_for("cpu", 8, 8)
        'dequant'
    """
    _override.append(kernel)
    try:
        yield
    finally:
        _override.pop()


def reset() -> None:
    """Forget the cached choice (after ``LLMPACK_INT8_KERNEL`` changed, or CPU flags patched in tests)."""
    from llmpack.runtime.kernels import native

    native._flags.clear()
    _chosen.cache_clear()
    few_token_kernel.cache_clear()
    many_token_kernel.cache_clear()
