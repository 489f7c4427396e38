"""One-op equivalents of float modules of transformers models, swapped in by
:func:`llmpack.runtime.modules.prepare_int8` (so by ``llmpack.load`` and the in-memory ``llmpack.quantize``
of int8 models).

Once the linear layers are int8, the float parts of a small model are a third of an eager forward.
transformers' ``NewGELUActivation`` (GPT-2's ``gelu_new``) computes the tanh approximation of GELU as
eight tensor operations; ``F.gelu(x, approximate="tanh")`` computes the same formula in one vectorised
pass (5x faster on a 1024x3072 activation, results equal to ~1 float32 ulp; transformers ships it as
``gelu_pytorch_tanh`` and calls it equivalent). (Llama's RMSNorm through ``F.rms_norm`` was tried and
dropped: on CPU PyTorch decomposes it into the same operations, no faster end to end.)

Only that exact transformers class is replaced; the module owns no parameters, so the state dict is
unchanged.

Example:
    >>> import torch
    >>> from transformers.activations import NewGELUActivation
    >>> m = torch.nn.Sequential(NewGELUActivation())
    >>> fuse_float_modules(m), type(m[0]).__name__
    (1, 'TanhGELU')
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TanhGELU", "fuse_float_modules"]

_TANH_GELUS = frozenset({"NewGELUActivation"})


class TanhGELU(nn.Module):
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` in one pass (``F.gelu(x, approximate="tanh")``).

    Example:
        >>> TanhGELU()(torch.zeros(2)).tolist()
        [0.0, 0.0]
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def _replacement(mod: nn.Module) -> nn.Module | None:
    cls = type(mod)
    if not cls.__module__.startswith("transformers."):
        return None
    if cls.__name__ in _TANH_GELUS:
        return TanhGELU()
    return None


def fuse_float_modules(model: nn.Module) -> int:
    """Replace transformers' ``NewGELUActivation`` modules by :class:`TanhGELU`, in place; returns how many.

    Example:
        >>> fuse_float_modules(torch.nn.Linear(2, 2))
        0
    """
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            new = _replacement(child)
            if new is not None:
                swaps.append((parent, name, new))
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return len(swaps)
