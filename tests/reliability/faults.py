"""The fault battery of llmpack: one row per fault, one test per row, and the generator of ``docs/reliability.md``.

``FAULTS`` is the single source of truth. ``tests/reliability/test_faults.py`` (and the signal, disk and
security test modules) hold exactly one ``test_fault_<id>`` per row, asserting the exit code written
here; ``tests/reliability/test_reliability_page.py`` fails when ``docs/reliability.md`` differs from :func:`render`
or when a row has no test (or a test no row). Regenerate the page with::

    .venv/bin/python tests/reliability/faults.py        # writes docs/reliability.md
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "reliability.md"


@dataclasses.dataclass(frozen=True)
class Fault:
    """One fault tried by the suite.

    Attributes:
        id: short slug; the test is ``test_fault_<id with - as _>``.
        group: heading the row is listed under.
        fault: what is broken.
        behaviour: what llmpack does about it.
        exit_code: the CLI exit code (0 = works).
    """

    id: str
    group: str
    fault: str
    behaviour: str
    exit_code: int

    @property
    def test_name(self) -> str:
        return "test_fault_" + self.id.replace("-", "_")


_CORRUPT = "the line says to re-download or re-quantize; nothing is written"
F = Fault
FAULTS: tuple[Fault, ...] = (
    # --- corrupt or hostile safetensors ------------------------------------------------------
    F("truncated-shard", "Corrupt input", "a shard cut short in the middle of its tensor data",
      f"refused before any tensor is read, naming the file and the first tensor past the end; {_CORRUPT}", 3),
    F("flipped-byte", "Corrupt input", "one byte flipped in the tensor data of a quantized model",
      "`llmpack verify` reports the sha256 mismatch and names the shard", 3),
    F("header-past-eof", "Corrupt input", "header length prefix larger than the file",
      f"refused while reading the 8-byte prefix, naming the file; {_CORRUPT}", 3),
    F("header-too-large", "Corrupt input", "header length prefix above the 100 MB limit",
      f"refused without allocating it, naming the file; {_CORRUPT}", 3),
    F("header-invalid-json", "Corrupt input", "header bytes that are not JSON",
      f"refused, naming the file; {_CORRUPT}", 3),
    F("header-not-utf8", "Corrupt input", "header bytes that are not UTF-8",
      f"refused, naming the file; {_CORRUPT}", 3),
    F("unknown-dtype", "Corrupt input", "a tensor with a dtype outside the safetensors set (`Q9`)",
      "refused, naming the file, the tensor and the supported dtypes; re-export with a standard dtype", 2),
    F("shape-size-mismatch", "Corrupt input", "shape × dtype size differs from the data_offsets span",
      f"refused, naming the file and tensor; {_CORRUPT}", 3),
    F("offsets-overlap", "Corrupt input", "two tensors whose data_offsets overlap",
      f"refused, naming the file and both tensors; {_CORRUPT}", 3),
    F("offsets-exceed-data", "Corrupt input", "data_offsets past the end of the data section",
      f"refused, naming the file and tensor; {_CORRUPT}", 3),
    F("duplicate-tensor-names", "Corrupt input", "the same tensor name twice in one header "
      "(`json.loads` would silently keep the last)", f"refused, naming the file and tensor; {_CORRUPT}", 3),
    F("bad-metadata", "Corrupt input", "`__metadata__` holding a non-string value",
      f"refused, naming the file; {_CORRUPT}", 3),
    F("trailing-bytes", "Corrupt input", "bytes after the last tensor (the safetensors library refuses these)",
      f"refused, naming the file; {_CORRUPT}", 3),
    F("fifo-weights", "Corrupt input", "a FIFO (or directory) named `model.safetensors`",
      "refused at once instead of blocking forever on open(), naming the file", 2),
    # --- index and paths -----------------------------------------------------------------------
    F("index-missing-shard", "Index and paths", "`model.safetensors.index.json` names a shard that does not exist",
      "refused, naming the index and the missing shard", 3),
    F("index-invalid-json", "Index and paths", "an index that is not JSON (or has no `weight_map`)",
      "refused, naming the index", 3),
    F("index-dotdot", "Index and paths", "index shard path `../outside.safetensors`",
      "refused as unsafe before anything is opened", 2),
    F("index-absolute", "Index and paths", "index shard path `/abs/path.safetensors`",
      "refused as unsafe before anything is opened", 2),
    F("index-symlink-out", "Index and paths", "a shard that is a symlink to a file outside the model dir",
      "refused as unsafe (symlinks are followed and must stay inside)", 2),
    F("weight-symlink-out", "Index and paths", "`model.safetensors` itself a symlink to a file outside the dir",
      "refused as unsafe", 2),
    F("tokenizer-symlink-out", "Index and paths", "`tokenizer.json` a symlink to a file outside the model dir",
      "refused as unsafe: it would copy a foreign file into the output", 2),
    # --- model content --------------------------------------------------------------------------
    F("nan-inf-weights", "Model content", "NaN and Inf values in a weight (int8, fp16, bf16)",
      "refused, naming the tensor; the source must be fixed", 2),
    F("zero-size-and-0dim", "Model content", "0-dim (scalar) and zero-size tensors",
      "work: written, verified and read back bit-exactly", 0),
    F("empty-model", "Model content", "a checkpoint with no tensors at all",
      "refused: nothing to quantize", 2),
    F("missing-config", "Model content", "no `config.json`",
      "float methods convert the bare tensors (no config in the output); int8 refuses, naming config.json", 2),
    F("invalid-config", "Model content", "`config.json` that is not JSON, or not a JSON object",
      "refused, naming config.json", 2),
    F("pickle-source", "Model content", "a pickled `pytorch_model.bin` (or `.pt`) source",
      "refused without unpickling, with the conversion recipe", 2),
    # --- output and environment -----------------------------------------------------------------
    F("output-exists", "Output and environment", "the output directory already exists",
      "refused unless `--overwrite`; the old output is replaced only once the new one is complete", 2),
    F("full-disk", "Output and environment", "output of `quantize` or `pack` on a full disk (a 2 MB tmpfs)",
      "fails with one line naming the file being written and saying to free space; temp dir and lock removed; "
      "`pack` writes no `index.json` or Dockerfile, so no image looks complete", 2),
    F("read-only-output", "Output and environment", "output directory on a read-only mount",
      "fails with one line naming the directory; nothing left behind", 2),
    F("sigkill-quantize", "Output and environment", "`quantize` killed with SIGKILL mid-write",
      "no output appears; the next run removes the stale temp dir and lock (dead PID), succeeds, "
      "and `verify` passes", 0),
    F("sigkill-pack", "Output and environment", "`pack` killed with SIGKILL mid-write",
      "the next run cleans the stale temp blob, succeeds, and `verify` passes on the OCI layout", 0),
    F("ctrl-c-quantize", "Output and environment", "Ctrl-C (SIGINT) during `quantize`",
      "exit 130, one line; temp dir and lock removed, no output", 130),
    F("sigterm-quantize", "Output and environment", "SIGTERM (a CI job cancelled) during `quantize`",
      "handled like Ctrl-C: exit 130, one line; temp dir and lock removed, no output", 130),
    F("ctrl-c-pack", "Output and environment", "Ctrl-C (SIGINT) during `pack`",
      "exit 130, one line; no temp blob left; a rerun succeeds", 130),
    F("concurrent-runs", "Output and environment", "two `quantize` runs on the same output at once",
      "the second fails at once naming the lock and the PID holding it; the first completes", 2),
    # --- security ---------------------------------------------------------------------------------
    F("secret-file", "Security", "a `.env`, `*.pem`, `id_rsa`, `.git/` or token file in the model dir",
      "`pack` refuses it unless `--allow-file` names it", 2),
    F("tar-entries", "Security", "tar entries of every layer",
      "relative, normalised, under `models/<name>/`, uid/gid 0, modes 0644/0755, no links or devices", 0),
    F("no-unpickling", "Security", "a full quantize → load → pack run with `pickle.load`/`torch.load` booby-trapped",
      "nothing is unpickled", 0),
    F("dockerfile-user", "Security", "the Dockerfile stub and `.dockerignore`",
      "runs as a non-root USER; `.dockerignore` excludes caches and VCS dirs", 0),
)

_INTRO = """# Reliability: faults tried and what llmpack does

