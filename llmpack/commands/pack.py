"""``llmpack pack``: a model directory → Dockerfile stub, build context and OCI image layout."""

from __future__ import annotations

import argparse
from typing import Any

from llmpack._output import emit

__all__ = ["register", "run"]

DESCRIPTION = """\
Pack a model directory into a container build context and an OCI image layout:

  OUT/Dockerfile     ARG BASE_IMAGE, labels, one COPY --link per shard, non-root USER, runtime block
  OUT/.dockerignore  excludes oci/, caches, VCS dirs
  OUT/model/         the model files (hard links)
  OUT/oci/           OCI image layout: one layer per weight shard + one for config/tokenizer
  OUT/deploy/        compose.yaml and Kubernetes manifests (Deployment + Service with the model as an
                     image volume, an init-container variant, a KServe InferenceService), pinned by digest

Deterministic (same input -> same manifest digest) and incremental (re-packing into the same OUT
writes only the layers that changed).

Example:
  llmpack pack ./smollm2-int8 --out build --name smollm2 --tag int8
  skopeo copy oci:build/oci:int8 docker://registry.example.com/smollm2:int8
  docker build -t smollm2:int8 build/
  llmpack pack ./smollm2-int8 --out build --runtime llmpack --registry ghcr.io/me \
      --platform linux/amd64,linux/arm64      # multi-arch model image + llmpack serve Dockerfile
"""


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``pack`` subcommand."""
    from llmpack.pack.dockerfile import RUNTIMES

    p = subparsers.add_parser("pack", help="pack a model dir into an OCI image layout + Dockerfile stub",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", metavar="DIR", help="model directory (llmpack output or HF safetensors dir)")
    p.add_argument("--out", required=True, metavar="BUILD", help="output directory (re-pack into it is incremental)")
    p.add_argument("--name", default=None, help="image name and /models/<name> (default: from DIR)")
    p.add_argument("--tag", default="latest", help="tag in oci/index.json (default: latest)")
    p.add_argument("--base-image", default=None, help="default BASE_IMAGE of the Dockerfile (default: per runtime)")
    p.add_argument("--runtime", choices=tuple(RUNTIMES), default="none",
                   help="; ".join(f"{k}: {v.description}" for k, v in RUNTIMES.items()))
    p.add_argument("--artifact", choices=("image", "modelpack"), default="image",
                   help="OCI image (default) or CNCF ModelPack artifact")
    p.add_argument("--compression", choices=("none", "gzip", "zstd"), default="none",
                   help="layer compression (default none: weights barely compress; zstd needs 'zstandard')")
    p.add_argument("--source-date-epoch", type=int, default=None, metavar="SECONDS",
                   help="mtime of every file and 'created' (default: $SOURCE_DATE_EPOCH or 0)")
    p.add_argument("--allow-file", action="append", default=[], metavar="PATH",
                   help="pack a file that looks like a secret anyway (repeatable; globs allowed)")
    p.add_argument("--platform", default="linux/amd64",
                   help="os/arch recorded in the image config; comma-separated for a multi-arch image index "
                        "(linux/amd64,linux/arm64: one manifest per platform, the same layers)")
    p.add_argument("--registry", default=None, metavar="REGISTRY",
                   help="where the image will be pushed (e.g. ghcr.io/org): deploy files reference "
                        "REGISTRY/NAME:TAG@DIGEST")
    p.add_argument("--server-image", default=None, metavar="REF@sha256:…",
                   help="serving image for deploy/k8s, pinned by digest (default: the runtime's pinned base, vllm)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty directory")
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``llmpack pack``; 0 on success."""
    from llmpack.pack.api import pack

    res = pack(args.model_dir, args.out, name=args.name, tag=args.tag, base_image=args.base_image,
               runtime=args.runtime, artifact=args.artifact, compression=args.compression,
               source_date_epoch=args.source_date_epoch, allow_files=args.allow_file,
               overwrite=args.overwrite, platform=args.platform, registry=args.registry,
               server_image=args.server_image, quiet=args.quiet or args.format == "json")
    emit(args.format, "" if args.quiet else res.summary(), res.to_dict())
    return 0
