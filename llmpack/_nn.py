"""Module helpers every layer shares: the one GPT-2 ``Conv1D`` test and the one forward-hooks context.

Nothing here imports torch or transformers at import time: a module is recognised by its class name, and
hooks are registered through the module's own methods.

Example:
    >>> import torch
    >>> is_conv1d(torch.nn.Linear(2, 2)), is_conv1d_name("Conv1D")
    (False, True)
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    import torch

__all__ = ["CONV1D", "is_conv1d", "is_conv1d_name", "forward_hooks"]

CONV1D = "Conv1D"
"""The class name of transformers' GPT-2 style linear layer (weight stored ``[in, out]``)."""


def is_conv1d_name(class_name: str) -> bool:
    """Whether a module class name (as a plan or ``config.json`` records it) is transformers' ``Conv1D``.

    Example:
        >>> is_conv1d_name("Linear")
        False
    """
    return class_name == CONV1D


def is_conv1d(module: Any) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2 style, weight stored ``[in, out]``, ``nf`` output features).

    Example:
        >>> from transformers.pytorch_utils import Conv1D
        >>> is_conv1d(Conv1D(4, 2))
        True
    """
    return is_conv1d_name(type(module).__name__) and hasattr(module, "nf")


@contextlib.contextmanager
def forward_hooks(hooks: "Iterable[tuple[torch.nn.Module, Callable[..., Any]]]", *, pre: bool = False) -> Iterator[None]:
    """Register ``(module, hook)`` pairs as forward hooks (``pre=True``: forward pre-hooks) for the block.

    Every hook registered is removed on exit, also when the block or registering a later pair raises.

    Example:
        >>> import torch
        >>> lin, seen = torch.nn.Linear(2, 2), []
        >>> with forward_hooks([(lin, lambda m, args, out: seen.append(out.shape))]):
        ...     _ = lin(torch.ones(1, 2))
        >>> _ = lin(torch.ones(1, 2))
        >>> seen
        [torch.Size([1, 2])]
    """
    handles = []
    try:
        for module, hook in hooks:
            handles.append(module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
