"""Streaming-memory benchmark: peak RSS and throughput of ``llmpack.quantize`` vs model size.

Synthesizes complete random-init FP32 Llama checkpoints (every tensor of ``LlamaForCausalLM``: embeddings,
decoder blocks, final norm and an untied ``lm_head``; a ``config.json`` that describes them, with
``architectures: ["LlamaForCausalLM"]``; SmolLM2's tokenizer files copied in) in a temp dir under ``--tmp``,
with ``scale_memory.write_checkpoint`` (block by block, ~1 GB safetensors shards + index). The shape is
hidden 4096, intermediate 8192 (the MLP projections are 128 MiB each in FP32), 32 heads / 8 KV heads
(head_dim 128), vocab 49152, untied head. The vocab is SmolLM2's: the copied tokenizer emits ids up to
49151, which a smaller embedding cannot look up, so the embeddings and the head (768 MiB each in FP32) are
the largest tensors. The number of decoder layers is chosen so the checkpoint is about ``--sizes`` GB
(default 2 and 6 -> 1 and 8 layers, 2.18 GB and 6.17 GB; the real size is printed).

Each checkpoint is quantized, once per method, in a child process::

    from llmpack.pipeline import quantize
    quantize(CKPT, METHOD, out=OUT, max_shard_size="512MB", quiet=True)

  * fp16-write: FP32 -> FP16 with ``calibrate=False`` (no activation check): the streaming writer alone;
  * fp16: FP32 -> FP16, including the FP16 activation check, which streams the written output one
    decoder block at a time over the calibration text;
  * int8: includes the int8 calibration, which also runs the model one decoder block at a time.

What is measured: the child's own peak RSS (``ru_maxrss`` from scale_memory's launcher, so this process's
memory is not counted) and its ``quantize`` time (import of llmpack excluded). Right before each run, copying the checkpoint with
``cp -r`` + ``sync`` (llmpack fsyncs its shards) is timed as a baseline, so drift cancels in the ratio.
Throughput is checkpoint bytes / quantize time, reported as MB/s, s/GB and x cp.

Targets (the exit status is 1 when one fails):
  * peak RSS <= 2 x one decoder block in float32 + embeddings and head in float32 + 1 GB (computed from the
    shape: 2 x 570 MB + 2 x 805 MB + 1 GB = 3.75 GB = 3578 MiB for the default shape). A block is 4 attention
    projections (GQA: k/v are ``[kv_heads * head_dim, hidden]``), 3 MLP projections and 2 RMSNorms; the
    head is untied, so it is counted next to the embeddings;
  * for each method, peak RSS across the sizes within 15 % (max <= 1.15 x min);
  * fp16-write (``calibrate=False``: the streaming read-convert-write alone) throughput >= 0.5 x cp. The
    FP16 activation check runs the model in FP16, which has no fast path on AVX2 CPUs, and int8's
    calibration is compute: their throughput is reported (s/GB, x cp) but not gated.

Examples:
    python benchmarks/stream_memory.py                          # 2 GB and 6 GB, fp16-write, fp16 and int8
    python benchmarks/stream_memory.py --sizes 2 --method fp16 --json
    python benchmarks/stream_memory.py --sizes 1 --layers 2 --hidden 256 --intermediate 512 \\
        --method fp16 int8                                      # tiny smoke run (seconds)
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
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from scale_memory import Shape, checkpoint_bytes, run_measured, write_checkpoint  # noqa: E402  (benchmarks/scale_memory.py)

GB = 1e9
MB = 2**20
HIDDEN, INTERMEDIATE, HEADS, KV_HEADS = 4096, 8192, 32, 8
VOCAB = 49152  # SmolLM2's tokenizer (copied into the checkpoint) emits ids up to 49151
SHARD_BYTES = 1 * GB  # source checkpoint shards (the quantized output uses max_shard_size=512MB)
FLAT_RATIO = 1.15
MIN_RATIO_VS_CP = 0.5
GATED_THROUGHPUT = ("fp16-write",)

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from llmpack.pipeline import quantize
t1 = time.perf_counter()
method = sys.argv[3]
res = quantize(sys.argv[1], method.removesuffix("-write"), out=sys.argv[2], max_shard_size="512MB", quiet=True,
               calibrate=not method.endswith("-write"))
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "quantize_s": t2 - t1, "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "files": len(res.files), "output_bytes": res.output_bytes}))
"""

