"""``llmpack.json``: what produced a model directory, and the sha256 + size of every file in it.

Read and written only through this module (see TEAM.md contract)::

    {"format_version": 1, "llmpack_version": "...", "created_by": "llmpack",
     "source": {"kind", "path", "fingerprint"}, "recipe": Recipe.to_dict(),
     "decisions": {name: {...}}, "files": {relpath: {"sha256", "size"}}, "extra": {}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

from llmpack._jsonfile import read_json, read_json_object
from llmpack.constants import MANIFEST_FILE, MANIFEST_FORMAT_VERSION
from llmpack.errors import BadInputError, IntegrityError

__all__ = ["Manifest", "read_manifest", "write_manifest", "hash_file", "file_entry", "read_json_object"]


def hash_file(path: "str | os.PathLike[str]", chunk: int = 8 * 1024 * 1024) -> str:
    """sha256 hex digest of a file.

    Example:
        >>> len(hash_file(__file__))
        64
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.hexdigest()


def file_entry(path: "str | os.PathLike[str]") -> dict[str, Any]:
    """``{"sha256": ..., "size": ...}`` for one file."""
    return {"sha256": hash_file(path), "size": os.path.getsize(path)}


@dataclasses.dataclass
class Manifest:
    """Contents of ``llmpack.json``.

    Example:
        >>> m = Manifest(source={"kind": "dir", "path": "/m", "fingerprint": "ab"}, recipe={"method": "bf16"})
        >>> Manifest.from_dict(m.to_dict()).recipe["method"]
        'bf16'
    """

    source: dict[str, Any]
    recipe: dict[str, Any]
    decisions: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    llmpack_version: str = ""
    format_version: int = MANIFEST_FORMAT_VERSION
    created_by: str = "llmpack"

    def __post_init__(self) -> None:
        if not self.llmpack_version:
            from llmpack._version import __version__

            self.llmpack_version = __version__

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "llmpack_version": self.llmpack_version,
            "created_by": self.created_by,
            "source": self.source,
            "recipe": self.recipe,
            "decisions": self.decisions,
            "files": {k: self.files[k] for k in sorted(self.files)},
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Manifest":
        try:
            fv = int(d.get("format_version", 0))
            if fv != MANIFEST_FORMAT_VERSION:
                raise BadInputError(
                    f"{MANIFEST_FILE} format_version {fv} is not supported (expected {MANIFEST_FORMAT_VERSION}); "
                    "upgrade llmpack or re-create the model"
                )
            files = dict(d["files"])
            for rel, e in files.items():
                if not isinstance(e, Mapping) or "sha256" not in e or "size" not in e:
                    raise IntegrityError(f"{MANIFEST_FILE}: entry for {rel} lacks sha256/size; re-create the model")
            return cls(
                source=dict(d.get("source") or {}), recipe=dict(d.get("recipe") or {}),
                decisions=dict(d.get("decisions") or {}), files=files, extra=dict(d.get("extra") or {}),
                llmpack_version=str(d.get("llmpack_version", "")), format_version=fv,
                created_by=str(d.get("created_by", "llmpack")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            if isinstance(e, BadInputError):
                raise
            raise IntegrityError(f"{MANIFEST_FILE} is malformed ({e}); re-create the model") from e

    def dumps(self) -> str:
        """Deterministic JSON text (sorted keys, 2-space indent, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def read_manifest(directory: "str | os.PathLike[str]") -> Manifest:
    """Read ``<directory>/llmpack.json``.

    Raises:
        IntegrityError: missing or malformed.

    Example:
        >>> read_manifest("model-bf16").recipe["method"]  # doctest: +SKIP
        'bf16'
    """
    data = read_json(Path(directory) / MANIFEST_FILE, error=IntegrityError, fix="re-create the model",
                     missing_fix="not an llmpack model dir (re-create it with `llmpack quantize`)")
    return Manifest.from_dict(data)


def write_manifest(directory: "str | os.PathLike[str]", manifest: Manifest, *,
                   known: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Record every file of ``directory`` (except ``llmpack.json``) and write ``llmpack.json``.

    Args:
        known: precomputed ``{relpath: {"sha256", "size"}}`` (e.g. hashed while writing shards); other files are hashed.

    Example:
        >>> write_manifest("out", Manifest(source={}, recipe={}))  # doctest: +SKIP
    """
    d = Path(directory)
    files: dict[str, dict[str, Any]] = {}
    for p in sorted(d.rglob("*")):
        if not p.is_file() or p.name == MANIFEST_FILE and p.parent == d:
            continue
        rel = p.relative_to(d).as_posix()
        k = (known or {}).get(rel)
        if k is not None and int(k["size"]) == p.stat().st_size:
            files[rel] = {"sha256": str(k["sha256"]), "size": int(k["size"])}
        else:
            files[rel] = file_entry(p)
    manifest.files = files
    out = d / MANIFEST_FILE
    out.write_text(manifest.dumps(), encoding="utf-8")
    return out
