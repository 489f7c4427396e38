#!/usr/bin/env bash
# llmpack GPU check: fp8, int8, int8-weight-only and fp16 against bf16 on random-init checkpoints of real shapes
# (Llama-3.1-8B for prefill and memory, Llama-3.2-1B for decode and kernel agreement), generated on the machine.
# One command, < 8 minutes on one H200; JSON + Markdown into --out-dir (default $OUT). See benchmarks/gpu_check.py.
#
#   benchmarks/gpu_check.sh --out-dir "$OUT"            # on the GPU machine
#   benchmarks/gpu_check.sh --device cpu --quick        # the smoke test `make test` runs (tiny shapes)
#
# Dependencies: what the GPU image has (Python 3.12, torch with CUDA, transformers, safetensors, accelerate,
# huggingface_hub, psutil, tqdm, matplotlib, numpy). llmpack needs nothing else there: without compressed-tensors it
# writes the same quantization_config as a plain dict (tests/quant/test_fp8.py checks they are equal). Optional, to
# also validate the configs with compressed-tensors' own pydantic models on that machine: fetch these wheels
# (cp312 manylinux, 3.0 MiB in all) on a machine with network, into the git-ignored benchmarks/wheelhouse/ that
# travels with the repo, and this script installs them offline:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \
#     -d benchmarks/wheelhouse compressed-tensors==0.20.1 pydantic==2.14.4 pydantic-core==2.50.5 loguru==0.7.3 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
# (pip resolves them against what the image has: typing-extensions is installed only where the image's is older than
# pydantic's >= 4.16; a missing requirement is said and the check goes on without compressed-tensors.)
# Python: $PYTHON, else ./.venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LLMPACK_PROGRESS=0

if ! "$PY" -c "import torch, transformers, safetensors, huggingface_hub" 2>/dev/null; then
  echo "gpu_check: torch, transformers, safetensors and huggingface_hub must be importable with $PY" >&2
  exit 2
fi
if [[ -d benchmarks/wheelhouse ]] && ! "$PY" -c "import compressed_tensors" 2>/dev/null; then
  echo "[gpu_check] installing compressed-tensors from benchmarks/wheelhouse (offline)"
  "$PY" -m pip install -q --no-index --find-links benchmarks/wheelhouse compressed-tensors \
    || echo "[gpu_check] wheelhouse install failed: going on without compressed-tensors" >&2
fi
# Under 8 minutes whatever happens: the time budget (--budget-s, 400 s) skips steps that would start too late, and
# this outer limit stops a step that hangs; results are saved after every candidate.
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" benchmarks/gpu_check.py "$@"
