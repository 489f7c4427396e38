"""Scale-memory benchmark: peak RSS and wall time of the ``llmpack`` CLI on Llama checkpoints of growing depth.

Writes random-init bf16 checkpoints shaped like a real Llama (``LlamaForCausalLM``, hidden 2048, intermediate
8192, 32 heads / 8 KV heads, vocab 49152, tied embeddings; SmolLM2's tokenizer files copied in) with 8, 24
and 48 decoder layers (1.17 / 3.12 / 6.04 GB). They are written block by block, one ~1 GB safetensors shard at
a time plus ``model.safetensors.index.json``, so the benchmark itself never holds the whole model. They are
cached under ``--work`` and rewritten only when missing. Each checkpoint then goes through these CLI runs,
each in its own child process::

    fp16         python -m llmpack quantize CKPT --method fp16 --out OUT --quiet
    int8         python -m llmpack quantize CKPT --method int8 --out OUT --quiet
    int8-budget  python -m llmpack quantize CKPT --method int8 --max-ppl-increase 2 --out OUT --quiet
    measure      python -m llmpack measure CKPT INT8_OUT --quick --no-latency --format json

fp16 runs with its activation check (on by default). int8 runs with the calibrated defaults. int8-budget
runs the accuracy-budget search. measure compares the int8 output against its source, so it needs the
int8 run and runs it even when ``--only`` leaves int8 out. Each output is deleted after its run; the int8
output is kept until measure has run.

What is measured: for each child, its own peak RSS (``ru_maxrss`` from ``os.wait4`` in a ~10 MB launcher it is
forked from, so the benchmark's own memory is not counted).
Wall time is measured too. Right before each run, ``cat CKPT/*.safetensors > /dev/null`` is timed as a
baseline for reading the checkpoint (nothing is dropped from the page cache). Both figures are printed as
seconds per GB. A failed run (non-zero exit code, or a timeout) is reported with the last lines of its
stderr; it does not stop the benchmark.

Targets, per run:
  * peak RSS <= 2 x one decoder block in float32 + embeddings in float32 + 1 GB. A block is 4 attention
    projections (GQA: k/v are ``[kv_heads * head_dim, hidden]``), 3 MLP projections and 2 RMSNorms. The
    embeddings are ``vocab x hidden``. The head is tied to the embeddings, so it is not counted a second time.
  * for each method, peak RSS across layer counts within 15 % (max / min <= 1.15).
measure runs with ``--no-latency`` (latency needs both models resident), so its accuracy streams block by
block and it has the same target. The exit status is 0 even when a target is missed (the table says
which ones failed), unless ``--strict`` is given. It is 2 when the benchmark itself cannot run (for
example, not enough disk space).

``--beyond-ram`` instead writes one checkpoint larger than this machine's RAM (``MemTotal``). The default
shape is hidden 5120, intermediate 13824, 40 / 8 heads, vocab 49152, 48 layers (26.9 GB bf16); more layers
are added when RAM is larger, unless ``--beyond-layers`` is given. Free disk space is checked first for the
checkpoint plus the int8 output (~1.5 x the checkpoint). Only the int8 defaults quantize runs on it. The
benchmark reports its peak RSS, wall time, the output size (``du``) and the int8 decisions from the
output's ``llmpack.json`` (``extra.int8_budget.summary`` and the W8A8 / W8A16 / float layer counts). This is
not part of ``make test``.

Examples:
    python benchmarks/scale_memory.py                                  # 8, 24, 48 layers; all four runs
    python benchmarks/scale_memory.py --layers 8,24 --only fp16,int8 --json scale.json --keep
    python benchmarks/scale_memory.py --layers 2,3 --hidden 128 --intermediate 256 --heads 4 --kv-heads 2 \\
        --vocab 49152 --only fp16,int8                                # tiny smoke run (seconds)
    python benchmarks/scale_memory.py --beyond-ram --work /data/scratch --keep
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
RUNS = ("fp16", "int8", "int8-budget", "measure")
TOKENIZER_GLOBS = ("tokenizer*", "special_tokens_map*", "vocab*", "merges*")
FLAT_RATIO = 1.15
STDERR_TAIL_LINES = 15


# ----------------------------------------------------------------------------- shape and checkpoint
@dataclasses.dataclass(frozen=True)
class Shape:
    """A Llama shape (no biases; tied embeddings unless ``tied=False``, which adds an ``lm_head``)."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    layers: int
    tied: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def block_tensors(self, i: int) -> list[tuple[str, tuple[int, ...], bool]]:
        """(name, shape, is_norm) of decoder block ``i``, named as in transformers' LlamaForCausalLM."""
        h, f, kv = self.hidden, self.intermediate, self.kv_dim
        p = f"model.layers.{i}."
        return [
            (p + "self_attn.q_proj.weight", (h, h), False),
            (p + "self_attn.k_proj.weight", (kv, h), False),
            (p + "self_attn.v_proj.weight", (kv, h), False),
            (p + "self_attn.o_proj.weight", (h, h), False),
            (p + "mlp.gate_proj.weight", (f, h), False),
            (p + "mlp.up_proj.weight", (f, h), False),
            (p + "mlp.down_proj.weight", (h, f), False),
            (p + "input_layernorm.weight", (h,), True),
            (p + "post_attention_layernorm.weight", (h,), True),
        ]

    @property
    def block_params(self) -> int:
        return sum(math.prod(s) for _, s, _ in self.block_tensors(0))

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """Parameters of ``lm_head`` stored on their own: 0 when tied to the embeddings."""
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        return self.layers * self.block_params + self.embed_params + self.head_params + self.hidden  # + final norm

    @property
    def bf16_bytes(self) -> int:
        return 2 * self.total_params

    def target_bytes(self) -> float:
        """2 x one block in float32 + embeddings (and an untied head) in float32 + 1 GB.

        A tied head is not counted twice."""
        return 2 * 4 * self.block_params + 4 * (self.embed_params + self.head_params) + 1 * GB

    def dirname(self) -> str:
        return (f"llama-h{self.hidden}-i{self.intermediate}-a{self.heads}-kv{self.kv_heads}"
                f"-v{self.vocab}-L{self.layers}" + ("" if self.tied else "-untied"))

    def config(self, dtype: str = "bfloat16") -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": self.hidden, "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers, "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads, "head_dim": self.head_dim, "vocab_size": self.vocab,
            "tie_word_embeddings": self.tied, "torch_dtype": dtype, "dtype": dtype,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "use_cache": True,
        }


