"""CNCF ModelPack (model-spec v1) media types and config.

Source: ``github.com/modelpack/model-spec`` ``specs-go/v1/{mediatype,annotations,config}.go``. A
ModelPack artifact is an OCI image manifest with ``artifactType`` =
``application/vnd.cncf.model.manifest.v1+json``, a config of media type
``application/vnd.cncf.model.config.v1+json`` (``descriptor``, ``modelfs.diffIds``, ``config``), and
one layer per file whose tar holds that file at its path relative to the model root, annotated with
``org.cncf.model.filepath``.

Example:
    >>> layer_media_type("weight", "none")
    'application/vnd.cncf.model.weight.v1.tar'
    >>> layer_media_type("config", "zstd")
    'application/vnd.cncf.model.weight.config.v1.tar+zstd'
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from llmpack._dtypes import short_name
from llmpack.constants import ANN_MODELPACK_FILEPATH, MT_MODELPACK_ARTIFACT, MT_MODELPACK_CONFIG

__all__ = [
    "ARTIFACT_TYPE",
    "CONFIG_MEDIA_TYPE",
    "ANN_FILEPATH",
    "ANN_FILE_METADATA",
    "layer_media_type",
    "file_metadata",
    "model_config",
    "precision_of",
]

ARTIFACT_TYPE = MT_MODELPACK_ARTIFACT
CONFIG_MEDIA_TYPE = MT_MODELPACK_CONFIG
ANN_FILEPATH = ANN_MODELPACK_FILEPATH
ANN_FILE_METADATA = "org.cncf.model.file.metadata+json"

_KIND_BASE = {
    "weight": "application/vnd.cncf.model.weight.v1.tar",
    "config": "application/vnd.cncf.model.weight.config.v1.tar",
    "doc": "application/vnd.cncf.model.doc.v1.tar",
}
_SUFFIX = {"none": "", "gzip": "+gzip", "zstd": "+zstd"}


def layer_media_type(kind: str, compression: str) -> str:
    """The ModelPack layer media type of a file ``kind`` (weight/config/doc) under ``compression``."""
    return _KIND_BASE[kind] + _SUFFIX[compression]


def file_metadata(name: str, size: int, created: str) -> str:
    """The ``org.cncf.model.file.metadata+json`` annotation: the tar header of the file as JSON."""
    return json.dumps({"name": name, "mode": 0o644, "uid": 0, "gid": 0, "size": size, "mtime": created,
                       "typeflag": ord("0")}, sort_keys=True, separators=(",", ":"))


def precision_of(hf_config: Mapping[str, Any] | None) -> tuple[str, str]:
    """(precision, quantization) from an HF ``config.json`` dict ("" when unknown).

    Example:
        >>> precision_of({"torch_dtype": "bfloat16"})
        ('bf16', '')
    """
    if not hf_config:
        return "", ""
    qcfg = hf_config.get("quantization_config")
    if isinstance(qcfg, Mapping):
        method = str(qcfg.get("quant_method", ""))
        bits = ""
        for group in (qcfg.get("config_groups") or {}).values():
            w = (group or {}).get("weights") or {}
            if w.get("num_bits"):
                bits = f"{w.get('type', 'int')}{w['num_bits']}"
                break
        return bits or "mixed", method
    dtype = hf_config.get("torch_dtype") or hf_config.get("dtype") or ""
    return short_name(str(dtype)), ""


def model_config(*, name: str, version: str, created: str, diff_ids: Sequence[str],
                 hf_config: Mapping[str, Any] | None, revision: str = "", fmt: str = "safetensors") -> dict[str, Any]:
    """The ``application/vnd.cncf.model.config.v1+json`` document.

    Example:
        >>> model_config(name="m", version="1", created="1970-01-01T00:00:00Z", diff_ids=[],
        ...              hf_config=None)["modelfs"]
        {'type': 'layers', 'diffIds': []}
    """
    precision, quantization = precision_of(hf_config)
    descriptor: dict[str, Any] = {"createdAt": created, "name": name, "title": name, "version": version}
    if hf_config and hf_config.get("model_type"):
        descriptor["family"] = str(hf_config["model_type"])
    if revision:
        descriptor["revision"] = revision
    cfg: dict[str, Any] = {"architecture": "transformer", "format": fmt}
    if precision:
        cfg["precision"] = precision
    if quantization:
        cfg["quantization"] = quantization
    return {"descriptor": descriptor, "modelfs": {"type": "layers", "diffIds": list(diff_ids)}, "config": cfg}
