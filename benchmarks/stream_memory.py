"""Streaming-memory benchmark: peak RSS and throughput of ``llmpack.quantize`` vs model size.

Synthesizes FP32 checkpoints of 2 GB and 6 GB made of 128 MiB tensors (in a temp dir under /tmp),
shaped as the MLP layers of a Llama with hidden size 4096 (``gate_proj``/``up_proj`` ``[8192, 4096]``,
``down_proj`` ``[4096, 8192]``; ``config.json`` included, so int8 finds its Linear layers), quantizes
each with ``max_shard_size=512MB`` in a child process, and reports the child's peak RSS
(``ru_maxrss``) and its throughput relative to copying the same bytes with ``cp`` (+ ``sync``, since
llmpack fsyncs its shards) in the same run.

Targets: peak RSS <= 2 x largest tensor + 600 MB, peak RSS of 2 GB and 6 GB within 10 % of each other,
throughput >= 0.5 x cp.

Example:
    python benchmarks/stream_memory.py                 # 2 GB and 6 GB, fp16 and int8
    python benchmarks/stream_memory.py --sizes 1 --method bf16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, INTERMEDIATE = 4096, 8192
TENSOR_SHAPE = (INTERMEDIATE, HIDDEN)  # 128 MiB in fp32
TENSOR_BYTES = TENSOR_SHAPE[0] * TENSOR_SHAPE[1] * 4
MLP = (("gate_proj", (INTERMEDIATE, HIDDEN)), ("up_proj", (INTERMEDIATE, HIDDEN)), ("down_proj", (HIDDEN, INTERMEDIATE)))

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from llmpack.pipeline import quantize
t1 = time.perf_counter()
res = quantize(sys.argv[1], sys.argv[3], out=sys.argv[2], max_shard_size="512MB", quiet=True)
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "quantize_s": t2 - t1, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "files": len(res.files), "output_bytes": res.output_bytes}))
"""

_BASELINE = r"""
import json, resource
import llmpack.pipeline
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def synthesize(d: Path, gb: int) -> int:
    """Write an FP32 checkpoint of ``gb`` GB (128 MiB tensors) with llmpack's own streaming writer."""
    import torch

    from llmpack.checkpoint.writer import OutSpec, ShardWriter

    n = max(1, round(gb * 1e9 / TENSOR_BYTES))
    d.mkdir(parents=True)
    specs = [OutSpec(f"model.layers.{i // 3}.mlp.{MLP[i % 3][0]}.weight", MLP[i % 3][1], torch.float32) for i in range(n)]
    layers = (n + 2) // 3
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False, "dtype": "float32"}))
    w = ShardWriter(d, specs, "2GB")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(TENSOR_SHAPE, generator=g)
    for i, s in enumerate(specs):
        t = base if i % 2 == 0 else base * 0.5
        w.write(s.name, t if tuple(s.shape) == TENSOR_SHAPE else t.reshape(s.shape))
    w.close()
    return n * TENSOR_BYTES


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["LLMPACK_PROGRESS"] = "0"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_cp(src: Path, dst: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    subprocess.run(["sync"], check=True)
    return time.perf_counter() - t


def run_quantize(src: Path, dst: Path, method: str) -> dict:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(dst), method], capture_output=True, text=True,
                       env=child_env(), check=False)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"quantize child failed:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 6], help="checkpoint sizes in GB (default 2 6)")
    ap.add_argument("--method", nargs="+", default=["fp16", "int8"], help="quantization methods (default fp16 int8)")
    ap.add_argument("--tmp", default="/tmp", help="parent of the scratch dir")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    args = ap.parse_args(argv)

    base = json.loads(subprocess.run([sys.executable, "-c", _BASELINE], capture_output=True, text=True,
                                     env=child_env(), check=True).stdout.strip().splitlines()[-1])
    baseline_mb = base["maxrss_kb"] / 1024
    limit_mb = (2 * TENSOR_BYTES) / 2**20 + 600
    rows = []
    for gb in args.sizes:
        work = Path(tempfile.mkdtemp(prefix="llmpack-stream-", dir=args.tmp))
        try:
            src = work / "src"
            nbytes = synthesize(src, gb)
            for method in args.method:  # cp measured next to each run, so drift cancels in the ratio
                cp_s = run_cp(src, work / "copy")
                shutil.rmtree(work / "copy")
                q = run_quantize(src, work / "out", method)
                shutil.rmtree(work / "out")
                rows.append({"method": method, "size_gb": gb, "source_bytes": nbytes,
                             "peak_rss_mb": q["maxrss_kb"] / 1024, "quantize_s": q["quantize_s"], "cp_s": cp_s,
                             "throughput_mb_s": nbytes / q["quantize_s"] / 1e6, "cp_mb_s": nbytes / cp_s / 1e6,
                             "ratio_vs_cp": cp_s / q["quantize_s"], "output_bytes": q["output_bytes"]})
        finally:
            shutil.rmtree(work, ignore_errors=True)

    print(f"llmpack stream_memory: methods={','.join(args.method)}, tensors 128 MiB, max_shard_size=512MB, "
          f"baseline RSS after import {baseline_mb:.0f} MB, RSS limit {limit_mb:.0f} MB")
    print(f"{'method':>8} {'size':>5} {'peak RSS MB':>12} {'quantize s':>11} {'MB/s':>8} {'cp s':>7} {'cp MB/s':>8} {'vs cp':>6}")
    for r in rows:
        print(f"{r['method']:>8} {r['size_gb']:>4}G {r['peak_rss_mb']:>12.0f} {r['quantize_s']:>11.1f} {r['throughput_mb_s']:>8.0f} "
              f"{r['cp_s']:>7.1f} {r['cp_mb_s']:>8.0f} {r['ratio_vs_cp']:>6.2f}")
    ok = True
    for r in rows:
        good = r["peak_rss_mb"] <= limit_mb
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {r['method']} {r['size_gb']}G peak RSS {r['peak_rss_mb']:.0f} MB <= {limit_mb:.0f} MB")
        good = r["ratio_vs_cp"] >= 0.5
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {r['method']} {r['size_gb']}G throughput {r['ratio_vs_cp']:.2f} x cp >= 0.5")
    for method in args.method:
        rss = [r["peak_rss_mb"] for r in rows if r["method"] == method]
        if len(rss) >= 2:
            lo, hi = min(rss), max(rss)
            good = hi <= lo * 1.10
            ok &= good
            print(f"{'PASS' if good else 'FAIL'} {method} peak RSS flat across sizes: {lo:.0f}..{hi:.0f} MB (within 10%)")
    if args.json:
        print(json.dumps({"baseline_rss_mb": baseline_mb, "limit_mb": limit_mb, "rows": rows, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
