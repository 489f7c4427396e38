"""The OpenAI request bodies llmpack serve accepts (pydantic), and the error shape it answers with."""

from __future__ import annotations

import json
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["CompletionRequest", "ChatMessage", "ChatRequest", "ErrorReply", "error_body"]


class ErrorReply(Exception):
    """An HTTP error answered as one line of OpenAI-shaped JSON.

    Example:
        >>> e = ErrorReply(404, "model 'x' does not exist", type="invalid_request_error", code="model_not_found")
        >>> error_body(e.message, e.type, e.param, e.code)["error"]["code"]
        'model_not_found'
    """

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``, as OpenAI answers errors.

    Example:
        >>> json.dumps(error_body("bad"), sort_keys=True)
        '{"error": {"code": null, "message": "bad", "param": null, "type": "invalid_request_error"}}'
    """
    return {"error": {"message": " ".join(str(message).split()), "type": type, "param": param, "code": code}}


class _Sampling(BaseModel):
    """Fields shared by both endpoints. Unknown fields are ignored (as OpenAI does); unsupported ones refused."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    stop: Union[str, list[str], None] = Field(default=None, validate_default=True)
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=0.0, le=0.0, description="only 0 is supported")
    frequency_penalty: float = Field(default=0.0, ge=0.0, le=0.0, description="only 0 is supported")
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens tokens (benchmarks)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Union[str, list[str], None]) -> list[str]:
        stops = [v] if isinstance(v, str) else list(v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings")
        return stops

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Sampling):
    """``POST /v1/completions``.

    Example:
        >>> CompletionRequest(model="m", prompt="Hi", max_tokens=4).prompts()
        ['Hi']
    """

    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = Field(default=False)
    logprobs: int | None = None
    suffix: str | None = None

    @field_validator("echo")
    @classmethod
    def _echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v

    @field_validator("logprobs", "suffix")
    @classmethod
    def _unsupported(cls, v: Any) -> Any:
        if v is not None:
            raise ValueError("is not supported")
        return v

    def prompts(self) -> list[Union[str, list[int]]]:
        """The prompts as a list: strings or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ValueError("prompt is empty")
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class ChatMessage(BaseModel):
    """One chat message; ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Union[str, list[dict[str, Any]], None] = None

    def text(self) -> str:
        """The message's text (text parts joined; other part types refused)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"content part of type {part.get('type')!r} is not supported (text only)")
            out.append(part["text"])
        return "".join(out)


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``.

    Example:
        >>> ChatRequest(model="m", messages=[{"role": "user", "content": "Hi"}]).messages[0].text()
        'Hi'
    """

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("logprobs is not supported")
        return v


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One line out of pydantic / FastAPI validation errors, and the offending parameter.

    Example:
        >>> validation_message([{"loc": ("body", "temperature"), "msg": "Input should be <= 2"}])
        ('temperature: Input should be <= 2', 'temperature')
    """
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return f"request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})", None
    param = loc[0] if loc else None
    where = ".".join(loc)
    msg = str(e.get("msg", "invalid value"))
    return (f"{where}: {msg}" if where else msg), param


def dumps(obj: Any) -> str:
    """Compact one-line JSON (what every response body and SSE event is)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
