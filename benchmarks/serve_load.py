"""Serving under load: ``llmpack serve`` (SmolLM2 int8) vs llama.cpp's OpenAI server (SmolLM2 Q8_0), same load.

Each server runs as a subprocess on a free loopback port. For each concurrency level (default 1, 4, 8) a fixed
number of requests (default 64) with fixed prompts is sent by that many concurrent clients (closed loop: each
client sends its next request when the previous one is done), streaming, greedy, exactly ``--new-tokens``
tokens each (``ignore_eos`` for llmpack, ``min_tokens`` for llama.cpp). Reported per server and level:
generated tokens/s over the wall time, request latency p50/p99, time to first token p50/p99, and for llmpack
the mean decode batch size read from its ``/metrics``. A level during which the benchmark process was paused
(SIGSTOP, or starved of CPU for more than 0.5 s; on a shared machine another job may stop every niced process)
is reported with ``paused s`` and its tokens/s over the unpaused time (the servers and the clients are stopped
together), or measured again with ``--retries N``. Latencies of requests that spanned a pause include it.

    python benchmarks/serve_load.py                     # the full run (a few minutes on 2 cores)
    python benchmarks/serve_load.py --json serve.json   # also write the results as JSON
    python benchmarks/serve_load.py --quick             # smoke run on a tiny random model (what the test runs)

llama.cpp runs when ``llama_cpp`` (``pip install 'llama-cpp-python[server]'``) imports; otherwise its row says why.
Its server is started with this process's ``PYTHONPATH``: on a CPU with AMX (Sapphire Rapids and later) use the
no-AMX build of ``benchmarks/decode_cpu.py``'s docstring (``PYTHONPATH=/tmp/llama-noamx python
benchmarks/serve_load.py``). The pip-default wheel crashes in ggml's AMX path there: a non-streaming request
kills the server (SIGSEGV), a streaming one gets ``200`` and an empty body (no SSE event at all); the client
reports such a stream as a failure ("no tokens in the stream"), never as a row. llama.cpp sends no ``usage``
in its streams: with ``min_tokens`` = ``max_tokens`` a stream that ends with ``finish_reason: "length"``
generated exactly ``max_tokens`` tokens (else the token events are counted).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "The capital of France is",
    "Write a short story about a robot who learns to paint.",
    "Explain how a hash table works.",
    "List three uses of Python in science:",
    "Once upon a time, in a small village by the sea,",
    "def quicksort(arr):",
    "The most important rule of the road is",
    "Photosynthesis is the process by which",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


class Server:
    """A server subprocess (stderr to a log file) that is ready once ``ready_path`` answers 200."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, log: Path, model: str,
                 extra: dict[str, Any]) -> None:
        self.name, self.port, self.model, self.extra = name, port, model, extra
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.log = log
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env)
        self.ready_path = ready_path

    def wait_ready(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-500:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


async def _one(client: Any, srv: Server, prompt: str, new_tokens: int) -> dict[str, float]:
    body = {"model": srv.model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            **srv.extra}
    t0 = time.perf_counter()
    ttft, events, usage, finish = None, 0, None, None
    async with client.stream("POST", srv.url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{srv.name}: HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():  # SSE: "data: {...}" lines, blank separators, "data: [DONE]"
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if ev.get("error"):
                raise RuntimeError(f"{srv.name}: error in the stream: {str(ev['error'])[:200]}")
            if ev.get("usage"):
                usage = ev["usage"]["completion_tokens"]
            for choice in ev.get("choices") or ():
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
                elif "text" in choice:  # one event per generated token (its text may be "" mid-UTF-8)
                    events += 1
                    if ttft is None:
                        ttft = time.perf_counter() - t0
    if ttft is None and not usage:
        # what llama-cpp-python's default wheel answers here: its AMX path crashes the generation (module doc)
        raise RuntimeError(f"{srv.name}: HTTP 200 but no tokens in the stream (finish_reason {finish!r})")
    # llama.cpp sends no usage: with min_tokens = max_tokens, finish_reason "length" means max_tokens tokens
    tokens = usage if usage is not None else (new_tokens if finish == "length" else events)
    return {"latency": time.perf_counter() - t0, "ttft": ttft if ttft is not None else float("nan"),
            "tokens": float(tokens)}


async def _load(srv: Server, requests: int, concurrency: int, new_tokens: int) -> dict[str, Any]:
    import httpx

    todo = list(range(requests))
    results: list[dict[str, float]] = []

    async def client_loop(client: Any) -> None:
        while todo:
            i = todo.pop(0)
            results.append(await _one(client, srv, PROMPTS[i % len(PROMPTS)], new_tokens))

    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    return {"requests": len(results), "concurrency": concurrency, "wall_s": wall, "tokens": tokens,
            "tokens_per_s": tokens / wall, "latency_p50_s": _pct(lat, 0.5), "latency_p99_s": _pct(lat, 0.99),
            "ttft_p50_s": _pct(ttft, 0.5), "ttft_p99_s": _pct(ttft, 0.99)}


class _PauseClock:
    """Counts the seconds this process was not running (a SIGSTOP, a starved CPU): a thread that wakes every
    20 ms and adds up the gaps longer than 0.5 s. A level measured across such a gap is measured again."""

    def __init__(self) -> None:
        import threading

        self.paused = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(0.02):
            now = time.monotonic()
            if now - last > 0.5:
                self.paused += now - last
            last = now

    def close(self) -> float:
        self._stop.set()
        self._t.join()
        return self.paused


def _metric(url: str, name: str) -> float:
    import httpx

    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def _llmpack_dir(a: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    import llmpack

    if a.quick:
        from llmpack.testing import byte_tokenizer, tiny_model

        d = tmp / "tiny"
        tiny_model("llama", max_position_embeddings=512).save_pretrained(d)
        byte_tokenizer().save_pretrained(d)
        return d, "tiny llama (random init, float)"
    from llmpack.testing import smollm2_dir

    if a.model_dir:
        return Path(a.model_dir), f"{Path(a.model_dir).name} (given)"
    out = tmp / "smollm2-int8"
    llmpack.quantize(smollm2_dir(), "int8", out=out, quiet=True)
    return out, "SmolLM2-135M-Instruct int8 (llmpack.quantize)"


def _gguf_q8(tmp: Path, threads: int) -> str:
    """SmolLM2 Q8_0 made with llama.cpp's own quantizer from the shipped GGUF (as benchmarks/decode_cpu.py does)."""
    import llama_cpp

    from llmpack.testing import smollm2_gguf_path

    out = str(tmp / "smollm2-Q8_0.gguf")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True  # the shipped file is Q4_1; the HF model llmpack reads is dequantized from it too
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(smollm2_gguf_path()).encode(), out.encode(), params) != 0:
        raise RuntimeError("llama_model_quantize failed")
    return out


def _servers(a: argparse.Namespace, tmp: Path) -> tuple[list[tuple[str, Any]], dict[str, str]]:
    """(name, factory) per server to run, and the reason for each one that cannot run."""
    skipped: dict[str, str] = {}
    out: list[tuple[str, Any]] = []
    if "llmpack" in a.servers:
        d, desc = _llmpack_dir(a, tmp)

        def llmpack_server() -> Server:
            port = _free_port()
            cmd = [sys.executable, "-m", "llmpack", "serve", str(d), "--port", str(port), "--quiet",
                   "--max-batch-size", str(a.max_batch_size), "--threads", str(a.threads), "--served-model-name", "m"]
            return Server("llmpack serve", cmd, port, "/ready", tmp / "llmpack.log", "m",
                          {"ignore_eos": True, "stream_options": {"include_usage": True}})

        out.append((f"llmpack serve ({desc})", llmpack_server))
    if "llama.cpp" in a.servers:
        if a.quick:
            skipped["llama.cpp"] = "not in --quick mode (needs the SmolLM2 GGUF)"
        else:
            try:
                import llama_cpp.server.app  # noqa: F401 -- its [server] extras must import
                gguf = _gguf_q8(tmp, a.threads)
            except Exception as e:  # noqa: BLE001 -- a peer that does not install is reported, never dropped
                skipped["llama.cpp"] = f"{type(e).__name__}: {e}"[:200]
            else:
                def llama_server() -> Server:
                    port = _free_port()
                    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                           "--port", str(port), "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads),
                           "--n_ctx", "2048", "--model_alias", "m", "--verbose", "False",
                           "--interrupt_requests", "False"]  # else a new request cuts the running stream off
                    return Server("llama.cpp server", cmd, port, "/v1/models", tmp / "llama.log", "m",
                                  {"min_tokens": a.new_tokens, "repeat_penalty": 1.0, "top_k": 1})

                out.append(("llama.cpp server (SmolLM2 Q8_0, llama_cpp.server)", llama_server))
    return out, skipped


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=None, help="requests per concurrency level (default 64; quick 8)")
    p.add_argument("--concurrency", default=None, help="comma-separated levels (default 1,4,8; quick 1,4)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per request (default 64; quick 8)")
    p.add_argument("--servers", default="llmpack,llama.cpp", help="which servers (default llmpack,llama.cpp)")
    p.add_argument("--threads", type=int, default=2, help="threads of each server (default 2)")
    p.add_argument("--max-batch-size", type=int, default=8, help="llmpack serve --max-batch-size (default 8)")
    p.add_argument("--quick", action="store_true", help="a tiny random model, few requests (smoke test)")
    p.add_argument("--retries", type=int, default=0,
                   help="measure a level again when the process was paused during it (default 0: report it, with "
                        "tokens/s over the unpaused time)")
    p.add_argument("--model-dir", default=None,
                   help="serve this llmpack dir instead of quantizing SmolLM2 to int8 (e.g. one made earlier)")
    p.add_argument("--json", metavar="F", default=None, help="write the results as JSON")
    a = p.parse_args(argv)
    a.requests = a.requests or (8 if a.quick else 64)
    a.new_tokens = a.new_tokens or (8 if a.quick else 64)
    levels = [int(x) for x in (a.concurrency or ("1,4" if a.quick else "1,4,8")).split(",")]
    a.servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="serve-load-") as t:
        tmp = Path(t)
        servers, skipped = _servers(a, tmp)
        for name, make in servers:
            srv = make()
            try:
                _run_levels(a, name, srv, levels, rows)
            except Exception as e:  # noqa: BLE001 -- a server that fails under the load is reported, never dropped
                skipped[name] = f"failed: {type(e).__name__}: {e}"[:200]
            finally:
                srv.stop()
    _report(a, rows, skipped)
    return 0


