"""Dockerfile stub and ``.dockerignore`` for the build context ``<out>/``.

The stub mirrors the OCI layout: one ``COPY --link`` per weight shard (each becomes its own cached
layer, independent of the base image), then one ``COPY`` for the small files. The runtime part comes
from :data:`RUNTIMES`, one entry per runtime, so adding a runtime is adding one entry.

``COPY --link`` needs BuildKit (Docker 23+, or ``DOCKER_BUILDKIT=1``) or Buildah >= 1.32; older
Buildah/Podman reject the flag (drop ``--link`` there: the layers are the same, only the cache reuse
across base images is lost).

Example:
    >>> text = render_dockerfile("m", ["model.safetensors"], ["config.json"], runtime="none")
    >>> "COPY --link --chmod=0644 model/model.safetensors /models/m/model.safetensors" in text
    True
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

from llmpack._env import ENV_MODEL
from llmpack.constants import MODELS_ROOT
from llmpack.errors import BadInputError

__all__ = ["Runtime", "RUNTIMES", "NONROOT_USER", "VLLM_IMAGE", "VLLM_CPU_IMAGE", "PYTHON_IMAGE", "HEALTH_PATH",
           "READY_PATH", "render_dockerfile", "render_dockerignore", "runtime_spec"]

NONROOT_USER = "65532:65532"


VLLM_IMAGE = "vllm/vllm-openai:v0.11.0@sha256:014a95f21c9edf6abe0aea6b07353f96baa4ec291c427bb1176dc7c93a85845c"
"""vLLM's CUDA server image, pinned by digest (check: ``skopeo inspect docker://vllm/vllm-openai:v0.11.0``)."""
VLLM_CPU_IMAGE = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.11.0"
"""vLLM's CPU release image (pin it with ``--base-image …@sha256:…``: its digest differs per release push)."""
PYTHON_IMAGE = "python:3.11-slim-bookworm"
"""The ``llmpack`` runtime's base: any Debian-like image with ``python3`` (pin it with ``--base-image …@sha256:…``)."""
VENV = "/opt/llmpack"
HEALTH_PATH = "/health"
READY_PATH = "/ready"

# The health probe runs inside the container: python is in every runtime image (curl is not).
_HEALTHCHECK = ("HEALTHCHECK --interval=30s --timeout=5s --start-period={start_period}s --retries=3 "
                "CMD [\"{python}\", \"-c\", \"import urllib.request; "
                "urllib.request.urlopen('http://127.0.0.1:{port}" + HEALTH_PATH + "', timeout=4)\"]")


@dataclass(frozen=True)
class Runtime:
    """How the image runs the model.

    Attributes:
        name: the ``--runtime`` value.
        base_image: default ``BASE_IMAGE`` (pinned by digest where llmpack knows the digest).
        description: one line for ``--help`` and the image description label.
        lines: Dockerfile lines after the model is copied; ``{model_path}``, ``{name}``, ``{port}`` and
            ``{healthcheck}`` are substituted.
        port: the port the server listens on (0: none).
        build_stage: Dockerfile lines of a build stage before the final ``FROM`` (multi-stage builds).
        args: the server's arguments (``{model_path}``, ``{name}``, ``{port}``): the image's ``CMD`` and the
            container args of the deploy files.
        command: the server command before ``args`` where the image's entrypoint does not run it.
        gpu: the runtime needs an NVIDIA GPU (compose reservation, ``nvidia.com/gpu`` limit).
        server_is_base: the base image is the server (vLLM), so deploy files can run the pinned base
            with the model mounted from the data-only image.
        start_period: seconds the health check waits for the model to load.
        python: the interpreter that runs the health probe inside the image.
    """

    name: str
    base_image: str
    description: str
    lines: tuple[str, ...] = ()
    port: int = 0
    build_stage: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    command: tuple[str, ...] = ()
    gpu: bool = False
    server_is_base: bool = False
    start_period: int = 120
    python: str = "python3"

    def server_args(self, model_path: str, name: str) -> list[str]:
        """The server arguments for a model at ``model_path``.

        Example:
            >>> RUNTIMES["vllm"].server_args("/models/m", "m")[:3]
            ['/models/m', '--served-model-name', 'm']
        """
        return [a.format(model_path=model_path, name=name, port=self.port) for a in self.args]


