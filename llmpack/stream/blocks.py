"""Layer-streamed execution: run a transformers model one decoder block at a time.

The model skeleton is built with its parameters on the meta device (buffers real, so rotary tables
and other non-persistent buffers are computed as usual). Everything outside the block list (the
*rest*: embeddings, final norm, head) is materialised once on the compute device. Then:

1. **capture**: the model's own ``forward`` runs on each window with every block replaced by a stub
   that records what the block is called with (hidden states, position embeddings, masks, per-layer
   kwargs such as Gemma's sliding-window masks) and passes the hidden states through. Nothing of an
   architecture is re-implemented: whatever the model passes its blocks is what they get.
2. **blocks**: block ``i`` is materialised from the weights (mmap'd checkpoint) in the compute dtype on
   the compute device, every window runs through it (callers hook into it: statistics, simulation,
   overflow checks), and it is dropped back to meta before block ``i + 1``.
3. **tail**: the model's ``forward`` runs again with the blocks stubbed to return the final hidden
   states, so the final norm, head and any logit soft-capping run as the model defines them; causal LMs
   do this per chunk of tokens, so ``vocab × tokens`` logits are never held whole.

Peak memory is the rest + one block + the windows' hidden states, whatever the depth.

Example:
    >>> from llmpack.testing import tiny_model
    >>> m = tiny_model("llama")
    >>> st = BlockStreamer.resident(m)
    >>> ids = torch.tensor([[1, 2, 3, 4]])
    >>> logits = torch.cat(list(st.logits([{"input_ids": ids}])[0]), dim=0)
    >>> bool(torch.allclose(logits, m(input_ids=ids).logits[0], atol=1e-5))
    True
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from llmpack.errors import BadInputError, ConfigMismatchError, StreamUnsupported
from llmpack.stream.memory import free_memory, trim_heap
from llmpack.stream.skeleton import WeightGetter, find_blocks, persistent_buffers, set_tensor, tie_parameter

__all__ = ["BlockStreamer", "Window", "find_blocks", "StreamUnsupported", "LOGIT_CHUNK", "free_memory"]

LOGIT_CHUNK = 128
"""Tokens per logits chunk in :meth:`BlockStreamer.logits` (``chunk × vocab`` float32 at a time)."""


class _Caught(Exception):
    """Raised by a capture stub to stop the model's forward early."""


@dataclasses.dataclass
class Window:
    """One calibration/evaluation window as it flows through the blocks.

    Attributes:
        inputs: the model inputs (``input_ids``, ``attention_mask`` ...), on the compute device.
        hidden: the hidden states entering the next block (``None`` before :meth:`BlockStreamer.windows`).
        calls: per block, ``(args, kwargs)`` the model passes it besides the hidden states.
    """

    inputs: dict[str, torch.Tensor]
    hidden: torch.Tensor | None = None
    calls: list[tuple[tuple[Any, ...], dict[str, Any], str | int]] = dataclasses.field(default_factory=list)