def _run_levels(a: argparse.Namespace, name: str, srv: Server, levels: list[int], rows: list[dict[str, Any]]) -> None:
    srv.wait_ready()
    asyncio.run(_load(srv, min(a.requests, 4), 2, 4))  # warm-up: first calls pack weights / build kernels
    for c in levels:
        before = (_metric(srv.url, 'llmpack_batch_size_sum{phase="decode"}'),
                  _metric(srv.url, 'llmpack_batch_size_count{phase="decode"}')) if "llmpack" in name else None
        for attempt in range(a.retries + 1):
            clock = _PauseClock()
            row = {"server": name, **asyncio.run(_load(srv, a.requests, c, a.new_tokens))}
            row["paused_s"], row["attempts"] = clock.close(), attempt + 1
            active = max(row["wall_s"] - row["paused_s"], 1e-9)
            row["tokens_per_s"] = row["tokens"] / active  # every process of the run is paused together
            if row["paused_s"] < 0.5 or attempt == a.retries:
                break
            print(f"  {name} c={c}: paused {row['paused_s']:.1f} s, measuring again", file=sys.stderr,
                  flush=True)
        if before is not None:
            s = _metric(srv.url, 'llmpack_batch_size_sum{phase="decode"}') - before[0]
            n = _metric(srv.url, 'llmpack_batch_size_count{phase="decode"}') - before[1]
            row["mean_decode_batch"] = s / n if n else float("nan")
            row["max_decode_batch_seen"] = _max_batch(srv.url)
        rows.append(row)
        print(f"  {name} c={c}: {row['tokens_per_s']:.1f} tok/s", file=sys.stderr, flush=True)


