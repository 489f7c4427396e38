"""``Engine``: the model, its tokenizer and the batching scheduler, behind an asyncio-friendly interface."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from llmpack.serve.batching import GenRequest, SamplingParams, Scheduler
from llmpack.serve.config import ServeConfig
from llmpack.serve.metrics import ServeMetrics

__all__ = ["Engine", "Stream"]

log = logging.getLogger("llmpack.serve")


class Stream:
    """The events of one submitted request, read with ``await stream.next()``; ``cancel()`` drops it.

    Example:
        >>> s = Stream.__new__(Stream)  # made by Engine.submit
    """

    def __init__(self, req: GenRequest, q: "asyncio.Queue[tuple[str, Any]]") -> None:
        self.req = req
        self._q = q
        self.finished = False
        self.first_token_at: float | None = None

    async def next(self) -> tuple[str, Any]:
        """The next event: ``("token", id)``, ``("done", finish_reason)`` or ``("error", message)``."""
        kind, value = await self._q.get()
        if kind in ("done", "error"):
            self.finished = True
        elif self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        return kind, value

    def cancel(self) -> None:
        """Stop generating for this request at the next step boundary (no-op once finished)."""
        if not self.finished:
            self.req.cancel()


class Engine:
    """Loads a model directory and serves generation requests through a :class:`Scheduler` thread.

    ``start()`` loads and warms the model in a background thread (``/health`` answers meanwhile,
    ``/ready`` turns 200 when it is done); ``load()`` does the same on the calling thread.

    Example:
        >>> eng = Engine(ServeConfig("model-int8"))   # doctest: +SKIP
        >>> eng.load(); eng.state                     # doctest: +SKIP
        'ready'
    """

    def __init__(self, config: ServeConfig, metrics: ServeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else ServeMetrics(config.max_batch_size)
        self.state = "starting"  # starting | loading | ready | failed | stopped
        self.error: str | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.scheduler: Scheduler | None = None
        self.max_context: int | None = None
        self.info: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self.on_failure: Callable[[], None] | None = None  # called (from the load thread) when loading fails
        self.metrics.queue_depth.set_function(lambda: self.scheduler.waiting if self.scheduler else 0)
        self.metrics.running.set_function(lambda: self.scheduler.running if self.scheduler else 0)

    @property
    def ready(self) -> bool:
        """Model loaded and warmed, scheduler running."""
        return self.state == "ready"

    def start(self) -> None:
        """Load and warm the model in a background thread, then start the scheduler."""
        if self._thread is None and self.state == "starting":
            self._thread = threading.Thread(target=self._load_safely, name="llmpack-load", daemon=True)
            self._thread.start()

    def _load_safely(self) -> None:
        try:
            self.load()
        except Exception as e:  # noqa: BLE001 -- reported by /ready and the log; the process decides to exit
            self.state, self.error = "failed", f"{type(e).__name__}: {e}"
            log.error("llmpack serve: loading %s failed: %s", self.config.model_dir, self.error)
            if self.on_failure is not None:
                self.on_failure()

    def load(self) -> None:
        """Load the model and tokenizer, warm up, start the scheduler (blocking)."""
        import torch
        from transformers import AutoTokenizer, GenerationConfig

        from llmpack._version import __version__
        from llmpack.runtime.load import load, read_config

        cfg = self.config
        self.state = "loading"
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        d = Path(cfg.model_dir)
        config = read_config(d)
        model = load(d, device=cfg.device)
        try:
            model.generation_config = GenerationConfig.from_pretrained(d)
        except OSError:
            pass  # no generation_config.json: keep the one built from config.json
        tok = AutoTokenizer.from_pretrained(d)
        sched = Scheduler(model, max_batch_size=cfg.max_batch_size, max_wait_ms=cfg.max_wait_ms, max_queue=cfg.max_queue,
                          continuous=cfg.continuous, on_step=self._on_step)
        self.model, self.tokenizer, self.scheduler = model, tok, sched
        self.max_context = sched.max_positions
        q = config.get("quantization_config") or {}
        self.info = {
            "name": cfg.model_name, "dir": str(d.resolve()), "device": cfg.device,
            "architecture": (config.get("architectures") or ["?"])[0],
            "quantization": str(q.get("format") or q.get("quant_method") or config.get("dtype") or config.get("torch_dtype") or "float"),
            "max_context": str(self.max_context), "max_batch_size": str(cfg.max_batch_size),
            "batching": "continuous" if cfg.continuous else "static", "llmpack_version": __version__,
            "torch_threads": str(torch.get_num_threads()),
        }
        self.metrics.set_model_info(self.info)
        if cfg.warmup:
            ids = tok("Hello").input_ids or [0]
            sched.generate([ids, ids[:1]], SamplingParams(max_tokens=2, ignore_eos=True))
        sched.start()
        self.state = "ready"
        self.metrics.ready.set(1)

    def _on_step(self, phase: str, rows: int) -> None:
        self.metrics.batch_size.labels(phase=phase).observe(rows)

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams) -> Stream:
        """Queue a request from inside the event loop; raises ``QueueFullError`` when the queue is full."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, value: Any) -> None:  # called on the scheduler thread
            if kind == "done" and value == "cancelled":
                self.metrics.cancelled.inc()
            try:
                loop.call_soon_threadsafe(q.put_nowait, (kind, value))
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        if self.scheduler is None:
            raise RuntimeError("Engine.submit() was called before the model was loaded")
        req = GenRequest(prompt_ids, params, emit)
        self.scheduler.submit(req)
        return Stream(req, q)

    def stop(self) -> None:
        """Stop the scheduler thread (queued and running requests end with an error event)."""
        if self.scheduler is not None:
            self.scheduler.stop()
        self.state = "stopped"
        self.metrics.ready.set(0)
