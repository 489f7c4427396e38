"""The ASGI app of ``llmpack serve`` (FastAPI): OpenAI routes, probes, metrics, auth, errors as one JSON line."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmpack.serve.batching import QueueFullError, SamplingParams
from llmpack.serve.config import ServeConfig
from llmpack.serve.engine import Engine, Stream
from llmpack.serve.protocol import ErrorReply, ChatRequest, CompletionRequest, dumps, error_body, validation_message
from llmpack.serve.text import Detokenizer

__all__ = ["create_app", "ROUTES"]

ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/ready", "/metrics")


def _error(e: ErrorReply) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers)


class _Observe:
    """Pure ASGI middleware: request counts / latency by route and status, API key, draining."""

    def __init__(self, app: Any, engine: Engine, state: Any) -> None:
        self.app, self.engine, self.state = app, engine, state

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        route = path if path in ROUTES else "other"
        t0 = time.perf_counter()
        status = {"code": 500}

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._observe(route, status["code"], t0)

        refusal = self._refuse(scope, path)
        if refusal is not None:
            await refusal(scope, receive, send_wrapped)
            return
        try:
            await self.app(scope, receive, send_wrapped)
        except asyncio.CancelledError:
            self._observe(route, 499, t0)  # client closed the request
            raise

    def _observe(self, route: str, code: int, t0: float) -> None:
        m = self.engine.metrics
        m.requests.labels(route=route, status=str(code)).inc()
        m.latency.labels(route=route).observe(time.perf_counter() - t0)

    def _refuse(self, scope: dict, path: str) -> Response | None:
        if not path.startswith("/v1/"):
            return None
        key = self.engine.config.api_key
        if key:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            got = headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {key}".encode()):
                self.engine.metrics.rejected.labels(reason="unauthorized").inc()
                return _error(ErrorReply(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
        if self.state.draining:
            self.engine.metrics.rejected.labels(reason="draining").inc()
            return _error(ErrorReply(503, "the server is shutting down; retry on another replica", type="server_error",
                                   code="shutting_down", headers={"Retry-After": "1", "Connection": "close"}))
        if path != "/v1/models" and not self.engine.ready:
            self.engine.metrics.rejected.labels(reason="not_ready").inc()
            return _error(ErrorReply(503, f"the model is not ready ({self.engine.state}); retry shortly", type="server_error",
                                   code="not_ready", headers={"Retry-After": "2"}))
        return None


def create_app(config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The FastAPI app serving ``config.model_dir``; its lifespan starts (and stops) the :class:`Engine`.

    Example:
        >>> app = create_app(ServeConfig("model-int8"))          # doctest: +SKIP
        >>> import uvicorn; uvicorn.run(app, port=8000)           # doctest: +SKIP
    """
    eng = engine if engine is not None else Engine(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        eng.start()
        try:
            yield
        finally:
            eng.stop()

    app = FastAPI(title="llmpack serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = eng
    app.state.draining = False

    @app.exception_handler(ErrorReply)
    async def _api_error(request: Request, e: ErrorReply) -> JSONResponse:
        return _error(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(ErrorReply(e.status_code, str(e.detail), code="not_found" if e.status_code == 404 else None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        return _error(ErrorReply(500, f"internal error: {type(e).__name__}: {e}", type="server_error"))

    @app.get("/health")
    async def health() -> dict[str, str]:
        if eng.state == "failed":
            raise ErrorReply(503, f"model failed to load: {eng.error}", type="server_error")
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        ok = eng.ready and not app.state.draining
        state = "draining" if app.state.draining else eng.state
        return JSONResponse({"status": state}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(eng.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": config.model_name, "object": "model", "created": 0, "owned_by": "llmpack",
                "max_model_len": eng.max_context}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await _parse(request, CompletionRequest)
        try:
            prompts = [_ids_of(eng, p) for p in body.prompts()]
        except ValueError as e:
            raise ErrorReply(400, f"prompt: {e}", param="prompt") from None
        if body.stream and len(prompts) > 1:
            raise ErrorReply(400, "stream=true takes one prompt", param="prompt")
        return await _respond(request, eng, config, body, prompts, chat=False)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await _parse(request, ChatRequest)
        tok = eng.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ErrorReply(400, f"model {config.model_name!r} has no chat template: use /v1/completions", param="messages")
        try:
            msgs = [{"role": m.role, "content": m.text()} for m in body.messages]
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=False)
        except Exception as e:  # noqa: BLE001 -- a template that rejects the conversation is the client's problem
            raise ErrorReply(400, f"messages: the chat template refused them ({type(e).__name__}: {e})", param="messages") from None
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return await _respond(request, eng, config, body, [list(ids)], chat=True)

    app.add_middleware(_Observe, engine=eng, state=app.state)
    return app


async def _parse(request: Request, cls: type) -> Any:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ErrorReply(400, f"request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ErrorReply(400, "request body must be a JSON object")
    try:
        body = cls.model_validate(data)
    except ValidationError as e:
        msg, param = validation_message(e.errors())
        raise ErrorReply(400, msg, param=param) from None
    eng: Engine = request.app.state.engine
    if body.model != eng.config.model_name:
        raise ErrorReply(404, f"model {body.model!r} does not exist: this server serves {eng.config.model_name!r}",
                       param="model", code="model_not_found")
    return body


def _ids_of(eng: Engine, prompt: "str | list[int]") -> list[int]:
    if isinstance(prompt, str):
        ids = list(eng.tokenizer(prompt).input_ids)
    else:
        vocab = eng.model.config.vocab_size
        if any((not isinstance(t, int)) or t < 0 or t >= vocab for t in prompt):
            raise ValueError(f"token ids must be integers in 0..{vocab - 1}")
        ids = list(prompt)
    if not ids:
        raise ValueError("prompt has no tokens")
    return ids


def _params(eng: Engine, config: ServeConfig, body: Any, n_prompt: int, chat: bool) -> SamplingParams:
    ctx = eng.max_context
    if ctx is not None and n_prompt >= ctx:
        raise ErrorReply(400, f"this model's maximum context length is {ctx} tokens; the prompt has {n_prompt}",
                       param="prompt" if not chat else "messages", code="context_length_exceeded")
    room = (ctx - n_prompt) if ctx is not None else None
    if body.max_tokens is not None:
        if room is not None and body.max_tokens > room:
            raise ErrorReply(400, f"this model's maximum context length is {ctx} tokens: {n_prompt} prompt tokens + "
                           f"max_tokens {body.max_tokens} exceed it", param="max_tokens", code="context_length_exceeded")
        max_tokens = body.max_tokens
    else:
        max_tokens = config.default_max_tokens if chat else 16  # OpenAI's default for completions
        max_tokens = min(max_tokens, room) if room is not None else max_tokens
    return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                          ignore_eos=body.ignore_eos)


async def _respond(request: Request, eng: Engine, config: ServeConfig, body: Any, prompts: list[list[int]],
                   chat: bool) -> Response:
    params = [_params(eng, config, body, len(p), chat) for p in prompts]
    t0 = time.perf_counter()
    streams: list[Stream] = []
    try:
        for p, sp in zip(prompts, params):
            streams.append(eng.submit(p, sp))
    except QueueFullError as e:
        for s in streams:
            s.cancel()
        eng.metrics.rejected.labels(reason="queue_full").inc()
        raise ErrorReply(429, str(e), type="server_error", code="queue_full", headers={"Retry-After": "1"}) from None
    eng.metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    meta = {"id": rid, "created": int(time.time()), "model": config.model_name}
    if body.stream:
        gen = _sse(eng, streams[0], len(prompts[0]), body, meta, chat, t0)
        return StreamingResponse(gen, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    watcher = asyncio.ensure_future(_watch_disconnect(request, streams))
    try:
        results = await asyncio.gather(*(_collect(eng, s, body.stop, t0) for s in streams))
    finally:
        watcher.cancel()
    choices, completion = [], 0
    for i, (text, reason, n) in enumerate(results):
        completion += n
        if chat:
            choices.append({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                            "logprobs": None})
        else:
            choices.append({"index": i, "text": text, "finish_reason": reason, "logprobs": None})
    n_prompt = sum(len(p) for p in prompts)
    usage = {"prompt_tokens": n_prompt, "completion_tokens": completion, "total_tokens": n_prompt + completion}
    obj = {**meta, "object": "chat.completion" if chat else "text_completion", "choices": choices, "usage": usage}
    return Response(dumps(obj), media_type="application/json")


async def _watch_disconnect(request: Request, streams: list[Stream]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for s in streams:
                s.cancel()
            return


async def _tokens(eng: Engine, stream: Stream, stops: list[str], t0: float) -> AsyncIterator[tuple[str, str | None, int]]:
    """(text delta, finish reason or None, tokens so far) as the tokens of ``stream`` arrive."""
    detok = Detokenizer(eng.tokenizer, stops)
    n = 0
    try:
        while True:
            kind, value = await stream.next()
            if kind == "token":
                n += 1
                eng.metrics.generation_tokens.inc()
                if n == 1:
                    eng.metrics.ttft.observe(time.perf_counter() - t0)
                delta, stopped = detok.add(value)
                if stopped:
                    stream.cancel()
                    yield delta, "stop", n
                    return
                if delta:
                    yield delta, None, n
            elif kind == "done":
                yield detok.flush(), ("stop" if value == "cancelled" else value), n
                return
            else:
                raise ErrorReply(500, f"generation failed: {value}", type="server_error")
    finally:
        stream.cancel()  # the client went away, or an error: free the batch slot


async def _collect(eng: Engine, stream: Stream, stops: list[str], t0: float) -> tuple[str, str, int]:
    parts, reason, n = [], "stop", 0
    async for delta, why, n in _tokens(eng, stream, stops, t0):
        parts.append(delta)
        if why is not None:
            reason = why
    return "".join(parts), reason, n


async def _sse(eng: Engine, stream: Stream, n_prompt: int, body: Any, meta: dict, chat: bool,
               t0: float) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, reason: str | None, role: bool = False) -> str:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice: dict[str, Any] = {"index": 0, "delta": d, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
        return f"data: {dumps({**meta, 'object': obj, 'choices': [choice]})}\n\n"

    if chat:
        yield chunk(None, None, role=True)
    n = 0
    try:
        async for delta, why, n in _tokens(eng, stream, body.stop, t0):
            if delta:
                yield chunk(delta, None)
            if why is not None:
                yield chunk(None, why)
    except ErrorReply as e:
        yield f"data: {dumps(error_body(e.message, e.type))}\n\n"
    if body.include_usage:
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
        yield f"data: {dumps({**meta, 'object': obj, 'choices': [], 'usage': usage})}\n\n"
    yield "data: [DONE]\n\n"