def _report(a: argparse.Namespace, rows: list[dict[str, Any]], skipped: dict[str, str]) -> None:
    base = {r["server"]: r["tokens_per_s"] for r in rows if r["concurrency"] == 1}
    for r in rows:
        r["x_vs_c1"] = r["tokens_per_s"] / base[r["server"]] if base.get(r["server"]) else float("nan")
    print(f"{a.requests} requests per level, {a.new_tokens} new tokens each, greedy, streaming; "
          f"{a.threads} threads per server; loopback")
    print("| server | clients | tokens/s | x vs 1 client | latency p50 s | latency p99 s | TTFT p50 s | TTFT p99 s "
          "| mean decode batch | paused s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mb = f"{r['mean_decode_batch']:.2f}" if "mean_decode_batch" in r else "-"
        print(f"| {r['server']} | {r['concurrency']} | {r['tokens_per_s']:.1f} | {r['x_vs_c1']:.2f} | "
              f"{r['latency_p50_s']:.2f} | {r['latency_p99_s']:.2f} | {r['ttft_p50_s']:.3f} | {r['ttft_p99_s']:.3f} | {mb} "
              f"| {r['paused_s']:.1f} |")
    for name, why in skipped.items():
        print(f"| {name} | - | not run: {why} | | | | | | | |")
    if a.json:
        Path(a.json).write_text(json.dumps({"requests": a.requests, "new_tokens": a.new_tokens, "threads": a.threads,
                                            "results": rows, "skipped": skipped}, indent=2) + "\n")


def _max_batch(url: str) -> int:
    """The largest decode batch-size bucket bound that has observations above the previous bound."""
    import httpx

    best, prev = 0, 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith('llmpack_batch_size_bucket{') and 'phase="decode"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            count = float(line.rsplit(" ", 1)[1])
            if le != "+Inf" and count > prev:
                best = int(float(le))
            prev = count
    return best


if __name__ == "__main__":
    sys.exit(main())