_SERVE_LINES = (
    "EXPOSE {port}",
    "{healthcheck}",
    "STOPSIGNAL SIGTERM",
)
_VLLM_ARGS = ("{model_path}", "--served-model-name", "{name}", "--host", "0.0.0.0", "--port", "{port}")
_VLLM_LINES = (
    # Non-root without a passwd entry: give Python a user name and a writable home.
    "ENV HOME=/tmp USER=llmpack HF_HOME=/tmp/hf",
    *_SERVE_LINES,
    # The image's entrypoint is `vllm serve`: pass only its arguments.
    "CMD {args_json}",
)

RUNTIMES: dict[str, Runtime] = {
    "none": Runtime(
        name="none",
        base_image="scratch",
        description="data-only image (Kubernetes image volume, init container, or FROM in another build)",
    ),
    "llmpack": Runtime(
        name="llmpack",
        base_image=PYTHON_IMAGE,
        description="llmpack serve on CPU (OpenAI-compatible; int8 native kernels compiled in a build stage)",
        build_stage=(
            "# Build stage: a venv with llmpack and CPU torch, and the native int8 kernels compiled here, so the",
            "# runtime stage needs no compiler. Offline: put wheels in wheels/ and pass --build-arg PIP_ARGS=--no-index.",
            "FROM ${BASE_IMAGE} AS build",
            'ARG LLMPACK_SPEC="llmpack[serve]=={version}"',
            'ARG TORCH_SPEC="torch"',
            "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu",
            'ARG PIP_ARGS=""',
            'SHELL ["/bin/sh", "-eu", "-c"]',
            "# hadolint ignore=DL3008",
            "RUN if command -v apt-get >/dev/null; then apt-get update \\",
            "      && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*; fi",
            "COPY wheels/ /tmp/wheels/",
            "# hadolint ignore=SC2086",
            f"RUN python3 -m venv {VENV} \\",
            f"    && {VENV}/bin/pip install --no-cache-dir $PIP_ARGS --find-links /tmp/wheels \\",
            '         --extra-index-url "$TORCH_INDEX" "$TORCH_SPEC" "$LLMPACK_SPEC"',
            f"ENV LLMPACK_CACHE={VENV}/cache",
            f"RUN {VENV}/bin/python -W ignore::RuntimeWarning -m llmpack.runtime.kernels.native --build \\",
            f"    && chmod -R a+rX {VENV}",
            "",
        ),
        lines=(
            f"COPY --from=build --link {VENV} {VENV}",
            f"ENV PATH={VENV}/bin:/usr/local/bin:/usr/bin:/bin LLMPACK_CACHE={VENV}/cache HOME=/tmp PYTHONUNBUFFERED=1",
            *_SERVE_LINES,
            "CMD {command_json}",
        ),
        port=8000,
        args=("{model_path}", "--host", "0.0.0.0", "--port", "{port}"),
        command=("llmpack", "serve"),
        python=f"{VENV}/bin/python",
    ),
    "vllm": Runtime(
        name="vllm",
        base_image=VLLM_IMAGE,
        description="vLLM on CUDA: vllm serve of the model path (float and INT8 checkpoints), OpenAI-compatible",
        lines=_VLLM_LINES,
        port=8000,
        args=_VLLM_ARGS,
        gpu=True,
        server_is_base=True,
        start_period=600,
    ),
    "vllm-cpu": Runtime(
        name="vllm-cpu",
        base_image=VLLM_CPU_IMAGE,
        description="vLLM's CPU build: vllm serve of the model path (x86 AVX512 / arm64), OpenAI-compatible",
        lines=_VLLM_LINES,
        port=8000,
        args=_VLLM_ARGS,
        server_is_base=True,
        start_period=600,
    ),
}


def runtime_spec(runtime: str) -> Runtime:
    """The :class:`Runtime` named ``runtime``; an unknown name lists the valid ones.

    Example:
        >>> runtime_spec("vllm").port
        8000
    """
    try:
        return RUNTIMES[runtime]
    except KeyError:
        raise BadInputError(f"unknown runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}") from None


