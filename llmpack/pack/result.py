"""What :func:`llmpack.pack` returns: :class:`PackResult` and its :class:`LayerResult` s.

Example:
    >>> LayerResult("sha256:ab", 10, "application/vnd.oci.image.layer.v1.tar", "sha256:ab", ("config.json",),
    ...             False).to_dict()["files"]
    ['config.json']
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["PackResult", "LayerResult"]


@dataclasses.dataclass(frozen=True)
class LayerResult:
    """One layer of the packed image.

    Attributes:
        digest: ``sha256:…`` of the blob (compressed bytes when compressed).
        size: blob size in bytes.
        media_type: the layer media type.
        diff_id: ``sha256:…`` of the uncompressed tar.
        files: model files in the layer (relative to the model directory).
        reused: the blob was already in ``oci/`` (nothing written).
    """

    digest: str
    size: int
    media_type: str
    diff_id: str
    files: tuple[str, ...]
    reused: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["files"] = list(self.files)
        return d


@dataclasses.dataclass
class PackResult:
    """What :func:`pack` produced.

    Attributes:
        name / tag: image name and tag (``ref.name`` in ``index.json``).
        artifact: ``image`` or ``modelpack``.
        manifest_digest: digest of the image manifest (what a registry reports after a push).
        config_digest: digest of the image (or ModelPack) config.
        layers: the layers, bottom first.
        out: the output directory.
        paths: ``dockerfile``, ``dockerignore``, ``context`` (model/), ``oci``, ``index``.
        bytes_written: bytes of new blobs written (incremental re-pack: only the changed layers).
        blobs_written / blobs_reused: how many blobs were new / already present.
        warnings: registry-limit and skipped-file warnings.
        seconds: wall time.
        platforms: ``os/arch`` of each image manifest (several: the tag names an OCI image index).
        notes: what was not written and why (e.g. no Kubernetes files without a pinned server image).
        deploy: deploy files written (``compose.yaml``, ``k8s/…``) -> their paths.
    """

    name: str
    tag: str
    artifact: str
    runtime: str
    compression: str
    manifest_digest: str
    config_digest: str
    layers: list[LayerResult]
    out: Path
    paths: dict[str, str]
    bytes_written: int
    blobs_written: int
    blobs_reused: int
    warnings: list[str]
    seconds: float
    platforms: list[str] = dataclasses.field(default_factory=lambda: ["linux/amd64"])
    notes: list[str] = dataclasses.field(default_factory=list)
    deploy: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def reference(self) -> str:
        """``name:tag``."""
        return f"{self.name}:{self.tag}"

    @property
    def total_size(self) -> int:
        """Sum of the layer sizes."""
        return sum(layer.size for layer in self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``--format json`` output of ``llmpack pack``).

        Example:
            >>> sorted(PackResult.__dataclass_fields__)[:3]
            ['artifact', 'blobs_reused', 'blobs_written']
        """
        return {
            "name": self.name,
            "tag": self.tag,
            "reference": self.reference,
            "artifact": self.artifact,
            "runtime": self.runtime,
            "compression": self.compression,
            "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest,
            "layers": [layer.to_dict() for layer in self.layers],
            "total_size": self.total_size,
            "out": str(self.out),
            "paths": dict(self.paths),
            "bytes_written": self.bytes_written,
            "blobs_written": self.blobs_written,
            "blobs_reused": self.blobs_reused,
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
            "platforms": list(self.platforms),
            "notes": list(self.notes),
            "deploy": dict(self.deploy),
        }

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"packed {self.reference} ({self.artifact}) into {self.out}",
            f"  manifest {self.manifest_digest}",
            f"  {len(self.layers)} layers, {self.total_size / 1e6:.1f} MB; wrote {self.bytes_written / 1e6:.1f} MB "
            f"({self.blobs_written} new blobs, {self.blobs_reused} reused) in {self.seconds:.1f} s",
        ]
        for layer in self.layers:
            files = ", ".join(layer.files[:3]) + (f" +{len(layer.files) - 3}" if len(layer.files) > 3 else "")
            lines.append(f"  {layer.digest[:19]}  {layer.size:>14,d}  {files}")
        lines.append(f"  Dockerfile: {self.paths['dockerfile']}   OCI layout: {self.paths['oci']}:{self.tag}")
        if self.deploy:
            lines.append(f"  deploy files: {', '.join(self.deploy)} in {Path(next(iter(self.deploy.values()))).parent}")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.extend(f"warning: {w}" for w in self.warnings)
        return "\n".join(lines)
