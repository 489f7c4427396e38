"""The int8 runtime's modules in one namespace (each lives in its own module: :mod:`~llmpack.runtime.linear`,
:mod:`~llmpack.runtime.embedding`, :mod:`~llmpack.runtime.siblings`, :mod:`~llmpack.runtime.swap`,
:mod:`~llmpack.runtime.prepare`; the products in :mod:`~llmpack.runtime.kernels`).

Example:
    >>> import torch
    >>> q = Int8Linear.from_float(torch.nn.Linear(64, 32))
    >>> q(torch.randn(2, 5, 64)).shape
    torch.Size([2, 5, 32])
"""

from __future__ import annotations

from llmpack.runtime.embedding import Int8Embedding, TiedInt8Head
from llmpack._env import ENV_KERNEL, KERNEL_CHOICES
from llmpack.runtime.kernels import cpu_kernel
from llmpack.runtime.linear import Int8Linear, is_conv1d
from llmpack.runtime.prepare import compile_int8, prepare_int8
from llmpack.runtime.siblings import SIBLING_GROUPS
from llmpack.runtime.swap import (
    iter_int8_linears,
    quantized_module_names,
    retie_int8_heads,
    set_module,
    swap_quantized_modules,
)

__all__ = [
    "ENV_KERNEL", "KERNEL_CHOICES", "SIBLING_GROUPS", "Int8Linear", "Int8Embedding", "TiedInt8Head", "cpu_kernel",
    "swap_quantized_modules", "is_conv1d", "retie_int8_heads", "quantized_module_names", "iter_int8_linears",
    "prepare_int8", "compile_int8", "set_module",
]
