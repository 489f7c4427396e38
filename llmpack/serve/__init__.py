"""``llmpack serve``: an OpenAI-compatible server on llmpack's runtime (see ``docs/serve.md``).

Modules: ``config`` (:class:`ServeConfig`), ``batching`` (the scheduler thread), ``attention`` (row-exact
attention under padding), ``engine`` (model + tokenizer + scheduler for asyncio), ``app`` (FastAPI routes),
``metrics`` (Prometheus), ``protocol`` (OpenAI request bodies and errors), ``text`` (streaming detokenizer),
``server`` (uvicorn, SIGTERM drain).

Example:
    >>> from llmpack.serve import ServeConfig
    >>> ServeConfig("model-int8").host
    '127.0.0.1'
"""

from __future__ import annotations

from llmpack.serve.config import ServeConfig

__all__ = ["ServeConfig", "serve", "create_app"]


def serve(config: ServeConfig, **kwargs: object) -> int:
    """Run the server until SIGTERM (see :func:`llmpack.serve.server.serve`).

    Example:
        >>> serve(ServeConfig("model-int8"))  # doctest: +SKIP
        0
    """
    from llmpack.serve.server import serve as _serve

    return _serve(config, **kwargs)  # type: ignore[arg-type]


def create_app(config: ServeConfig, engine: object = None) -> object:
    """The ASGI app (see :func:`llmpack.serve.app.create_app`).

    Example:
        >>> app = create_app(ServeConfig("model-int8"))  # doctest: +SKIP
    """
    from llmpack.serve.app import create_app as _create_app

    return _create_app(config, engine)  # type: ignore[arg-type]
