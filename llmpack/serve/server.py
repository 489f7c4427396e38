"""Run the app under uvicorn: bind loopback by default, drain in-flight requests on SIGTERM, exit 0."""

from __future__ import annotations

import logging
import sys
from typing import Any

from llmpack.errors import LlmpackError
from llmpack.serve.config import ServeConfig

__all__ = ["serve", "ServeFailedError"]


class ServeFailedError(LlmpackError):
    """The server could not start: the model failed to load, or the address is in use (exit 2)."""


def _server_class() -> type:
    import uvicorn

    class _Server(uvicorn.Server):
        """uvicorn's server, which also tells the app it is draining as soon as a signal arrives."""

        app_state: Any = None

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.app_state is not None:
                self.app_state.draining = True  # new /v1 requests on open connections get 503; /ready turns 503
            super().handle_exit(sig, frame)
            # uvicorn re-raises captured signals after its graceful shutdown (the process then dies of SIGTERM);
            # a drained server is a clean exit: 0.
            self._captured_signals.clear()

    return _Server


def serve(config: ServeConfig, *, quiet: bool = False, log_format: str = "human") -> int:
    """Serve ``config.model_dir`` until SIGTERM / SIGINT; returns 0 after a clean drain.

    SIGTERM stops accepting connections, lets in-flight requests finish for up to ``config.drain_timeout``
    seconds (then cancels them), stops the scheduler and returns.

    Raises:
        BadInputError: ``device="cuda"`` without CUDA, or ``model_dir`` is not a directory.
        ServeFailedError: the model failed to load, or the port could not be bound.

    Example:
        >>> serve(ServeConfig("model-int8", port=8000))  # doctest: +SKIP
        0
    """
    import json
    from pathlib import Path

    import uvicorn

    from llmpack.errors import SourceNotFoundError
    from llmpack.serve.app import create_app
    from llmpack.serve.engine import Engine

    config.check_device()
    if not Path(config.model_dir).is_dir():
        raise SourceNotFoundError(f"{config.model_dir} is not a directory: pass a model directory (llmpack output or HF)")
    engine = Engine(config)
    app = create_app(config, engine)
    ucfg = uvicorn.Config(app, host=config.host, port=config.port, lifespan="on", ws="none",
                          log_level="warning" if quiet else "info", access_log=not quiet,
                          timeout_graceful_shutdown=config.drain_timeout, timeout_keep_alive=5)
    # The scheduler thread holds the GIL between torch ops: hand it over every 1 ms (default 5 ms) so that
    # /health and streaming stay responsive while the model is busy.
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
    server = _server_class()(ucfg)
    server.app_state = app.state
    engine.on_failure = lambda: setattr(server, "should_exit", True)
    url = f"http://{config.host}:{config.port}"
    if log_format == "json":
        print(json.dumps({"event": "starting", "url": url, "config": config.to_dict()}), flush=True)
    elif not quiet:
        print(f"llmpack serve: {config.model_name} on {url} (loading; /ready turns 200 when warmed)", file=sys.stderr,
              flush=True)
    logging.getLogger("llmpack.serve").setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        server.run()
    except SystemExit:  # uvicorn exits 1 when it cannot bind
        if server.started:
            raise
    if engine.state == "failed":
        raise ServeFailedError(f"model {config.model_dir} failed to load: {engine.error}")
    if not server.started:
        raise ServeFailedError(f"could not listen on {config.host}:{config.port} (in use, or not an address here); "
                               "pass another --port / --host")
    if log_format == "json":
        print(json.dumps({"event": "stopped", "url": url}), flush=True)
    elif not quiet:
        print("llmpack serve: stopped (in-flight requests drained)", file=sys.stderr, flush=True)
    return 0
