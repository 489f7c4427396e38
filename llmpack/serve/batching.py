"""The batching scheduler: one thread runs every request as rows of one batched prefill + decode.

Requests are gathered while the scheduler is idle (up to ``max_batch_size`` rows or ``max_wait_ms``),
left-padded and prefilled together; every decode step then feeds one token per row with the attention
mask and explicit position ids, so padding never changes a row's result. With ``continuous=True`` new
requests join the running batch at the next step boundary: they are prefilled on their own, and their
KV cache is left-padded (or the batch's is) to a common length and concatenated on the batch axis.
Finished and cancelled rows leave the batch at the step boundary, and columns that are padding in every
remaining row are cut off.

The thread talks to the asyncio world only through each request's ``emit`` callback.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import logging
import queue
import threading
import time
from typing import Any, Callable, Sequence

import torch

from llmpack.errors import BadInputError, LlmpackError

__all__ = ["SamplingParams", "GenRequest", "Scheduler", "QueueFullError", "eos_ids"]

log = logging.getLogger("llmpack.serve")


class QueueFullError(LlmpackError):
    """The server's request queue is full (``--max-queue``); the client is told to retry (HTTP 429)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded.

    Example:
        >>> SamplingParams(max_tokens=16).greedy
        True
    """

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        """Temperature 0 means argmax (what ``generate(do_sample=False)`` does)."""
        return self.temperature <= 0.0


Event = tuple[str, Any]  # ("token", id) | ("done", finish_reason) | ("error", message)


class GenRequest:
    """One sequence to generate. ``emit`` is called from the scheduler thread with each event.

    Example:
        >>> events = []
        >>> r = GenRequest([1, 2, 3], SamplingParams(max_tokens=2), lambda kind, v: events.append((kind, v)))
        >>> r.cancel(); r.cancelled
        True
    """

    _ids = itertools.count()

    def __init__(self, prompt_ids: Sequence[int], params: SamplingParams, emit: Callable[[str, Any], None]) -> None:
        self.id = next(self._ids)
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.emit = emit
        self.cancelled = False
        self.submitted = time.perf_counter()
        self.generated: list[int] = []
        self.generator: torch.Generator | None = None
        if not params.greedy and params.seed is not None:
            self.generator = torch.Generator().manual_seed(params.seed)

    def cancel(self) -> None:
        """Ask the scheduler to drop this row at the next step boundary (thread-safe)."""
        self.cancelled = True


def eos_ids(model: torch.nn.Module, tokenizer: Any = None) -> set[int]:
    """End-of-sequence ids the way ``generate`` picks them: the generation config's, else the tokenizer's.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> sorted(eos_ids(tiny_model("llama")))
        [2]
    """
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None and tokenizer is not None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


@dataclasses.dataclass
class _Batch:
    """The running batch: its rows, the KV cache, the 2-D attention mask, next position and last token per row."""

    rows: list[GenRequest]
    cache: Any
    mask: torch.Tensor  # [B, L] 1 = real token
    pos: torch.Tensor  # [B] position of each row's last chosen token (where it is fed next)
    last: torch.Tensor  # [B] last token id


def _kv_layers(cache: Any) -> list[Any]:
    return list(getattr(cache, "layers", []))


def _pad_left(batch: _Batch, cols: int) -> None:
    if cols <= 0:
        return
    for layer in _kv_layers(batch.cache):
        for name in ("keys", "values"):
            t = getattr(layer, name)
            pad = t.new_zeros(*t.shape[:-2], cols, t.shape[-1])
            setattr(layer, name, torch.cat([pad, t], dim=-2))
    batch.mask = torch.cat([batch.mask.new_zeros(batch.mask.shape[0], cols), batch.mask], dim=1)


class Scheduler:
    """Runs :class:`GenRequest` rows on a causal LM in one thread, batched.

    Args:
        model: a causal LM (``llmpack.load`` output) in eval mode.
        max_batch_size: most rows per step.
        max_wait_ms: how long an idle scheduler gathers requests before prefilling.
        max_queue: most requests waiting for a slot of a full batch; :meth:`submit` raises
            :class:`QueueFullError` beyond.
        eos: end-of-sequence ids (default: :func:`eos_ids`).
        max_positions: the context (``max_position_embeddings``); rows stop with ``"length"`` there.
        continuous: join at step boundaries (else at the next batch).
        row_exact: wrap the model's attention so a row's tokens never depend on its batch-mates' padding
            (:func:`llmpack.serve.attention.install_row_attention`; changes ``model`` in place).
        on_step: called after each prefill/decode step with ``(phase, rows)`` (metrics).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> s = Scheduler(tiny_model("llama"), max_batch_size=4)
        >>> s.generate([[5, 6, 7], [8]], SamplingParams(max_tokens=3, ignore_eos=True))[0].__len__()
        3
    """

    def __init__(self, model: torch.nn.Module, *, max_batch_size: int = 8, max_wait_ms: float = 10.0,
                 max_queue: int = 64, eos: set[int] | None = None, max_positions: int | None = None,
                 continuous: bool = True, row_exact: bool = True,
                 on_step: Callable[[str, int], None] | None = None) -> None:
        from llmpack.serve.attention import install_row_attention

        self.model = model
        self.row_exact = install_row_attention(model) if row_exact else False
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.eos = eos_ids(model) if eos is None else set(eos)
        cfg = model.config
        self.max_positions = max_positions or getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        self.continuous = continuous
        self.on_step = on_step
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._logits_to_keep = "logits_to_keep" in params
        # transformers 5.x renames past_key_values to cache (the old name is a deprecated alias)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        can_generate = getattr(model, "can_generate", lambda: False)
        if not can_generate() or self._cache_kw not in params:
            raise BadInputError(f"{type(model).__name__} is not a causal LM with a KV cache: serve needs a text-generation "
                                "model (e.g. *ForCausalLM)")
        self._waiting: queue.Queue[GenRequest] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.running = 0

    # --- public ---------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests queued, not yet in a batch."""
        return self._waiting.qsize()

    def submit(self, req: GenRequest) -> None:
        """Queue a request; raises :class:`QueueFullError` when the batch is full and ``max_queue`` requests
        already wait for a slot (requests in flight >= ``max_batch_size + max_queue``)."""
        if self._waiting.qsize() + self.running >= self.max_batch_size + self.max_queue:
            raise QueueFullError(f"{self.running} requests are running and {self._waiting.qsize()} waiting "
                                 f"(--max-batch-size {self.max_batch_size}, --max-queue {self.max_queue}); retry later")
        self._waiting.put(req)
        self._wake.set()

    def start(self) -> None:
        """Start the scheduler thread (a daemon)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="llmpack-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread after the current step; requests still queued are ended with an error event."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def generate(self, prompts: Sequence[Sequence[int]],
                 params: "SamplingParams | Sequence[SamplingParams]") -> list[list[int]]:
        """Run ``prompts`` to completion on the calling thread (the scheduler thread must not be running);
        returns the new token ids of each. ``params`` is one for all prompts or one per prompt."""
        per = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        reqs = [GenRequest(p, sp, lambda k, v: None) for p, sp in zip(prompts, per)]
        for r in reqs:
            self._waiting.put(r)
        batch = None
        with torch.inference_mode():
            while batch is not None or not self._waiting.empty():
                batch = self._step(batch)
        return [r.generated for r in reqs]

    # --- the thread -----------------------------------------------------------------------------

    def _loop(self) -> None:
        batch: _Batch | None = None
        with torch.inference_mode():
            while not self._stop.is_set():
                if batch is None:
                    if self._waiting.empty():
                        self._wake.wait(0.1)
                        self._wake.clear()
                        continue
                    deadline = time.perf_counter() + self.max_wait
                    while self._waiting.qsize() < self.max_batch_size and time.perf_counter() < deadline:
                        time.sleep(min(0.002, max(0.0, deadline - time.perf_counter())))
                try:
                    batch = self._step(batch)
                except Exception as e:  # noqa: BLE001 -- a failed step ends its rows with an error, never the server
                    log.exception("generation step failed")
                    rows = batch.rows if batch is not None else []
                    for r in rows:
                        r.emit("error", f"{type(e).__name__}: {e}")
                    batch = None
                    self.running = 0
            for r in (batch.rows if batch is not None else []):
                r.emit("error", "server is shutting down")
            while not self._waiting.empty():
                self._waiting.get_nowait().emit("error", "server is shutting down")

    def _admit(self, room: int) -> list[GenRequest]:
        out: list[GenRequest] = []
        while len(out) < room:
            try:
                r = self._waiting.get_nowait()
            except queue.Empty:
                break
            if r.cancelled:
                r.emit("done", "cancelled")
                continue
            out.append(r)
        return out

    def _step(self, batch: _Batch | None) -> _Batch | None:
        """One step boundary: admit new rows (prefill + merge), then one decode step; returns the batch."""
        room = self.max_batch_size - (len(batch.rows) if batch is not None else 0)
        if room > 0 and (batch is None or self.continuous):
            new = self._admit(room)
            if new:
                fresh = self._prefill(new)
                batch = fresh if batch is None else self._merge(batch, fresh)
                batch = self._retire(batch)
                self.running = len(batch.rows) if batch is not None else 0
                return batch  # the next call decodes (and admits again first, which keeps TTFT low)
        if batch is None:
            return None
        self._decode(batch)
        batch = self._retire(batch)
        self.running = len(batch.rows) if batch is not None else 0
        return batch

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> torch.Tensor:
        kw: dict[str, Any] = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        kw[self._cache_kw] = cache
        if self._logits_to_keep:
            kw["logits_to_keep"] = 1
        out = self.model(**kw)
        return out.logits[:, -1, :].to(dtype=torch.float32)

    def _prefill(self, rows: list[GenRequest]) -> _Batch:
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r.prompt_ids)
            ids[i, width - n:] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - n:] = 1
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
        cache = DynamicCache()
        logits = self._forward(ids, mask, pos, cache)
        if self.on_step:
            self.on_step("prefill", len(rows))
        batch = _Batch(rows=rows, cache=cache, mask=mask, pos=mask.sum(-1), last=ids[:, -1].clone())
        self._choose(batch, logits)
        return batch

    def _decode(self, batch: _Batch) -> None:
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(batch.mask.shape[0], 1)], dim=1)
        logits = self._forward(batch.last[:, None], batch.mask, batch.pos[:, None], batch.cache)
        batch.pos = batch.pos + 1
        if self.on_step:
            self.on_step("decode", len(batch.rows))
        self._choose(batch, logits)

    def _choose(self, batch: _Batch, logits: torch.Tensor) -> None:
        """Pick each row's next token (argmax, or temperature / top-p sampling) and emit it."""
        nxt = logits.argmax(-1)
        for i, r in enumerate(batch.rows):
            p = r.params
            if not p.greedy:
                probs = torch.softmax(logits[i] / p.temperature, dim=-1)
                if p.top_p < 1.0:
                    sp, si = probs.sort(descending=True)
                    keep = sp.cumsum(-1) - sp < p.top_p
                    probs = torch.zeros_like(probs).scatter_(0, si[keep], sp[keep])
                nxt[i] = torch.multinomial(probs.cpu(), 1, generator=r.generator)[0]
        batch.last = nxt
        for r, t in zip(batch.rows, nxt.tolist()):
            if not r.cancelled:
                r.generated.append(t)
                r.emit("token", t)

    def _merge(self, a: _Batch, b: _Batch) -> _Batch:
        """Concatenate two batches on the batch axis, left-padding the shorter one's cache and mask."""
        la, lb = a.mask.shape[1], b.mask.shape[1]
        _pad_left(a, lb - la)
        _pad_left(b, la - lb)
        for x, y in zip(_kv_layers(a.cache), _kv_layers(b.cache)):
            x.keys = torch.cat([x.keys, y.keys], dim=0)
            x.values = torch.cat([x.values, y.values], dim=0)
        return _Batch(rows=a.rows + b.rows, cache=a.cache, mask=torch.cat([a.mask, b.mask]),
                      pos=torch.cat([a.pos, b.pos]), last=torch.cat([a.last, b.last]))

    def _finish_reason(self, r: GenRequest, pos: int) -> str | None:
        if r.cancelled:
            return "cancelled"
        if r.generated and not r.params.ignore_eos and r.generated[-1] in self.eos:
            return "stop"
        if len(r.generated) >= r.params.max_tokens:
            return "length"
        if self.max_positions is not None and pos >= self.max_positions - 1:
            return "length"  # ``pos`` is the last token's position: no room for another"
        return None

    def _retire(self, batch: _Batch) -> _Batch | None:
        """Drop finished / cancelled rows and the padding columns no remaining row needs."""
        keep = []
        for i, r in enumerate(batch.rows):
            why = self._finish_reason(r, int(batch.pos[i]))
            if why is None:
                keep.append(i)
            else:
                r.emit("done", why)
        if not keep:
            return None
        if len(keep) < len(batch.rows):
            idx = torch.tensor(keep, device=batch.mask.device)
            for layer in _kv_layers(batch.cache):
                layer.keys = layer.keys.index_select(0, idx)
                layer.values = layer.values.index_select(0, idx)
            batch = _Batch(rows=[batch.rows[i] for i in keep], cache=batch.cache, mask=batch.mask.index_select(0, idx),
                           pos=batch.pos.index_select(0, idx), last=batch.last.index_select(0, idx))
        used = batch.mask.any(0).nonzero()
        first = int(used[0]) if len(used) else 0
        if first > 0:
            for layer in _kv_layers(batch.cache):
                layer.keys = layer.keys[..., first:, :]
                layer.values = layer.values[..., first:, :]
            batch.mask = batch.mask[:, first:]
        return batch
