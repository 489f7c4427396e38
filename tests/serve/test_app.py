"""The ASGI app in-process (Starlette's TestClient): OpenAI routes, streaming, probes, metrics, errors, auth."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
from starlette.testclient import TestClient

import llmpack
from llmpack.serve.app import create_app
from llmpack.serve.config import ServeConfig


def _client(model_dir: Path, **kw: object) -> Iterator[TestClient]:
    app = create_app(ServeConfig(str(model_dir), threads=1, **kw))  # type: ignore[arg-type]
    with TestClient(app) as c:
        deadline = time.monotonic() + 60
        while c.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "not ready"
            time.sleep(0.05)
        yield c


@pytest.fixture(scope="module")
def client(chat_dir: Path) -> Iterator[TestClient]:
    yield from _client(chat_dir, max_batch_size=4)


def _sse(text: str) -> list[dict]:
    events = [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_completion_equals_generate(client: TestClient, chat_dir: Path) -> None:
    prompt = "The capital of France is"
    r = client.post("/v1/completions", json={"model": "tiny-chat", "prompt": prompt, "max_tokens": 12,
                                             "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == "tiny-chat"
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 12, "total_tokens": len(prompt) + 12}
    model = llmpack.load(chat_dir)
    ids = list(prompt.encode())
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), do_sample=False,
                         max_new_tokens=12, min_new_tokens=12)
    from llmpack.testing import byte_tokenizer

    assert body["choices"][0]["text"] == byte_tokenizer().decode(out[0, len(ids):].tolist())
    assert body["choices"][0]["finish_reason"] == "length"


def test_token_id_prompts_and_several_prompts(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "tiny-chat", "prompt": [[72, 105], [72, 105]], "max_tokens": 4,
                                             "temperature": 0})
    assert r.status_code == 200, r.text
    a, b = r.json()["choices"]
    assert (a["index"], b["index"]) == (0, 1) and a["text"] == b["text"]
    one = client.post("/v1/completions", json={"model": "tiny-chat", "prompt": "Hi", "max_tokens": 4, "temperature": 0})
    assert one.json()["choices"][0]["text"] == a["text"]


def test_chat_uses_the_template_and_streams(client: TestClient) -> None:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    req = {"model": "tiny-chat", "messages": msgs, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
    r = client.post("/v1/chat/completions", json=req)
    assert r.status_code == 200, r.text
    full = r.json()
    assert full["object"] == "chat.completion" and full["choices"][0]["message"]["role"] == "assistant"
    prompt = "<system>Be brief.\n<user>Hi\n<assistant>"
    assert full["usage"]["prompt_tokens"] == len(prompt)
    with client.stream("POST", "/v1/chat/completions",
                       json={**req, "stream": True, "stream_options": {"include_usage": True}}) as s:
        assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
        chunks = _sse(s.read().decode())
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == full["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 8 and all(c["object"] == "chat.completion.chunk" for c in chunks)


def test_completion_stream_and_stop_string(client: TestClient) -> None:
    req = {"model": "tiny-chat", "prompt": "abc", "max_tokens": 20, "temperature": 0, "ignore_eos": True}
    full = client.post("/v1/completions", json=req).json()["choices"][0]["text"]
    with client.stream("POST", "/v1/completions", json={**req, "stream": True}) as s:
        chunks = _sse(s.read().decode())
    assert "".join(c["choices"][0]["text"] for c in chunks) == full
    stop = full[3:5]
    cut = client.post("/v1/completions", json={**req, "stop": [stop]}).json()["choices"][0]
    assert cut["text"] == full[:full.index(stop)] and cut["finish_reason"] == "stop"


def test_probes_models_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == "tiny-chat" and models["data"][0]["max_model_len"] == 2048
    client.post("/v1/completions", json={"model": "tiny-chat", "prompt": "x", "max_tokens": 2})
    text = client.get("/metrics").text
    for name in ("llmpack_requests_total{route=\"/v1/completions\",status=\"200\"}", "llmpack_request_duration_seconds_bucket",
                 "llmpack_time_to_first_token_seconds_bucket", "llmpack_prompt_tokens_total", "llmpack_generation_tokens_total",
                 "llmpack_batch_size_bucket{le=\"1.0\",phase=\"decode\"}", "llmpack_queue_depth", "llmpack_running_requests",
                 "llmpack_model_info{", "llmpack_ready 1.0"):
        assert name in text, name
    assert 'quantization="' in text and 'name="tiny-chat"' in text


@pytest.mark.parametrize("body, status, fragment", [
    ("{not json", 400, "not valid JSON"),
    ("[1, 2]", 400, "JSON object"),
    (json.dumps({"model": "gpt-4", "prompt": "a"}), 404, "does not exist"),
    (json.dumps({"model": "tiny-chat"}), 400, "prompt"),
    (json.dumps({"model": "tiny-chat", "prompt": "a", "temperature": 3}), 400, "temperature"),
    (json.dumps({"model": "tiny-chat", "prompt": "a", "max_tokens": 0}), 400, "max_tokens"),
    (json.dumps({"model": "tiny-chat", "prompt": "a", "n": 2}), 400, "n:"),
    (json.dumps({"model": "tiny-chat", "prompt": "a", "logprobs": 2}), 400, "logprobs"),
    (json.dumps({"model": "tiny-chat", "prompt": [1, 999]}), 400, "token ids"),
    (json.dumps({"model": "tiny-chat", "prompt": "a" * 2048}), 400, "maximum context length"),
    (json.dumps({"model": "tiny-chat", "prompt": "a" * 2000, "max_tokens": 100}), 400, "max_tokens 100"),
])
def test_bad_requests_get_one_line_json_errors(client: TestClient, body: str, status: int, fragment: str) -> None:
    r = client.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert "\n" not in r.text.strip()
    err = r.json()["error"]
    assert fragment in err["message"] and set(err) == {"message", "type", "param", "code"}
    ok = client.post("/v1/completions", json={"model": "tiny-chat", "prompt": "ok", "max_tokens": 2})
    assert ok.status_code == 200  # unharmed


def test_bad_chat_requests(client: TestClient, tiny_dirs: dict[str, Path]) -> None:
    r = client.post("/v1/chat/completions", json={"model": "tiny-chat", "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = client.post("/v1/chat/completions", json={"model": "tiny-chat", "messages": [{"role": "robot", "content": "x"}]})
    assert r.status_code == 400
    r = client.post("/v1/chat/completions",
                    json={"model": "tiny-chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
    assert r.status_code == 400 and "text only" in r.json()["error"]["message"]
    assert client.get("/v1/nothing").status_code == 404


def test_no_chat_template_is_a_400(tok_dirs: dict[str, Path]) -> None:
    for c in _client(tok_dirs["llama"]):
        r = c.post("/v1/chat/completions", json={"model": "llama", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 400 and "no chat template" in r.json()["error"]["message"]


def test_api_key(chat_dir: Path) -> None:
    for c in _client(chat_dir, api_key="s3cret"):
        req = {"model": "tiny-chat", "prompt": "a", "max_tokens": 1}
        r = c.post("/v1/completions", json=req)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.post("/v1/completions", json=req, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        assert c.post("/v1/completions", json=req, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200  # probes stay open
