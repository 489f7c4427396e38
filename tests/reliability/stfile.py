"""Hand-made safetensors files for the fault battery: exact bytes, so any header can be forged.

Imported as ``stfile`` (pytest puts this directory on ``sys.path``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

ST_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The raw little-endian bytes of ``t`` (any dtype, any layout)."""
    t = t.detach().contiguous()
    if t.numel() == 0:
        return b""
    return torch.empty(t.shape, dtype=t.dtype).copy_(t).reshape(-1).view(torch.uint8).numpy().tobytes()


def header_and_data(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
                    ) -> tuple[dict[str, Any], bytes]:
    """A safetensors header dict and the data section for ``tensors`` (laid out in the given order)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    data = b""
    for name, t in tensors.items():
        b = tensor_bytes(t)
        header[name] = {"dtype": ST_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    return header, data


def assemble(header_text: "str | bytes", data: bytes, *, length: int | None = None) -> bytes:
    """8-byte length + header + data; ``length`` forges the length prefix."""
    raw = header_text.encode("utf-8") if isinstance(header_text, str) else header_text
    n = len(raw) if length is None else length
    return n.to_bytes(8, "little") + raw + data


def write_st(path: Path, tensors: Mapping[str, torch.Tensor], *,
             patch: Callable[[dict[str, Any]], Any] | None = None,
             text: Callable[[str], str] | None = None, length: int | None = None,
             data: Callable[[bytes], bytes] | None = None) -> Path:
    """Write a safetensors file; ``patch`` edits the header dict, ``text`` its JSON text, ``data`` the bytes."""
    header, body = header_and_data(tensors)
    if patch is not None:
        patch(header)
    s = json.dumps(header)
    if text is not None:
        s = text(s)
    if data is not None:
        body = data(body)
    path.write_bytes(assemble(s, body, length=length))
    return path


def sha_tree(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root`` (symlinks as their target text)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + str(p.readlink())
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