_BASELINE = r"""
import json, resource
import llmpack.pipeline
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def fp32_bytes(shape: Shape) -> int:
    return 4 * shape.total_params


def layers_for(gb: float, base: Shape) -> int:
    """Decoder layers that bring the FP32 checkpoint of ``base``'s shape closest to ``gb`` GB (at least 1)."""
    fixed = 4 * (base.embed_params + base.head_params + base.hidden)
    return max(1, round((gb * GB - fixed) / (4 * base.block_params)))


def synthesize(work: Path, shape: Shape, seed: int = 0) -> Path:
    """Write a complete FP32 Llama checkpoint of ``shape`` under ``work`` (see ``scale_memory.write_checkpoint``)."""
    import torch

    ckpt, _ = write_checkpoint(work, shape, SHARD_BYTES, seed, dtype=torch.float32)
    return ckpt


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
    """One quantize in a child process, through scale_memory's launcher (so its peak RSS is its own)."""
    r = run_measured([sys.executable, "-c", _CHILD, str(src), str(dst), method], dst.parent / f"logs-{method}", None)
    if r.rc != 0:
        raise SystemExit(f"quantize child ({method}) failed with exit {r.rc}:\n{r.stderr[-3000:]}")
    out = json.loads(r.stdout.strip().splitlines()[-1])
    out["maxrss_kb"] = r.maxrss_bytes // 1024
    out["wall_s"] = r.wall_s
    out["rc"] = r.rc
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[2, 6], help="checkpoint sizes in GB (default 2 6)")
    ap.add_argument("--method", nargs="+", default=["fp16-write", "fp16", "int8"],
                    help="fp16-write (the streaming write alone: calibrate=False), fp16 (with its activation check), "
                         "int8 (calibrated); default all three")
    ap.add_argument("--tmp", default="/tmp", help="parent of the scratch dir")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    # hidden: shape overrides for smoke runs (the targets are computed from the shape actually used)
    ap.add_argument("--layers", type=int, help=argparse.SUPPRESS)  # overrides the size-derived layer count
    ap.add_argument("--hidden", type=int, default=HIDDEN, help=argparse.SUPPRESS)
    ap.add_argument("--intermediate", type=int, default=INTERMEDIATE, help=argparse.SUPPRESS)
    ap.add_argument("--heads", type=int, default=HEADS, help=argparse.SUPPRESS)
    ap.add_argument("--kv-heads", type=int, default=KV_HEADS, help=argparse.SUPPRESS)
    ap.add_argument("--vocab", type=int, default=VOCAB, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.vocab < VOCAB:
        ap.error(f"--vocab {args.vocab}: the copied SmolLM2 tokenizer emits ids up to {VOCAB - 1}, "
                 f"so the vocab must be >= {VOCAB}")

    base_shape = Shape(args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab, 1, tied=False)
    limit_mb = base_shape.target_bytes() / MB
    base = json.loads(subprocess.run([sys.executable, "-c", _BASELINE], capture_output=True, text=True,
                                     env=child_env(), check=True).stdout.strip().splitlines()[-1])
    baseline_mb = base["maxrss_kb"] / 1024
    rows = []
    for gb in args.sizes:
        shape = Shape(args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab,
                      args.layers if args.layers else layers_for(gb, base_shape), tied=False)
        work = Path(tempfile.mkdtemp(prefix="llmpack-stream-", dir=args.tmp))
        try:
            src = synthesize(work, shape)
            nbytes = checkpoint_bytes(src)
            for method in args.method:  # cp measured next to each run, so drift cancels in the ratio
                cp_s = run_cp(src, work / "copy")
                shutil.rmtree(work / "copy")
                q = run_quantize(src, work / "out", method)
                shutil.rmtree(work / "out")
                rows.append({"method": method, "size_gb": gb, "layers": shape.layers, "source_bytes": nbytes,
                             "source_gb": nbytes / GB, "peak_rss_mb": q["maxrss_kb"] / 1024, "rc": q["rc"],
                             "quantize_s": q["quantize_s"], "s_per_gb": q["quantize_s"] / (nbytes / GB),
                             "cp_s": cp_s, "throughput_mb_s": nbytes / q["quantize_s"] / 1e6,
                             "cp_mb_s": nbytes / cp_s / 1e6, "ratio_vs_cp": cp_s / q["quantize_s"],
                             "throughput_gated": method in GATED_THROUGHPUT, "output_bytes": q["output_bytes"]})
        finally:
            shutil.rmtree(work, ignore_errors=True)

    s = base_shape
    print(f"llmpack stream_memory: methods={','.join(args.method)}, FP32 Llama hidden {s.hidden}, intermediate "
          f"{s.intermediate}, heads {s.heads}/{s.kv_heads} kv, vocab {s.vocab}, untied head; max_shard_size=512MB")
    print(f"block {4 * s.block_params / MB:.0f} MB fp32, embeddings {4 * s.embed_params / MB:.0f} MB + head "
          f"{4 * s.head_params / MB:.0f} MB fp32; RSS limit 2 x block + embeddings + head + 1 GB = {limit_mb:.0f} MB; "
          f"baseline RSS after import {baseline_mb:.0f} MB")
    print(f"{'method':>8} {'size':>5} {'layers':>6} {'real GB':>8} {'peak RSS MB':>12} {'quantize s':>11} {'s/GB':>7} "
          f"{'MB/s':>8} {'cp s':>7} {'cp MB/s':>8} {'vs cp':>6}")
    for r in rows:
        print(f"{r['method']:>8} {r['size_gb']:>4g}G {r['layers']:>6} {r['source_gb']:>8.2f} {r['peak_rss_mb']:>12.0f} "
              f"{r['quantize_s']:>11.1f} {r['s_per_gb']:>7.1f} {r['throughput_mb_s']:>8.0f} {r['cp_s']:>7.1f} "
              f"{r['cp_mb_s']:>8.0f} {r['ratio_vs_cp']:>6.2f}")
    ok = True
    for r in rows:
        tag = f"{r['method']} {r['size_gb']:g}G ({r['layers']} layers, {r['source_gb']:.2f} GB)"
        good = r["peak_rss_mb"] <= limit_mb
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {tag} peak RSS {r['peak_rss_mb']:.0f} MB <= {limit_mb:.0f} MB")
        if r["throughput_gated"]:
            good = r["ratio_vs_cp"] >= MIN_RATIO_VS_CP
            ok &= good
            print(f"{'PASS' if good else 'FAIL'} {tag} throughput {r['ratio_vs_cp']:.2f} x cp >= {MIN_RATIO_VS_CP}")
        else:
            print(f"info {tag} throughput {r['s_per_gb']:.1f} s/GB ({r['ratio_vs_cp']:.2f} x cp; the model runs: "
                  f"compute, not gated)")
    for method in args.method:
        rss = [r["peak_rss_mb"] for r in rows if r["method"] == method]
        if len(rss) >= 2:
            lo, hi = min(rss), max(rss)
            good = hi <= lo * FLAT_RATIO
            ok &= good
            print(f"{'PASS' if good else 'FAIL'} {method} peak RSS flat across sizes: {lo:.0f}..{hi:.0f} MB "
                  f"(max/min {hi / lo:.3f} <= {FLAT_RATIO})")
    if args.json:
        print(json.dumps({"baseline_rss_mb": baseline_mb, "limit_mb": limit_mb, "flat_ratio_max": FLAT_RATIO,
                          "min_ratio_vs_cp": MIN_RATIO_VS_CP, "shape": {"hidden": s.hidden, "intermediate": s.intermediate,
                          "heads": s.heads, "kv_heads": s.kv_heads, "vocab": s.vocab, "tied": s.tied},
                          "rows": rows, "ok": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