A pre-build step runs unattended in CI on files nobody checked. llmpack fails loudly and cleanly —
one line naming the file (and tensor) and the fix, a documented exit code — and never half-way:
no partial output, no temp dir, no lock left behind, and the source never modified.

This page is generated from the test suite (`tests/reliability/faults.py`); every row is one test in
`tests/reliability/`, which asserts the exit code, the one-line message, that nothing was left behind
and that the source's sha256 is unchanged. A test fails when this page and the suite disagree.
Regenerate with `.venv/bin/python tests/reliability/faults.py`.

Exit codes: 0 ok · 1 a measurement gate failed · 2 bad usage or bad input · 3 integrity failure ·
130 interrupted. Set `LLMPACK_DEBUG=1` to see the traceback behind a one-line error.

Before any tensor byte is read, `llmpack.checkpoint.validate` checks every safetensors header against
its file (length, UTF-8 JSON object, no duplicate names, known dtypes, shape × dtype = byte span,
spans sorted, non-overlapping, gap-free and ending exactly at the end of the file) and every index
(shard names relative, inside the model directory, existing).
"""

_OUTRO = """
## Properties (hypothesis)

`tests/reliability/test_properties.py` checks, on generated inputs:

{properties}

## Known limits

{limits}
"""

PROPERTIES: tuple[str, ...] = (
    "random state dicts (float64/32/16, bfloat16, float8 e4m3/e5m2, int8, uint8, int16/32/64, bool; 0-dim, empty, non-contiguous and "
    "shared-storage tensors) survive the streaming shard writer → `llmpack.open` → read bit-exactly, "
    "and every written file passes strict header validation",
    "shard-plan invariants: every tensor lands in exactly one shard, in order, and every shard stays within "
    "`max_shard_size` unless it holds a single tensor larger than the limit",
    "layer tars are byte-identical across runs, parse with Python's `tarfile` (entries relative, normalised, "
    "under the prefix, modes 0644/0755, uid/gid 0, contents equal)",
    "a packed OCI layout unpacks with `umoci` to files byte-identical to the model directory (skipped where "
    "umoci is absent)",
    "strict validation accepts every file the writer produces and rejects any single-byte change to its header "
    "length prefix that breaks it",
)

LIMITS: tuple[str, ...] = (
    "A flipped byte inside tensor *data* of a plain Hugging Face source cannot be detected while quantizing: "
    "the source carries no digests. Only llmpack outputs (`llmpack.json`) and OCI layouts are verifiable; "
    "`llmpack verify` catches it there.",
    "SIGKILL cannot be caught: a killed run leaves its temp dir (`.llmpack-tmp-<name>-*`) and lock file until "
    "the next run on the same output removes them (a lock whose PID is dead is stale). A killed `pack` leaves "
    "a `.llmpack-tmp-blob-*` temp blob that the next pack's garbage collection removes.",
    "`pack` writes into its build directory in place (that is what makes re-packing incremental): a failed or "
    "killed pack leaves the files it had finished, but never an `index.json` or `Dockerfile` pointing at "
    "missing blobs; the next pack into the same directory continues from there.",
    "A lock file whose PID was reused by an unrelated live process looks held: delete it by hand "
    "(the message says which file).",
)


def render() -> str:
    """The Markdown of ``docs/reliability.md``."""
    lines = [_INTRO]
    groups: dict[str, list[Fault]] = {}
    for f in FAULTS:
        groups.setdefault(f.group, []).append(f)
    n = 0
    for group, rows in groups.items():
        lines.append(f"## {group}\n")
        lines.append("| # | Fault | What llmpack does | Exit | Test |")
        lines.append("|---|---|---|---|---|")
        for f in rows:
            n += 1
            lines.append(f"| {n} | {f.fault} | {f.behaviour} | {f.exit_code} | `{f.test_name}` |")
        lines.append("")
    lines.append(f"**{len(FAULTS)} faults, {len(PROPERTIES)} properties.**")
    lines.append(_OUTRO.format(properties="\n".join(f"- {p}" for p in PROPERTIES),
                               limits="\n".join(f"- {x}" for x in LIMITS)))
    return "\n".join(lines).rstrip() + "\n"


def by_id(fault_id: str) -> Fault:
    """The row with ``fault_id`` (KeyError when there is none)."""
    for f in FAULTS:
        if f.id == fault_id:
            return f
    raise KeyError(fault_id)


if __name__ == "__main__":
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(render(), encoding="utf-8")
    print(f"wrote {PAGE} ({len(FAULTS)} faults)", file=sys.stderr)
