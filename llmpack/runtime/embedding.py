"""Int8 embedding tables (weight-only, one scale per row) and the tied output head that reuses one.

Example:
    >>> import torch
    >>> emb = Int8Embedding.from_float(torch.nn.Embedding(10, 4))
    >>> emb(torch.tensor([[1, 2]])).shape, TiedInt8Head(emb)(torch.randn(3, 4)).shape
    (torch.Size([1, 2, 4]), torch.Size([3, 10]))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmpack.quant.int8 import int8_per_channel
from llmpack.runtime import kernels

__all__ = ["Int8Embedding", "TiedInt8Head"]


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one float scale per row (weight-only).

    Example:
        >>> e = Int8Embedding.from_float(torch.nn.Embedding(10, 4))
        >>> e(torch.tensor([[1, 2]])).shape
        torch.Size([1, 2, 4])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(
            torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device), requires_grad=False
        )
        self.weight_scale = nn.Parameter(torch.ones(num_embeddings, 1, dtype=dtype, device=device), requires_grad=False)

    @classmethod
    def from_float(
        cls, module: nn.Embedding, *, name: str = "weight", scale_dtype: torch.dtype | None = None
    ) -> "Int8Embedding":
        """Quantize an ``nn.Embedding`` per row (symmetric int8).

        Example:
            >>> Int8Embedding.from_float(torch.nn.Embedding(5, 3)).weight.dtype
            torch.int8
        """
        w = module.weight.detach()
        sdt = scale_dtype or w.dtype
        q, scale = int8_per_channel(w, 0, scale_dtype=sdt, name=name)
        out = cls(q.shape[0], q.shape[1], module.padding_idx, dtype=sdt, device="meta")
        out.weight = nn.Parameter(q.contiguous(), requires_grad=False)
        out.weight_scale = nn.Parameter(scale.contiguous(), requires_grad=False)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Look up rows and dequantize only those."""
        rows = F.embedding(ids, self.weight)
        scales = F.embedding(ids, self.weight_scale)
        return rows.to(self.weight_scale.dtype) * scales


class TiedInt8Head(nn.Module):
    """An output projection that reuses an :class:`Int8Embedding`'s int8 table (tied embeddings):
    ``logits = x (W_q * s)^T``, weight-only (:func:`llmpack.runtime.kernels.w8a16`). It owns no tensors, so the
    table is stored once.

    Example:
        >>> emb = Int8Embedding.from_float(torch.nn.Embedding(10, 4))
        >>> TiedInt8Head(emb)(torch.randn(3, 4)).shape
        torch.Size([3, 10])
    """

    def __init__(self, embedding: Int8Embedding) -> None:
        super().__init__()
        # A plain attribute (not a submodule), so state_dict() does not repeat the table.
        object.__setattr__(self, "_embedding", embedding)
        self.in_features = embedding.embedding_dim
        self.out_features = embedding.num_embeddings
        self._packed: kernels.PackedWeight | None = None
        self._packed_key: tuple[Any, ...] | None = None
        self._kernel: str | None = None  # chosen by prepare() (read as is under torch.compile)
        self._kernel_few: str | None = None  # the same for 1 to FEW_TOKENS tokens

    def packed(self) -> kernels.PackedWeight:
        """The table as a :class:`~llmpack.runtime.kernels.PackedWeight` (rebuilt when it changes)."""
        if torch.compiler.is_compiling() and self._packed is not None:
            return self._packed
        emb = self._embedding
        w, s = emb.weight, emb.weight_scale
        key = (w.data_ptr(), s.data_ptr(), s.dtype, None if w.is_inference() else w._version)
        if key != self._packed_key or self._packed is None:
            self._packed = kernels.PackedWeight(w, s, None)
            self._packed_key = key
        return self._packed

    def prepare(self) -> "TiedInt8Head":
        """Build the packed table now (:func:`prepare_int8` calls it).

        Example:
            >>> TiedInt8Head(Int8Embedding.from_float(torch.nn.Embedding(10, 4))).prepare().out_features
            10
        """
        self.packed()
        dev = self._embedding.weight.device.type
        self._kernel = kernels.kernel_for(dev, self.in_features, self.out_features)
        self._kernel_few = kernels.kernel_for(dev, self.in_features, self.out_features, 1)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the shared int8 table."""
        x2 = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling() and self._kernel is not None:  # (shapes are static while tracing)
            kernel = kernels.prepared_kernel(self._kernel, self._kernel_few, x2.shape[0])
        else:
            kernel = kernels.kernel_for(x2.device.type, self.in_features, self.out_features, x2.shape[0])
        y = kernels.w8a16(x2, self.packed(), kernel)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
