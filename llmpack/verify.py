"""``llmpack.verify``: check a model directory (or an OCI layout) against what was recorded.

For a model directory: every file in ``llmpack.json`` exists with the recorded size and sha256; no
unrecorded weight file; every safetensors header parses; the index names exactly the tensors the
shards hold. A mismatch raises :class:`~llmpack.errors.IntegrityError` naming the file (CLI exit 3).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from llmpack.checkpoint.manifest import hash_file, read_manifest
from llmpack.checkpoint.reader import read_header
from llmpack.constants import MANIFEST_FILE, OCI_LAYOUT_FILE, SAFETENSORS_INDEX_FILE
from llmpack.errors import IntegrityError, SourceNotFoundError, UnsafePathError

__all__ = ["verify", "VerifyResult"]


@dataclasses.dataclass
class VerifyResult:
    """Outcome of a successful :func:`verify` (failures raise).

    Attributes:
        path: what was verified. kind: ``"model"`` or ``"oci"``. files: number of files checked.
        bytes: bytes hashed. tensors: tensors found in the shards. details: extra facts.
    """

    path: Path
    kind: str
    files: int
    bytes: int
    tensors: int = 0
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "kind": self.kind, "ok": self.ok, "files": self.files, "bytes": self.bytes,
                "tensors": self.tensors, "details": self.details}

    def summary(self) -> str:
        return f"OK {self.path}: {self.files} files, {self.bytes / 1e6:.1f} MB, {self.tensors} tensors verified"


def verify(path: "str | os.PathLike[str]", *, quiet: bool = True) -> Any:
    """Verify a model directory against ``llmpack.json`` (or an OCI layout, delegated to the pack module).

    Raises:
        IntegrityError: a file is missing, has the wrong size/digest, or the index and shards disagree.
        SourceNotFoundError: ``path`` does not exist.

    Example:
        >>> import llmpack
        >>> llmpack.verify("model-bf16").ok  # doctest: +SKIP
        True
    """
    d = Path(path)
    if not d.exists():
        raise SourceNotFoundError(f"{d} does not exist: pass a model directory or an OCI layout")
    if (d / OCI_LAYOUT_FILE).is_file():
        from llmpack.pack.verify import verify_layout

        return verify_layout(d)
    if not d.is_dir():
        raise SourceNotFoundError(f"{d} is not a directory: pass a model directory or an OCI layout")
    from llmpack._output import progress

    manifest = read_manifest(d)
    root = d.resolve()
    total = sum(int(e["size"]) for e in manifest.files.values())
    hashed = 0
    with progress(total, "verify", quiet=quiet) as bar:
        for rel, entry in sorted(manifest.files.items()):
            p = (d / rel)
            if root not in p.resolve().parents:
                raise UnsafePathError(f"{MANIFEST_FILE} lists {rel!r}, which escapes {d}")
            if not p.is_file():
                raise IntegrityError(f"{p} is missing (recorded in {MANIFEST_FILE}); re-create or re-download the model")
            size = p.stat().st_size
            if size != int(entry["size"]):
                raise IntegrityError(f"{p}: size {size} differs from the recorded {entry['size']}; the file is corrupt: "
                                     "re-download or re-quantize the model")
            digest = hash_file(p)
            if digest != entry["sha256"]:
                raise IntegrityError(f"{p}: sha256 {digest[:12]}… differs from the recorded {str(entry['sha256'])[:12]}…; "
                                     "the file is corrupt or was modified; re-download or re-quantize the model")
            hashed += size
            bar.update(size)
    recorded = set(manifest.files)
    extra_weights = sorted(p.relative_to(d).as_posix() for p in d.rglob("*.safetensors")
                           if p.relative_to(d).as_posix() not in recorded)
    if extra_weights:
        raise IntegrityError(f"{d / extra_weights[0]} is not recorded in {MANIFEST_FILE}; remove it or re-create the model")
    shards = sorted(r for r in recorded if r.endswith(".safetensors"))
    in_shards: dict[str, str] = {}
    for rel in shards:
        header, _ = read_header(d / rel)
        for name in header:
            if name == "__metadata__":
                continue
            if name in in_shards:
                raise IntegrityError(f"{d / rel}: tensor {name} also appears in {in_shards[name]}")
            in_shards[name] = rel
    index_p = d / SAFETENSORS_INDEX_FILE
    if index_p.is_file():
        try:
            weight_map = dict(json.loads(index_p.read_text(encoding="utf-8"))["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise IntegrityError(f"{index_p}: corrupt index ({e})") from e
        for name, rel in sorted(weight_map.items()):
            if in_shards.get(name) != rel:
                raise IntegrityError(f"{index_p}: tensor {name} is mapped to {rel} but "
                                     f"{'is in ' + in_shards[name] if name in in_shards else 'no shard holds it'}")
        extra = sorted(set(in_shards) - set(weight_map))
        if extra:
            raise IntegrityError(f"{d / in_shards[extra[0]]}: tensor {extra[0]} is not in {SAFETENSORS_INDEX_FILE}")
    elif len(shards) > 1:
        raise IntegrityError(f"{index_p} is missing but {d} has {len(shards)} shards")
    return VerifyResult(path=d, kind="model", files=len(recorded), bytes=hashed, tensors=len(in_shards),
                        details={"shards": shards, "method": manifest.recipe.get("method")})


from llmpack._callable import make_callable  # noqa: E402

make_callable(__name__, f"{__name__}:verify")  # ``llmpack.verify(...)`` works whichever was imported first
