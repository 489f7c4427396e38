"""A real ``llmpack serve`` subprocess on a free loopback port: liveness while busy, batching, capacity (429),
client disconnects cancel, SIGTERM drains and exits 0, bounded by ``--drain-timeout``; CLI errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

LONG = {"model": "tiny-chat", "prompt": "go", "max_tokens": 2000, "temperature": 0, "ignore_eos": True}


def _wait(pred: Any, timeout: float = 20.0, s: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        state = "" if s is None else {k: s.metric(k) for k in ("llmpack_running_requests", "llmpack_queue_depth",
                                                                "llmpack_requests_cancelled_total", "llmpack_generation_tokens_total")}
        assert time.monotonic() < deadline, f"condition not met in time: {state}"
        time.sleep(0.05)


def _post(url: str, body: dict, out: list, timeout: float = 120.0) -> None:
    try:
        r = httpx.post(url + "/v1/completions", json=body, timeout=timeout)
        out.append((r.status_code, r.json() if r.status_code == 200 else r.text))
    except httpx.HTTPError as e:
        out.append((None, repr(e)))


def test_busy_server_health_batching_capacity_and_disconnect(chat_dir: Path, server_factory: Any) -> None:
    s = server_factory(chat_dir, "--max-batch-size", "2", "--max-queue", "1", "--max-wait-ms", "50")
    s.wait_ready()
    # 2 concurrent requests are decoded together: the batch-size histogram sees 2 rows
    results: list = []
    threads = [threading.Thread(target=_post, args=(s.url, {**LONG, "max_tokens": 40}, results)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r[0] for r in results] == [200, 200]
    assert s.metric('llmpack_batch_size_count{phase="decode"}') > s.metric('llmpack_batch_size_bucket{le="1.0",phase="decode"}')

    # two long streams fill the batch (max 2), one more waits (queue 1), the next is refused with 429
    clients = [httpx.Client(base_url=s.url, timeout=60) for _ in range(3)]
    streams = []
    for c in clients:
        cm = c.stream("POST", "/v1/completions", json={**LONG, "stream": True})
        streams.append((cm, cm.__enter__()))
    _wait(lambda: s.metric("llmpack_running_requests") == 2 and s.metric("llmpack_queue_depth") == 1, s=s)
    over = httpx.post(s.url + "/v1/completions", json=LONG, timeout=10)
    assert over.status_code == 429 and over.headers["Retry-After"] == "1"
    assert over.json()["error"]["code"] == "queue_full"

    # /health answers fast while the model is busy
    times = []
    with httpx.Client(base_url=s.url, timeout=5) as probe:
        for _ in range(20):
            t = time.perf_counter()
            assert probe.get("/health").status_code == 200
            times.append(time.perf_counter() - t)
    assert max(times) < 0.1, times

    # the first stream sends tokens; then every client disconnects: their generations are cancelled
    it = streams[0][1].iter_lines()
    assert next(line for line in it if line.startswith("data: "))
    generated = s.metric("llmpack_generation_tokens_total")
    for cm, _ in streams:
        cm.__exit__(None, None, None)
    for c in clients:
        c.close()
    _wait(lambda: s.metric("llmpack_running_requests") == 0 and s.metric("llmpack_queue_depth") == 0, timeout=10, s=s)
    _wait(lambda: s.metric("llmpack_requests_cancelled_total") >= 3, timeout=10, s=s)
    assert s.metric("llmpack_generation_tokens_total") < generated + 2 * 2000  # nowhere near finishing
    ok = httpx.post(s.url + "/v1/completions", json={**LONG, "max_tokens": 3}, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3  # unharmed


def test_sigterm_drains_in_flight_requests_and_exits_0(chat_dir: Path, server_factory: Any) -> None:
    s = server_factory(chat_dir, "--drain-timeout", "60")
    s.wait_ready()
    results: list = []
    t = threading.Thread(target=_post, args=(s.url, {**LONG, "max_tokens": 300}, results))
    t.start()
    _wait(lambda: s.metric("llmpack_running_requests") == 1)
    s.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(httpx.HTTPError):  # no longer accepting connections
        httpx.get(s.url + "/health", timeout=2)
    t.join(60)
    assert results and results[0][0] == 200, results
    assert results[0][1]["usage"]["completion_tokens"] == 300  # finished, not cut
    assert s.proc.wait(30) == 0
    assert "stopped" in s.output()


def test_drain_is_bounded_by_drain_timeout(chat_dir: Path, server_factory: Any) -> None:
    s = server_factory(chat_dir, "--drain-timeout", "0.5")
    s.wait_ready()
    results: list = []
    t = threading.Thread(target=_post, args=(s.url, {**LONG, "max_tokens": 2000}, results))
    t.start()
    _wait(lambda: s.metric("llmpack_running_requests") == 1)
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0
    waited = time.monotonic() - t0
    t.join(30)
    assert results and results[0][0] != 200, results  # cut at the drain timeout, not finished
    assert waited < 10, waited


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmpack", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_one_line_exit_2(chat_dir: Path) -> None:
    p = _cli(str(chat_dir), "--device", "cuda")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "no CUDA device" in p.stderr


def test_bad_dir_and_bad_flags_exit_2(tmp_path: Path) -> None:
    p = _cli(str(tmp_path / "missing"))
    assert p.returncode == 2 and p.stderr.startswith("llmpack: error:") and p.stderr.strip().count("\n") == 0
    p = _cli(str(tmp_path), "--max-batch-size", "0")
    assert p.returncode == 2 and "max_batch_size" in p.stderr


def test_binds_loopback_by_default() -> None:
    from llmpack.cli import build_parser

    args = build_parser().parse_args(["serve", "m"])
    assert args.host == "127.0.0.1"
    assert json.dumps(args.host)
