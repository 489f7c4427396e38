"""What a linear layer is, and which weight dimension holds its inputs: ``nn.Linear`` and transformers'
GPT-2 ``Conv1D`` (weight stored ``[in, out]``). Pure module inspection, no forward pass.

Example:
    >>> import torch
    >>> is_linear(torch.nn.Linear(2, 3)), in_dim(torch.nn.Linear(2, 3))
    (True, 1)
"""

from __future__ import annotations

import torch

from llmpack._nn import is_conv1d

__all__ = ["is_linear", "in_dim"]


def is_linear(module: torch.nn.Module) -> bool:
    """True for ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2, weight stored ``[in, out]``)."""
    return isinstance(module, torch.nn.Linear) or is_conv1d(module)


def in_dim(module: torch.nn.Module) -> int:
    """The weight dimension that indexes input features: 1 for ``nn.Linear``, 0 for ``Conv1D``."""
    return 0 if is_conv1d(module) else 1
