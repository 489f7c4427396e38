"""The int8 / fp8 kernels in effect, in words: what :func:`llmpack.measure` records beside every figure.

Example:
    >>> describe_fp8_runtime("cpu").split()[0]
    'dequant'
"""

from __future__ import annotations

__all__ = ["describe_runtime", "describe_fp8_runtime"]


def describe_fp8_runtime(device: str = "cpu") -> str:
    """The FP8 kernel in effect on ``device``, in words (what ``measure`` records for fp8 models).

    Example:
        >>> describe_fp8_runtime("cpu")
        "dequant (compressed-tensors' arithmetic in float32: FP8 tokens, dequantized FP8 weights)"
    """
    from llmpack.runtime import kernels
    from llmpack.runtime.kernels.select import cuda_capability

    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    k = kernels.fp8_kernel_for(dev, cuda_capability() if dev == "cuda" else None, 4096, 4096)
    words = {"dequant": "compressed-tensors' arithmetic in float32: FP8 tokens, dequantized FP8 weights",
             "scaled_mm": "torch._scaled_mm on FP8 tensor cores, row-wise scales, bf16 output"}
    return f"{k} ({words[k]})"


def describe_runtime(device: str = "cpu") -> str:
    """The int8 kernel in effect, in words (what ``measure`` records).

    Example:
        >>> from llmpack.runtime import kernels
        >>> with kernels.use("dequant"):
        ...     describe_runtime()
        "dequant (compressed-tensors' arithmetic op for op, as transformers + compressed-tensors run it)"
    """
    from llmpack.runtime import kernels

    words = {
        "dequant": "compressed-tensors' arithmetic op for op, as transformers + compressed-tensors run it",
        "int_mm": "torch._int_mm, the file's semantics up to float rounding",
        "vnni": "llmpack's native AVX512-VNNI kernel, the file's semantics up to float rounding",
        "avx2": "llmpack's native AVX2 kernel, the file's semantics up to float rounding",
        "avx2-7bit": "llmpack's native AVX2 kernel with opt-in 7-bit centred tokens (not the file's semantics)",
        "onednn-7bit": "oneDNN / FBGEMM with opt-in 7-bit centred tokens (not the file's semantics)",
    }
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    k = kernels.kernel_for(dev, 8, 8)
    out = f"{k} ({words[k]})"
    few = kernels.kernel_for(dev, 8, 8, tokens=1)
    if few != k:
        out += f"; decode steps {few} ({words[few]})"
    return out
