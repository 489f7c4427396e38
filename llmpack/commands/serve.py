"""``llmpack serve DIR``: an OpenAI-compatible HTTP server (dynamic batching, probes, Prometheus metrics)."""

from __future__ import annotations

import argparse
import os
from typing import Any

__all__ = ["register", "run"]

DESCRIPTION = """\
Serve a model directory (llmpack output, int8 included, or any HF safetensors causal LM) over an
OpenAI-compatible HTTP API: /v1/completions, /v1/chat/completions (the tokenizer's chat template),
streaming (SSE), /v1/models, /health (liveness), /ready (loaded and warmed), /metrics (Prometheus).
Concurrent requests are batched: new requests join the running batch at the next decode step.
SIGTERM stops accepting connections, drains in-flight requests (up to --drain-timeout) and exits 0.
Binds 127.0.0.1 unless --host says otherwise. See docs/serve.md.

Example:
  llmpack serve ./smollm2-int8 --port 8000 --max-batch-size 8
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
      -d '{"model": "smollm2-int8", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}'
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand."""
    from llmpack._env import ENV_API_KEY

    p = subparsers.add_parser("serve", help="OpenAI-compatible server with dynamic batching, probes and metrics",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="DIR", help="the model directory (what llmpack.load loads)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (default cpu)")
    p.add_argument("--served-model-name", metavar="NAME", default=None,
                   help="the id clients pass as 'model' (default: the directory's name)")
    p.add_argument("--max-batch-size", type=int, default=8, metavar="N", help="most sequences per decode step (default 8)")
    p.add_argument("--max-wait-ms", type=float, default=10.0, metavar="MS",
                   help="an idle server waits this long for more requests before the first prefill (default 10)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="most requests waiting for a slot once the batch is full; more get 429 with Retry-After "
                        "(default 64)")
    p.add_argument("--drain-timeout", type=float, default=30.0, metavar="S",
                   help="seconds SIGTERM waits for in-flight requests (default 30)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${ENV_API_KEY} if set, else none)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch threads (default: torch's choice)")
    p.add_argument("--static-batching", action="store_true",
                   help="new requests wait for the running batch to finish instead of joining it at a step boundary")
    p.add_argument("--default-max-tokens", type=int, default=512, metavar="N",
                   help="max_tokens of a chat request that sets none (default 512, capped by the context)")
    p.add_argument("--no-warmup", action="store_true", help="report ready without a warm-up generation")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``llmpack serve``."""
    import importlib.util

    from llmpack._env import api_key
    from llmpack.errors import BadInputError
    from llmpack.serve.config import ServeConfig

    # torch's OpenMP workers spin while they wait for work (libgomp: 300,000 spins by default); in a server they
    # then take the CPU the HTTP event loop needs between steps (measured: 8 clients no faster than one, 2
    # threads on 2 cores). Fully passive workers sleep between every two ops of a step instead: a decode step
    # took 1.85x as long (SmolLM2 int8, batch 1: 42.5 vs 23 ms). A short spin (GOMP_SPINCOUNT=20000, ~1 ms
    # here) keeps the steps' speed (23 ms) and leaves the event loop its CPU: serve_load 8 clients 165.8 vs
    # 103.4 tokens/s fully passive (docs/serve.md). Unless the user chose; set before torch is imported.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ.setdefault("GOMP_SPINCOUNT", "20000")
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise BadInputError(f"llmpack serve needs {', '.join(missing)}: pip install 'llmpack[serve]'")
    from llmpack.serve.server import serve

    config = ServeConfig(
        model_dir=args.model, host=args.host, port=args.port, device=args.device,
        served_model_name=args.served_model_name, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue, drain_timeout=args.drain_timeout,
        api_key=args.api_key or api_key(), threads=args.threads,
        continuous=not args.static_batching, default_max_tokens=args.default_max_tokens, warmup=not args.no_warmup,
    )
    return serve(config, quiet=args.quiet, log_format=args.format)