class BlockStreamer:
    """Runs a model block by block (see the module docstring). Build it with
    :func:`llmpack.stream.open_streamer` (a directory) or :meth:`resident` (an in-memory model).

    Args:
        model: the model; its block parameters may be on the meta device (streamed) or real (resident).
        weights: full tensor name → tensor for streamed models (``None``: the model is resident).
        device: compute device.
        dtype: dtype float weights are materialised in (``None``: as stored).

    Attributes:
        keep_dtype: module name → dtype its weights are materialised in instead (FP16 overflow remedies
            kept in float32 also run in float32).
    """

    def __init__(self, model: torch.nn.Module, weights: WeightGetter | None = None, *,
                 device: "str | torch.device" = "cpu", dtype: torch.dtype | None = torch.float32) -> None:
        self.model = model.eval()
        self.weights = weights
        self.device = torch.device(device)
        self.dtype = dtype
        self.prefix, self.blocks = find_blocks(model)
        self.keep_dtype: dict[str, torch.dtype] = {}
        self.on_block: list[Callable[[torch.nn.Module], Any]] = []
        """Called with each block once its weights are in (e.g. the int8 runtime's kernel preparation)."""
        self.on_rest: list[Callable[[torch.nn.Module], Any]] = []
        """Called with the model once everything outside the blocks is in."""
        self._fmt: list[tuple[str, int] | None] = [None] * len(self.blocks)
        self._rest_ready = weights is None
        if weights is None:
            dev = next((p.device for p in model.parameters()), torch.device("cpu"))
            self.device = dev
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BadInputError("device='cuda' was asked for but CUDA is not available: use device='cpu'")

    # ------------------------------------------------------------------ construction
    @classmethod
    def resident(cls, model: torch.nn.Module) -> "BlockStreamer":
        """A streamer over an in-memory model (blocks stay as they are; the same code path as streaming)."""
        return cls(model, None)

    @property
    def streamed(self) -> bool:
        """True when blocks are materialised from weights one at a time."""
        return self.weights is not None

    def block_name(self, i: int) -> str:
        return f"{self.prefix}.{i}"

    def _cast(self, name: str, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            dt = self._dtype_for(name)
            if dt is not None and t.dtype != dt:
                t = t.to(dt)
        return t.to(self.device) if t.device != self.device else t

    def _weight(self, name: str) -> torch.Tensor:
        if self.weights is None:
            raise StreamUnsupported(f"{name}: this streamer holds a resident model and reads no weights")
        return self.weights(name)

    def _hidden(self, w: Window, hidden: torch.Tensor | None = None) -> torch.Tensor:
        h = w.hidden if hidden is None else hidden
        if h is None:
            raise StreamUnsupported("a window has no hidden states yet: capture it with windows() first")
        return h

    def _dtype_for(self, name: str) -> torch.dtype | None:
        for m, dt in self.keep_dtype.items():
            if name == m or name.startswith(m + "."):
                return dt
        return self.dtype

    def _names(self, module: torch.nn.Module, prefix: str) -> list[str]:
        names = [f"{prefix}{n}" for n, _ in module.named_parameters(remove_duplicate=False)]
        return names + persistent_buffers(module, prefix)

    def _load_into(self, module: torch.nn.Module, prefix: str) -> None:
        for full in self._names(module, prefix):
            set_tensor(self.model, full, self._cast(full, self._weight(full)))
        for name, b in list(module.named_buffers()):  # non-persistent buffers follow the block to the device
            if b.device != self.device and b.device.type != "meta":
                set_tensor(self.model, f"{prefix}{name}", b.to(self.device))

    def prepare(self) -> None:
        """Materialise everything outside the blocks (embeddings, norms, head), once."""
        if self._rest_ready:
            return
        block_ids = {id(p) for p in self.blocks.parameters()}
        stored_as = getattr(self.weights, "stored_as", None)
        seen: dict[Any, torch.nn.Parameter] = {}
        for full, p in self.model.named_parameters(remove_duplicate=False):
            if id(p) in block_ids:
                continue
            # tied weights (the same Parameter object, or two names stored once) share one tensor, as after
            # from_pretrained's tie_weights: a tied head costs no second copy
            key = (stored_as(full) if stored_as is not None else None) or id(p)
            if key in seen or id(p) in seen:
                tie_parameter(self.model, full, seen.get(key, seen.get(id(p))))
                continue
            set_tensor(self.model, full, self._cast(full, self._weight(full)))
            seen[key] = seen[id(p)] = self.model.get_parameter(full)
        block_mods = {id(m) for m in self.blocks.modules()}
        for mname, mod in self.model.named_modules():
            if id(mod) in block_mods:
                continue
            for b, t in list(mod._buffers.items()):
                if t is None:
                    continue
                full = f"{mname}.{b}" if mname else b
                if b in mod._non_persistent_buffers_set:
                    if t.device != self.device:
                        mod._buffers[b] = t.to(self.device)
                else:
                    mod._buffers[b] = self._cast(full, self._weight(full))
        pre = self.prefix + "."
        self._apply_fp32([k for k in self.keep_dtype if not k.startswith(pre)])
        for fn in self.on_rest:
            fn(self.model)
        self._rest_ready = True
        trim_heap()  # the stored-dtype copies read on the way

    def _apply_fp32(self, names: list[str]) -> None:
        """Modules kept in float32 (FP16 overflow remedies) cast their inputs up and outputs back."""
        names = [n for n in names if self.keep_dtype.get(n) == torch.float32]
        if names:
            from llmpack.runtime.load import apply_fp32_modules

            apply_fp32_modules(self.model, names)

    @contextlib.contextmanager
    def block(self, i: int) -> Iterator[torch.nn.Module]:
        """Materialise block ``i`` for the duration of the context (a no-op for resident models).

        On exit a streamed block is replaced by a fresh meta copy of itself, so weights, kernel caches,
        hooks and module swaps made while it ran all go with it.
        """
        blk = self.blocks[i]
        if not self.streamed:
            yield blk
            return
        template = copy.deepcopy(blk)
        prefix = self.block_name(i) + "."
        try:
            self._load_into(blk, prefix)
            self._apply_fp32([k for k in self.keep_dtype if k.startswith(prefix)])
            for fn in self.on_block:
                fn(blk)
            yield blk
        finally:
            self.blocks[i] = template
            del blk
            trim_heap()

    # ------------------------------------------------------------------ stubs
    @contextlib.contextmanager
    def _stubbed(self, stub: Callable[[int, tuple, dict], Any]) -> Iterator[None]:
        olds = []
        try:
            for i, blk in enumerate(self.blocks):
                olds.append(blk.__dict__.get("forward"))
                blk.forward = (lambda *a, _i=i, **k: stub(_i, a, k))  # type: ignore[method-assign]
            yield
        finally:
            for blk, old in zip(self.blocks, olds):
                if old is None:
                    blk.__dict__.pop("forward", None)
                else:
                    blk.forward = old  # type: ignore[method-assign]

    @staticmethod
    def _split(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict, str | int]:
        if args:
            return args[0], args[1:], dict(kwargs), 0
        if "hidden_states" in kwargs:
            k = dict(kwargs)
            return k.pop("hidden_states"), (), k, "hidden_states"
        raise StreamUnsupported("a block was called without hidden states as its first argument: cannot stream it")

    def _wrap(self, i: int, hidden: torch.Tensor) -> Any:
        fmt = self._fmt[i] or self._fmt[0]
        if fmt is None or fmt[0] == "tensor":
            return hidden
        return (hidden,) + (None,) * (fmt[1] - 1)

    def _model_call(self, inputs: Mapping[str, torch.Tensor]) -> Any:
        kw = dict(inputs)
        kw.setdefault("use_cache", False)
        with torch.no_grad():
            return self.model(**kw)

    # ------------------------------------------------------------------ passes
    def windows(self, inputs: Sequence[Mapping[str, torch.Tensor]]) -> list[Window]:
        """Capture, for every window, the embeddings entering block 0 and what each block is called with.

        Example:
            >>> from llmpack.testing import tiny_model
            >>> ws = BlockStreamer.resident(tiny_model("gpt2")).windows([{"input_ids": torch.tensor([[1, 2]])}])
            >>> ws[0].hidden.shape, len(ws[0].calls)
            (torch.Size([1, 2, 64]), 2)
        """
        self.prepare()
        for inp in inputs:
            self._check_ids(inp)
        out: list[Window] = []
        last = len(self.blocks) - 1
        if inputs and self._fmt[0] is None:
            self._probe(inputs[0])
        for inp in inputs:
            w = Window({k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inp.items()})

            def record(i: int, a: tuple, k: dict, w: Window = w) -> Any:
                hidden, rest, kw, slot = self._split(a, k)
                if i == 0:
                    w.hidden = hidden
                w.calls.append((rest, kw, slot))
                if i == last:
                    raise _Caught  # everything the blocks need is known: skip the head (no logits computed)
                return self._wrap(i, hidden)

            with self._stubbed(record), contextlib.suppress(_Caught):
                self._model_call(w.inputs)
            if w.hidden is None or len(w.calls) != len(self.blocks):
                raise StreamUnsupported(
                    f"{type(self.model).__name__} called {len(w.calls)} of its {len(self.blocks)} blocks in order: "
                    "it cannot be streamed block by block")
            out.append(w)
        return out

    def _check_ids(self, inp: Mapping[str, torch.Tensor]) -> None:
        """Token ids beyond the embedding table: one clear error instead of an IndexError deep in the model."""
        ids = inp.get("input_ids")
        get = getattr(self.model, "get_input_embeddings", None)
        emb = get() if callable(get) else None
        rows = getattr(emb, "num_embeddings", None)
        if isinstance(ids, torch.Tensor) and ids.numel() and isinstance(rows, int) and int(ids.max()) >= rows:
            vocab = getattr(getattr(self.model, "config", None), "vocab_size", rows)
            raise ConfigMismatchError(
                f"the tokenizer gives token id {int(ids.max())} but the model's embedding has {rows} rows "
                f"(config.json vocab_size={vocab}): use the tokenizer the model was trained with, or fix vocab_size")

    def _probe(self, inp: Mapping[str, torch.Tensor]) -> None:
        """Learn what a block returns (a tensor, or a tuple led by the hidden states) by running block 0 once."""
        w = Window({k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inp.items()})

        def catch(i: int, a: tuple, k: dict) -> Any:
            hidden, rest, kw, slot = self._split(a, k)
            w.hidden = hidden
            w.calls.append((rest, kw, slot))
            raise _Caught

        with self._stubbed(catch), contextlib.suppress(_Caught):
            self._model_call(w.inputs)
        if w.hidden is None:
            raise StreamUnsupported(f"{type(self.model).__name__} never called its first block: it cannot be streamed")
        with self.block(0) as blk:
            self.run(blk, 0, w)

    def run(self, blk: torch.nn.Module, i: int, w: Window) -> torch.Tensor:
        """Run block ``i`` (materialised) on window ``w``'s hidden states; returns the new hidden states."""
        rest, kw, slot = w.calls[i]
        h = self._hidden(w)
        with torch.no_grad():
            out = blk(h, *rest, **kw) if slot == 0 else blk(**{**kw, "hidden_states": h})
        if isinstance(out, torch.Tensor):
            fmt: tuple[str, int] = ("tensor", 1)
            hidden = out
        elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            fmt, hidden = ("tuple", len(out)), out[0]
        else:
            hidden = getattr(out, "last_hidden_state", None) if out is not None else None
            if not isinstance(hidden, torch.Tensor):
                raise StreamUnsupported(f"block {i} returned {type(out).__name__}: cannot stream it")
            fmt = ("tensor", 1)
        self._fmt[i] = fmt
        return hidden

    def forward_blocks(self, windows: Sequence[Window],
                       each: Callable[[int, torch.nn.Module], Any] | None = None) -> None:
        """Run every window through every block in order, in place (``w.hidden`` ends as the last block's output).

        ``each(i, block)`` is called with each materialised block before the windows run through it; a
        context manager it returns is held while they do (hooks, simulation).
        """
        for i in range(len(self.blocks)):
            with self.block(i) as blk:
                ctx = each(i, blk) if each is not None else None
                with ctx if isinstance(ctx, contextlib.AbstractContextManager) else contextlib.nullcontext():
                    for w in windows:
                        w.hidden = self.run(blk, i, w)
            del blk

    def tail(self, w: Window, hidden: torch.Tensor | None = None, chunk: tuple[int, int] | None = None) -> Any:
        """The model's outputs for window ``w`` given its final hidden states (a token range with ``chunk``)."""
        h = self._hidden(w, hidden)
        inputs = dict(w.inputs)
        if chunk is not None:
            a, b = chunk
            h = h[:, a:b]
            inputs = {k: (v[:, a:b] if isinstance(v, torch.Tensor) and v.dim() >= 2 else v) for k, v in inputs.items()}

        def give(i: int, a: tuple, k: dict) -> Any:
            hidden_in, _, _, _ = self._split(a, k)
            return self._wrap(i, h if i == 0 else hidden_in)

        with self._stubbed(give):
            return self._model_call(inputs)

    def tail_logits(self, w: Window, hidden: torch.Tensor | None = None, chunk_tokens: int = LOGIT_CHUNK,
                    span: tuple[int, int] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, float32 logits [chunk, vocab])`` of a single-row window, chunk by chunk over ``span``
        (token positions ``[lo, hi)``, default all); each chunk is released before the next is computed."""
        h = self._hidden(w, hidden)
        if h.shape[0] != 1:
            raise BadInputError("chunked logits need one row per window")
        lo, hi = span if span is not None else (0, h.shape[1])
        for a in range(lo, hi, chunk_tokens):
            out = self.tail(w, h, (a, min(hi, a + chunk_tokens)))
            logits = (out["logits"] if isinstance(out, Mapping) else out.logits)[0].float()
            del out
            yield a, logits
            del logits

    def logits(self, inputs: Sequence[Mapping[str, torch.Tensor]],
               chunk_tokens: int = LOGIT_CHUNK) -> list[Iterator[torch.Tensor]]:
        """Stream ``inputs`` through the blocks; per window, an iterator of logits chunks (for tests and tools)."""
        ws = self.windows(inputs)
        self.forward_blocks(ws)
        return [(lg for _, lg in self.tail_logits(w, chunk_tokens=chunk_tokens)) for w in ws]

