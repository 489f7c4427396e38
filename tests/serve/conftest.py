"""Fixtures of the serve tests: a tiny random-init Llama with a byte tokenizer and a chat template (float and
int8), a long context so generations can be made to last, and a real ``llmpack serve`` subprocess on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def _save(model: object, d: Path) -> Path:
    from llmpack.testing import byte_tokenizer

    model.save_pretrained(d)  # type: ignore[attr-defined]
    tok = byte_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Llama (vocab 256 = bytes), context 2048, chat template. Read-only!"""
    from llmpack.testing import tiny_model

    return _save(tiny_model("llama", max_position_embeddings=2048), tmp_path_factory.mktemp("serve") / "tiny-chat")


@pytest.fixture(scope="session")
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny Llama with a 64-token context (prompts over the context). Read-only!"""
    from llmpack.testing import tiny_model

    return _save(tiny_model("llama", max_position_embeddings=64), tmp_path_factory.mktemp("serve") / "tiny-short")


@pytest.fixture(scope="session")
def int8_dir(chat_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``chat_dir`` quantized to W8A8 int8 by ``llmpack.quantize`` (no calibration). Read-only!"""
    import llmpack

    out = tmp_path_factory.mktemp("serve") / "tiny-int8"
    llmpack.quantize(chat_dir, "int8", out=out, calibrate=False, quiet=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProc:
    """A ``python -m llmpack serve`` subprocess on a free loopback port."""

    def __init__(self, model_dir: Path, *args: str, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = log_dir / f"serve-{self.port}.log"  # a file, never a pipe nobody reads (it would fill and block)
        self.url = f"http://127.0.0.1:{self.port}"
        e = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
             "LLMPACK_PROGRESS": "0", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmpack", "serve", str(model_dir), "--port", str(self.port), "--threads", "1", *args],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"), text=True, env=e)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}: {self.output()[-2000:]}")
            try:
                if httpx.get(self.url + "/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("server did not become ready")

    def output(self) -> str:
        """What the server wrote on stderr so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def metric(self, name: str) -> float:
        """Sum of a metric's samples whose line starts with ``name`` (labels included in ``name`` if given)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[type[ServerProc]]:
    """Start servers with ``server_factory(dir, *args)``; every one is stopped at the end of the test."""
    started: list[ServerProc] = []

    def make(model_dir: Path, *args: str, env: dict[str, str] | None = None) -> ServerProc:
        s = ServerProc(model_dir, *args, log_dir=tmp_path, env=env)
        started.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in started:
        s.stop()