_PLAIN = re.compile(r"^[A-Za-z0-9._/+@=:,-]+$")


def _copy(sources: Sequence[str], dest: str) -> str:
    # --chmod: the context holds hard links to the user's files, whatever their mode (often 0600).
    flags = "COPY --link --chmod=0644 "
    if all(_PLAIN.match(s) for s in (*sources, dest)):
        return flags + " ".join((*sources, dest))
    return flags + json.dumps([*sources, dest])


def _label_value(v: str) -> str:
    return json.dumps(v)


def render_dockerfile(name: str, weight_files: Sequence[str], small_files: Sequence[str], *, runtime: str = "none",
                      base_image: str | None = None, labels: Mapping[str, str] | None = None) -> str:
    """The Dockerfile stub for model ``name`` (files relative to ``<out>/model/``).

    Args:
        name: model name; files land in ``/models/<name>/``.
        weight_files: files that each get their own ``COPY`` (and layer), in layer order.
        small_files: config, tokenizer, ``llmpack.json`` …: copied together.
        runtime: a key of :data:`RUNTIMES` (``none``, ``llmpack``, ``vllm``, ``vllm-cpu``).
        base_image: default of ``ARG BASE_IMAGE`` (the runtime's pinned image when ``None``).
        labels: OCI labels (``org.opencontainers.image.*``).

    Example:
        >>> "ARG BASE_IMAGE=scratch" in render_dockerfile("m", [], ["config.json"])
        True
    """
    rt = runtime_spec(runtime)
    base = base_image or rt.base_image
    model_path = f"{MODELS_ROOT}/{name}"
    out = [
        "# Generated by `llmpack pack`: one layer per weight shard, then one for config and tokenizer.",
        f"# Build: docker build -t {name}:latest .   (runtime: {rt.name} - {rt.description})",
        f"ARG BASE_IMAGE={base}",
        "",
    ]
    if rt.build_stage:
        from llmpack._version import __version__

        out.extend(line.replace("{version}", __version__) for line in rt.build_stage)
    out.extend(["FROM ${BASE_IMAGE}", ""])
    if labels:
        items = sorted(labels.items())
        out.append("LABEL " + " \\\n      ".join(f"{k}={_label_value(v)}" for k, v in items))
    out.append(f"ENV {ENV_MODEL}={model_path}")
    out.append("")
    for rel in weight_files:
        out.append(_copy([f"model/{rel}"], f"{model_path}/{rel}"))
    # small files grouped by directory: files only, so --chmod never touches a directory
    by_dir: dict[str, list[str]] = {}
    for r in small_files:
        by_dir.setdefault(r.rsplit("/", 1)[0] if "/" in r else "", []).append(r)
    for d in sorted(by_dir, key=lambda x: x.split("/")):
        dest = f"{model_path}/{d}/" if d else f"{model_path}/"
        out.append(_copy([f"model/{r}" for r in by_dir[d]], dest))
    out.append("")
    out.append(f"USER {NONROOT_USER}")
    out.append(f"WORKDIR {model_path}")
    args = rt.server_args(model_path, name)
    fields = {"model_path": model_path, "name": name, "port": rt.port, "args_json": json.dumps(args),
              "command_json": json.dumps([*rt.command, *args]),
              "healthcheck": _HEALTHCHECK.format(start_period=rt.start_period, python=rt.python, port=rt.port)}
    for line in rt.lines:
        out.append(line.format(**fields))
    return "\n".join(out).rstrip("\n") + "\n"


DOCKERIGNORE = """\
# Generated by `llmpack pack`: only model/ is part of the image.
oci/
.llmpack*
**/.git
**/.hg
**/.svn
**/.cache
**/__pycache__
**/*.pyc
**/.ipynb_checkpoints
**/.DS_Store
**/.env
**/*.pem
**/id_rsa*
"""


def render_dockerignore() -> str:
    """The ``.dockerignore`` of the build context: excludes ``oci/``, caches, VCS dirs and secrets.

    Example:
        >>> "oci/" in render_dockerignore().splitlines()
        True
    """
    return DOCKERIGNORE
