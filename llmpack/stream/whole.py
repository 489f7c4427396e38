"""The fallback for a model that cannot be streamed: run it whole, through the streamer's interface."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import torch

from llmpack.errors import StreamUnsupported
from llmpack.stream.blocks import BlockStreamer, Window

__all__ = ["WholeModel"]


class WholeModel(BlockStreamer):
    """The fallback for a model that cannot be streamed: the resident model is its one "block".

    Same interface as :class:`BlockStreamer` (one block, index 0, named ``""``); ``run`` is the model's own
    forward and the "hidden states" it keeps are its outputs (logits, or an encoder's last hidden states),
    so everything built on the streamer (statistics, simulation, the FP16 check, scoring) runs unchanged.
    Use it only when the model fits in memory (:func:`llmpack.stream.open_streamer` decides).

    Example:
        >>> m = torch.nn.Sequential(torch.nn.Embedding(10, 4))
        >>> WholeModel(m).windows([{"input": torch.tensor([[1, 2]])}])[0].calls
        [((), {}, 'whole')]
    """

    def __init__(self, model: torch.nn.Module) -> None:  # noqa: D107 - documented on the class
        self.model = model.eval()
        self.weights = None
        self.device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.dtype = None
        self.prefix = ""
        self.blocks = _OneBlock(model)  # type: ignore[assignment]
        self.keep_dtype = {}
        self.on_block, self.on_rest = [], []
        self._fmt = [("tensor", 1)]
        self._rest_ready = True

    def block_name(self, i: int) -> str:
        return ""

    def windows(self, inputs: Sequence[Mapping[str, torch.Tensor]]) -> list[Window]:
        return [Window({k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inp.items()},
                       None, [((), {}, "whole")]) for inp in inputs]

    def run(self, blk: torch.nn.Module, i: int, w: Window) -> torch.Tensor:
        out = self._model_call(w.inputs)
        for key in ("logits", "last_hidden_state"):
            t = out.get(key) if isinstance(out, Mapping) else getattr(out, key, None)
            if isinstance(t, torch.Tensor):
                return t
        if isinstance(out, torch.Tensor):
            return out
        raise StreamUnsupported(f"{type(self.model).__name__} returns neither logits nor hidden states")

    def tail(self, w: Window, hidden: torch.Tensor | None = None, chunk: tuple[int, int] | None = None) -> Any:
        h = self._hidden(w, hidden)
        if chunk is not None:
            h = h[:, chunk[0]:chunk[1]]
        head = getattr(self.model, "get_output_embeddings", None)
        return {"logits": h} if callable(head) and head() is not None else {"last_hidden_state": h}


class _OneBlock:
    """The block list of :class:`WholeModel`: the model itself, once."""

    def __init__(self, model: torch.nn.Module) -> None:
        self._m = model

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> torch.nn.Module:
        if i != 0:
            raise IndexError(i)
        return self._m

    def modules(self) -> Iterator[torch.nn.Module]:
        return self._m.modules()

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return self._m.parameters()