def copy_tokenizer(dst: Path) -> list[str]:
    """Copy SmolLM2's tokenizer files (tokenizer*, special_tokens_map*, vocab*, merges*) into ``dst``."""
    from llmpack.testing import smollm2_dir

    src = Path(smollm2_dir())
    copied: list[str] = []
    for pat in TOKENIZER_GLOBS:
        for f in sorted(src.glob(pat)):
            if f.is_file():
                shutil.copy2(f, dst / f.name)
                copied.append(f.name)
    if not copied:
        raise BenchmarkError(f"no tokenizer files found in {src}")
    return copied


def write_checkpoint(work: Path, shape: Shape, shard_bytes: float, seed: int,
                     dtype: Any = None) -> tuple[Path, bool]:
    """Write (or find cached) a random-init checkpoint of ``shape`` under ``work``, block by block.

    ``dtype`` is a torch floating dtype (default ``torch.bfloat16``); any other dtype gets its name appended
    to the directory name (``...-float32``). Only one shard's tensors are in memory at a time. Returns
    ``(directory, written_now)``.
    """
    import torch
    from safetensors.torch import save_file

    dtype = torch.bfloat16 if dtype is None else dtype
    dtype_name = str(dtype).removeprefix("torch.")
    name = shape.dirname() + ("" if dtype == torch.bfloat16 else f"-{dtype_name}")
    final = work / name
    if (final / "model.safetensors.index.json").exists() and (final / "config.json").exists():
        return final, False

    part = work / (name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    block_bytes = torch.empty((), dtype=dtype).element_size() * shape.block_params
    per_shard = max(1, int(shard_bytes // block_bytes))
    groups = [list(range(i, min(i + per_shard, shape.layers))) for i in range(0, shape.layers, per_shard)] or [[]]
    n = len(groups)
    g = torch.Generator().manual_seed(seed)

    def weight(shp: tuple[int, ...]) -> torch.Tensor:
        return torch.empty(shp, dtype=dtype).normal_(0.0, 0.02, generator=g)

    weight_map: dict[str, str] = {}
    total = 0
    t0 = time.perf_counter()
    for k, layer_ids in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        tensors: dict[str, torch.Tensor] = {}
        if k == 0:
            tensors["model.embed_tokens.weight"] = weight((shape.vocab, shape.hidden))
        for i in layer_ids:
            for tname, shp, is_norm in shape.block_tensors(i):
                tensors[tname] = torch.ones(shp, dtype=dtype) if is_norm else weight(shp)
        if k == n - 1:
            tensors["model.norm.weight"] = torch.ones(shape.hidden, dtype=dtype)
            if not shape.tied:
                tensors["lm_head.weight"] = weight((shape.vocab, shape.hidden))
        save_file(tensors, str(part / fname), metadata={"format": "pt"})
        for tname, t in tensors.items():
            weight_map[tname] = fname
            total += t.numel() * t.element_size()
        del tensors
        print(f"  wrote {name}/{fname} ({k + 1}/{n})", file=sys.stderr, flush=True)
    (part / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    (part / "config.json").write_text(json.dumps(shape.config(dtype_name), indent=2) + "\n")
    copy_tokenizer(part)
    shutil.rmtree(final, ignore_errors=True)
    part.rename(final)
    print(f"  checkpoint {final} ({total / GB:.2f} GB) in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return final, True


def shard_files(ckpt: Path) -> list[Path]:
    return sorted(ckpt.glob("*.safetensors"))


def checkpoint_bytes(ckpt: Path) -> int:
    return sum(f.stat().st_size for f in shard_files(ckpt))


def du_bytes(path: Path) -> int:
    """Size of ``path`` on disk as ``du -sb`` reports it (a Python walk if ``du`` is unavailable)."""
    try:
        r = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
        return int(r.stdout.split()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def mem_total_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise BenchmarkError("MemTotal not found in /proc/meminfo")


# ----------------------------------------------------------------------------- child processes
def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["LLMPACK_PROGRESS"] = "0"
    return env


@dataclasses.dataclass
class ChildResult:
    rc: int | None
    wall_s: float
    maxrss_bytes: int
    stdout: str
    stderr: str
    timed_out: bool = False


_LAUNCH = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"maxrss_kb": ru.ru_maxrss}, f)
sys.exit(os.waitstatus_to_exitcode(status))
"""
"""A small launcher between the benchmark and each measured command. Linux's ``ru_maxrss`` of a child
includes the memory of the process it was forked from (the high-water mark of the address space it
replaced at ``exec``); forked from this benchmark (torch imported, checkpoints just written) that would
inflate every figure. Forked from the ~10 MB launcher, it is the command's own."""


def run_measured(cmd: list[str], logs: Path, timeout: float | None) -> ChildResult:
    """Run ``cmd`` through :data:`_LAUNCH` and return its exit code, wall time and own peak RSS."""
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path, rss_path = logs / "stdout.txt", logs / "stderr.txt", logs / "rusage.json"
    rss_path.unlink(missing_ok=True)
    timed_out = False
    with open(out_path, "w") as fo, open(err_path, "w") as fe:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-c", _LAUNCH, str(rss_path), *cmd], stdout=fo, stderr=fe,
                             stdin=subprocess.DEVNULL, env=child_env(), cwd=str(ROOT), start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(p.pid, signal.SIGKILL)
            rc = p.wait()
        wall = time.perf_counter() - t0
    try:
        maxrss = int(json.loads(rss_path.read_text())["maxrss_kb"]) * 1024
    except (OSError, ValueError, KeyError):
        maxrss = 0
    return ChildResult(rc=rc, wall_s=wall, maxrss_bytes=maxrss, stdout=out_path.read_text(errors="replace"),
                       stderr=err_path.read_text(errors="replace"), timed_out=timed_out)


def time_cat(ckpt: Path) -> float:
    """Wall seconds of ``cat CKPT/*.safetensors > /dev/null`` (page cache left as it is)."""
    files = [str(f) for f in shard_files(ckpt)]
    t = time.perf_counter()
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def llmpack_cmd(run: str, ckpt: Path, out: Path, int8_out: Path, device: str | None) -> list[str]:
    py = [sys.executable, "-m", "llmpack"]
    if run == "fp16":
        return [*py, "quantize", str(ckpt), "--method", "fp16", "--out", str(out), "--quiet"]
    if run == "int8":
        return [*py, "quantize", str(ckpt), "--method", "int8", "--out", str(out), "--quiet"]
    if run == "int8-budget":
        return [*py, "quantize", str(ckpt), "--method", "int8", "--max-ppl-increase", "2", "--out", str(out), "--quiet"]
    if run == "measure":
        cmd = [*py, "measure", str(ckpt), str(int8_out), "--quick", "--no-latency", "--format", "json"]
        return cmd + (["--device", device] if device else [])
    raise ValueError(run)


def int8_decisions(out: Path) -> dict[str, Any] | None:
    """``extra.int8_budget.summary`` and the W8A8 / W8A16 / float layer counts from ``out/llmpack.json``."""
    try:
        man = json.loads((out / "llmpack.json").read_text())
    except (OSError, ValueError):
        return None
    rec = (man.get("extra") or {}).get("int8_budget")
    if not isinstance(rec, dict):
        return {"summary": None, "layers": None, "note": "no extra.int8_budget in llmpack.json"}
    keep_float, weight_only = set(rec.get("keep_float") or ()), set(rec.get("weight_only") or ())
    counts = {"w8a8": 0, "w8a16": 0, "float": 0}
    for name in rec.get("params") or {}:
        if name in keep_float:
            counts["float"] += 1
        elif name in weight_only or rec.get("method") == "int8-weight-only":
            counts["w8a16"] += 1
        else:
            counts["w8a8"] += 1
    return {"summary": rec.get("summary"), "layers": counts if rec.get("params") else None,
            "int8_share": rec.get("int8_share"), "alpha": rec.get("alpha")}


def tail(text: str, n: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def do_run(run: str, shape: Shape, ckpt: Path, ckpt_b: int, work: Path, int8_out: Path, args: argparse.Namespace,
           gated: bool) -> dict[str, Any]:
    out = int8_out if run == "int8" else work / f"out-{run}-L{shape.layers}"
    if run != "measure":
        shutil.rmtree(out, ignore_errors=True)
    cat_s = time_cat(ckpt)
    cmd = llmpack_cmd(run, ckpt, out, int8_out, args.device)
    print(f"  [{run} L{shape.layers}] {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
    r = run_measured(cmd, work / "logs" / f"{run}-L{shape.layers}", args.timeout)
    gb = ckpt_b / GB
    target = shape.target_bytes()
    row: dict[str, Any] = {
        "method": run, "layers": shape.layers, "checkpoint_bytes": ckpt_b, "checkpoint_gb": gb,
        "peak_rss_bytes": r.maxrss_bytes, "peak_rss_gb": r.maxrss_bytes / GB, "target_gb": target / GB,
        "gated": gated, "wall_s": r.wall_s, "s_per_gb": r.wall_s / gb if gb else None,
        "cat_s": cat_s, "cat_s_per_gb": cat_s / gb if gb else None, "rc": r.rc, "timed_out": r.timed_out,
        "command": cmd,
    }
    row["rss_ok"] = r.maxrss_bytes <= target
    row["ok"] = r.rc == 0 and (row["rss_ok"] or not gated)
    if r.rc != 0:
        row["stderr_tail"] = tail(r.stderr) or tail(r.stdout)
    if run == "measure" and r.rc == 0:
        try:
            row["report"] = json.loads(r.stdout)
        except ValueError:
            row["stdout_tail"] = tail(r.stdout)
    if run in ("int8", "int8-budget") and r.rc == 0:
        row["int8_decisions"] = int8_decisions(out)
        row["output_bytes"] = du_bytes(out)
    elif run == "fp16" and r.rc == 0:
        row["output_bytes"] = du_bytes(out)
    if run != "int8":  # the int8 output is removed after measure (or right away when measure is not run)
        shutil.rmtree(out, ignore_errors=True)
    status = "ok" if row["ok"] else ("FAILED rc=%s" % r.rc if r.rc != 0 else "over target")
    print(f"  [{run} L{shape.layers}] rc={r.rc} peak RSS {row['peak_rss_gb']:.2f} GB, {r.wall_s:.1f} s: {status}",
          file=sys.stderr, flush=True)
    return row


def skipped_row(run: str, shape: Shape, ckpt_b: int, why: str) -> dict[str, Any]:
    return {"method": run, "layers": shape.layers, "checkpoint_bytes": ckpt_b, "checkpoint_gb": ckpt_b / GB,
            "peak_rss_bytes": None, "peak_rss_gb": None, "target_gb": shape.target_bytes() / GB, "gated": False,
            "wall_s": None, "s_per_gb": None, "cat_s": None, "cat_s_per_gb": None, "rc": None, "timed_out": False,
            "rss_ok": None, "ok": False, "skipped": why}


# ----------------------------------------------------------------------------- reporting
def fmt(v: Any, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{spec}}"


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'method':<12} {'layers':>6} {'ckpt GB':>8} {'peak RSS GB':>11} {'target GB':>9} {'wall s':>8} "
          f"{'s/GB':>7} {'cat s/GB':>8} {'rc':>4} {'ok':>5}")
    for r in rows:
        if r.get("skipped"):
            ok = "skip"
        elif not r["ok"]:
            ok = "FAIL"
        else:
            ok = "ok" if r["gated"] else "ok*"
        target = r["target_gb"] if r["gated"] else None
        print(f"{r['method']:<12} {r['layers']:>6} {fmt(r['checkpoint_gb'], '.2f', 8)} {fmt(r['peak_rss_gb'], '.2f', 11)} "
              f"{fmt(target, '.2f', 9)} {fmt(r['wall_s'], '.1f', 8)} {fmt(r['s_per_gb'], '.2f', 7)} "
              f"{fmt(r['cat_s_per_gb'], '.3f', 8)} {fmt(r['rc'], 'd', 4)} {ok:>5}")


def flatness(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for method in RUNS:
        rss = [(r["layers"], r["peak_rss_bytes"]) for r in rows
               if r["method"] == method and r.get("rc") == 0 and r.get("peak_rss_bytes")]
        if len(rss) < 2:
            continue
        lo, hi = min(v for _, v in rss), max(v for _, v in rss)
        gated = any(r["gated"] for r in rows if r["method"] == method)
        out.append({"method": method, "layers": [n for n, _ in rss], "min_gb": lo / GB, "max_gb": hi / GB,
                    "ratio": hi / lo, "ok": hi / lo <= FLAT_RATIO, "gated": gated})
    return out


class BenchmarkError(Exception):
    """The benchmark itself cannot run (exit status 2)."""


def check_disk(work: Path, need: float, what: str) -> None:
    free = shutil.disk_usage(work).free
    if free < need:
        raise BenchmarkError(f"scale_memory: not enough disk space in {work}: {what} needs ~{need / GB:.1f} GB, "
                         f"{free / GB:.1f} GB free (use --work DIR on a larger disk)")


# ----------------------------------------------------------------------------- main paths
def sweep(args: argparse.Namespace, work: Path, created: list[Path]) -> dict[str, Any]:
    runs = [r.strip() for r in args.only.split(",") if r.strip()]
    bad = sorted(set(runs) - set(RUNS))
    if bad:
        raise BenchmarkError(f"--only: unknown runs {bad}; choose from {','.join(RUNS)}")
    need_int8 = "int8" in runs or "measure" in runs
    order = [r for r in ("fp16", "int8", "measure", "int8-budget") if r in runs or (r == "int8" and need_int8)]
    shapes = [Shape(args.hidden or 2048, args.intermediate or 8192, args.heads or 32, args.kv_heads or 8,
                    args.vocab or 49152, int(n)) for n in args.layers.split(",") if n.strip()]
    missing = [s for s in shapes if not (work / s.dirname() / "model.safetensors.index.json").exists()]
    check_disk(work, sum(s.bf16_bytes for s in missing) + 1.6 * max(s.bf16_bytes for s in shapes) + 0.5 * GB,
               f"{len(missing)} new checkpoint(s) plus the largest outputs")
    s0 = shapes[0]
    print(f"shape: hidden {s0.hidden}, intermediate {s0.intermediate}, heads {s0.heads}/{s0.kv_heads} kv "
          f"(head_dim {s0.head_dim}), vocab {s0.vocab}, tied head; block {s0.block_params / 1e6:.1f} M params "
          f"({4 * s0.block_params / GB:.3f} GB fp32), embeddings {s0.embed_params / 1e6:.1f} M "
          f"({4 * s0.embed_params / GB:.3f} GB fp32; the tied head is not counted twice); "
          f"RSS target 2 x block + embeddings + 1 GB = {s0.target_bytes() / GB:.2f} GB", flush=True)
    rows: list[dict[str, Any]] = []
    for shape in shapes:
        ckpt, new = write_checkpoint(work, shape, args.shard_size * GB, args.seed)
        if new:
            created.append(ckpt)
        ckpt_b = checkpoint_bytes(ckpt)
        int8_out = work / f"out-int8-L{shape.layers}"
        int8_rc: int | None = None
        for run in order:
            if run == "measure" and int8_rc != 0:
                rows.append(skipped_row(run, shape, ckpt_b, f"int8 run failed (rc={int8_rc})"))
                continue
            row = do_run(run, shape, ckpt, ckpt_b, work, int8_out, args,
                         gated=True)
            if run == "int8":
                int8_rc = row["rc"]
                if "int8" not in runs:
                    row["prerequisite"] = True  # run only because measure needs its output
            rows.append(row)
        shutil.rmtree(int8_out, ignore_errors=True)
    flat = flatness(rows)
    print()
    print_table(rows)
    ok = all(r["ok"] for r in rows if r["gated"] or r.get("rc") != 0)
    for f in flat:
        tag = ("PASS" if f["ok"] else "FAIL") if f["gated"] else "info"
        ok &= f["ok"] or not f["gated"]
        print(f"{tag} {f['method']} peak RSS across layers {f['layers']}: {f['min_gb']:.2f}..{f['max_gb']:.2f} GB, "
              f"max/min {f['ratio']:.3f} (<= {FLAT_RATIO})")
    for r in rows:
        if r["gated"] and r.get("rc") == 0 and not r["rss_ok"]:
            print(f"FAIL {r['method']} L{r['layers']}: peak RSS {r['peak_rss_gb']:.2f} GB > target {r['target_gb']:.2f} GB")
        if r.get("rc") not in (0, None):
            why = " (timed out)" if r.get("timed_out") else ""
            print(f"FAIL {r['method']} L{r['layers']}: rc={r['rc']}{why}; last stderr lines:")
            print("    " + (r.get("stderr_tail") or "(empty)").replace("\n", "\n    "))
        if r.get("skipped"):
            print(f"SKIP {r['method']} L{r['layers']}: {r['skipped']}")
        dec = r.get("int8_decisions")
        if dec and dec.get("layers"):
            c = dec["layers"]
            print(f"int8 decisions {r['method']} L{r['layers']}: {c['w8a8']} W8A8, {c['w8a16']} W8A16, {c['float']} float; "
                  f"summary {json.dumps(dec.get('summary'), sort_keys=True)}")
    return {"mode": "sweep", "shape": dataclasses.asdict(s0) | {"layers": [s.layers for s in shapes]},
            "target_formula": "2 x fp32 block + fp32 embeddings (head tied, not counted twice) + 1 GB",
            "target_gb": s0.target_bytes() / GB, "flat_ratio_max": FLAT_RATIO, "rows": rows, "flatness": flat, "ok": ok}


def beyond_ram(args: argparse.Namespace, work: Path, created: list[Path]) -> dict[str, Any]:
    mem = mem_total_bytes()
    base = Shape(args.hidden or 5120, args.intermediate or 13824, args.heads or 40, args.kv_heads or 8,
                 args.vocab or 49152, args.beyond_layers or 48)
    shape = base
    if args.beyond_layers is None and base.bf16_bytes <= mem:
        extra = math.ceil((1.05 * mem - base.bf16_bytes) / (2 * base.block_params))
        shape = dataclasses.replace(base, layers=base.layers + extra)
        print(f"MemTotal {mem / GB:.1f} GB >= {base.bf16_bytes / GB:.1f} GB: using {shape.layers} layers", flush=True)
    elif shape.bf16_bytes <= mem:
        print(f"note: the checkpoint ({shape.bf16_bytes / GB:.1f} GB) is NOT larger than RAM ({mem / GB:.1f} GB)", flush=True)
    ckpt_dir = work / shape.dirname()
    have = (ckpt_dir / "model.safetensors.index.json").exists()
    need = (0 if have else shape.bf16_bytes) + 0.5 * shape.bf16_bytes + 1 * GB
    check_disk(work, need, f"the {shape.bf16_bytes / GB:.1f} GB checkpoint{' (cached)' if have else ''} plus its int8 output")
    print(f"beyond-RAM: MemTotal {mem / GB:.1f} GB, checkpoint {shape.dirname()} ~{shape.bf16_bytes / GB:.1f} GB bf16, "
          f"RSS target {shape.target_bytes() / GB:.2f} GB", flush=True)
    ckpt, new = write_checkpoint(work, shape, args.shard_size * GB, args.seed)
    if new:
        created.append(ckpt)
    ckpt_b = checkpoint_bytes(ckpt)
    out = work / f"out-int8-L{shape.layers}"
    row = do_run("int8", shape, ckpt, ckpt_b, work, out, args, gated=True)
    shutil.rmtree(out, ignore_errors=True)
    print()
    print_table([row])
    print(f"MemTotal {mem / GB:.1f} GB; checkpoint {ckpt_b / GB:.2f} GB ({ckpt_b / mem:.2f} x RAM); "
          f"output {row.get('output_bytes', 0) / GB:.2f} GB (du)")
    if row["rc"] != 0:
        print(f"FAIL int8 rc={row['rc']}; last stderr lines:\n    " + (row.get("stderr_tail") or "(empty)").replace("\n", "\n    "))
    elif not row["rss_ok"]:
        print(f"FAIL int8: peak RSS {row['peak_rss_gb']:.2f} GB > target {row['target_gb']:.2f} GB")
    dec = row.get("int8_decisions")
    if dec:
        c = dec.get("layers")
        if c:
            print(f"int8 decisions: {c['w8a8']} W8A8, {c['w8a16']} W8A16, {c['float']} float "
                  f"(int8 share {dec.get('int8_share')}, alpha {dec.get('alpha')})")
        print("extra.int8_budget.summary: " + json.dumps(dec.get("summary"), indent=2, sort_keys=True))
    return {"mode": "beyond-ram", "mem_total_bytes": mem, "shape": dataclasses.asdict(shape), "rows": [row],
            "ok": bool(row["ok"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="8,24,48", help="comma-separated decoder layer counts (default 8,24,48)")
    ap.add_argument("--hidden", type=int, help="hidden size (default 2048; --beyond-ram 5120)")
    ap.add_argument("--intermediate", type=int, help="MLP intermediate size (default 8192; --beyond-ram 13824)")
    ap.add_argument("--heads", type=int, help="attention heads (default 32; --beyond-ram 40)")
    ap.add_argument("--kv-heads", type=int, help="key/value heads (default 8)")
    ap.add_argument("--vocab", type=int, help="vocabulary size (default 49152, SmolLM2's tokenizer)")
    ap.add_argument("--only", default=",".join(RUNS), help=f"runs to do, comma-separated (default {','.join(RUNS)})")
    ap.add_argument("--shard-size", type=float, default=1.0, help="checkpoint shard size in GB (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random init (default 0)")
    ap.add_argument("--work", type=Path, help="cache dir for checkpoints and outputs "
                    "(default $TMPDIR/llmpack-scale-memory); checkpoints there are reused")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints this run wrote (default: delete them)")
    ap.add_argument("--device", help="passed to measure as --device (default: measure's own default)")
    ap.add_argument("--timeout", type=float, help="kill a run after this many seconds (default: none)")
    ap.add_argument("--gate-measure", action="store_true", help="apply the RSS targets to measure too")
    ap.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON to PATH")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed or a run fails")
    ap.add_argument("--beyond-ram", action="store_true", help="one checkpoint larger than RAM, int8 defaults only")
    ap.add_argument("--beyond-layers", type=int, help="--beyond-ram: layer count (default 48, more if RAM is larger)")
    args = ap.parse_args(argv)

    work = (args.work or Path(tempfile.gettempdir()) / "llmpack-scale-memory").resolve()
    work_existed = work.exists()
    work.mkdir(parents=True, exist_ok=True)
    created: list[Path] = []
    try:
        res = beyond_ram(args, work, created) if args.beyond_ram else sweep(args, work, created)
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if not args.keep:
            shutil.rmtree(work / "logs", ignore_errors=True)
            for c in created:
                shutil.rmtree(c, ignore_errors=True)
            if not work_existed and not any(work.iterdir()):
                work.rmdir()
    res["work"] = str(work)
    res["kept"] = bool(args.keep)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    print(f"overall: {'PASS' if res['ok'] else 'FAIL'}" + ("" if args.strict else " (exit 0; --strict to fail on it)"))
    return 1 if args.strict and not res["ok"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
