"""``llmpack.inspect``: what a model directory holds (shards, tensors, dtypes, sizes, recipe), read from headers only."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from llmpack.checkpoint.reader import DTYPE_TO_ST, Checkpoint
from llmpack.constants import MANIFEST_FILE

__all__ = ["inspect", "format_inspect"]


def inspect(path: "str | os.PathLike[str]", *, tensors: bool = True) -> dict[str, Any]:
    """Describe a model directory without reading tensor data.

    Returns:
        ``{"path", "shards": [{"file", "size", "tensors"}], "tensors": {name: {"shape", "dtype", "nbytes", "file"}},
        "dtypes": {dtype: {"tensors", "bytes"}}, "total_bytes", "files", "recipe", "source", "config"}``.

    Example:
        >>> import llmpack
        >>> llmpack.inspect("model-bf16")["dtypes"]  # doctest: +SKIP
        {'BF16': {'tensors': 272, 'bytes': 269060736}}
    """
    d = Path(path)
    ckpt = Checkpoint(d)
    infos = ckpt.infos()
    per_file: Counter[str] = Counter(i.file.name for i in infos)
    shards = [{"file": f.name, "size": f.stat().st_size, "tensors": per_file[f.name]} for f in ckpt.files]
    dtypes: dict[str, dict[str, int]] = {}
    for i in infos:
        e = dtypes.setdefault(DTYPE_TO_ST[i.dtype], {"tensors": 0, "bytes": 0})
        e["tensors"] += 1
        e["bytes"] += i.nbytes
    out: dict[str, Any] = {
        "path": str(d),
        "shards": shards,
        "num_tensors": len(infos),
        "total_bytes": sum(i.nbytes for i in infos),
        "dtypes": dict(sorted(dtypes.items())),
        "files": {p.name: p.stat().st_size for p in sorted(ckpt.dir.iterdir()) if p.is_file()},
        "config": {k: (ckpt.config or {}).get(k) for k in ("architectures", "model_type", "dtype")
                   if (ckpt.config or {}).get(k) is not None},
        "recipe": None,
        "source": None,
    }
    if tensors:
        out["tensors"] = {i.name: {"shape": list(i.shape), "dtype": DTYPE_TO_ST[i.dtype], "nbytes": i.nbytes,
                                   "file": i.file.name} for i in sorted(infos, key=lambda x: x.name)}
    if (ckpt.dir / MANIFEST_FILE).is_file():
        from llmpack.checkpoint.manifest import read_manifest

        m = read_manifest(ckpt.dir)
        out["recipe"] = m.recipe
        out["source"] = m.source
        if m.extra.get("fp32_modules"):
            out["fp32_modules"] = m.extra["fp32_modules"]
    return out


def format_inspect(info: dict[str, Any], max_tensors: int = 20) -> str:
    """Human-readable rendering of :func:`inspect` output."""
    lines = [f"{info['path']}: {info['num_tensors']} tensors, {info['total_bytes'] / 1e6:.1f} MB in "
             f"{len(info['shards'])} shard(s)"]
    if info.get("config"):
        lines.append("config: " + ", ".join(f"{k}={v}" for k, v in info["config"].items()))
    if info.get("recipe"):
        r = info["recipe"]
        lines.append(f"recipe: method={r.get('method')} max_shard_size={r.get('max_shard_size')} ignore={r.get('ignore')}")
    if info.get("source"):
        s = info["source"]
        lines.append(f"source: {s.get('kind')} {s.get('path')} ({str(s.get('fingerprint'))[:12]})")
    lines.append("shards:")
    for s in info["shards"]:
        lines.append(f"  {s['file']:<40} {s['size'] / 1e6:>10.1f} MB {s['tensors']:>6} tensors")
    lines.append("dtypes:")
    for dt, e in info["dtypes"].items():
        lines.append(f"  {dt:<6} {e['tensors']:>6} tensors {e['bytes'] / 1e6:>10.1f} MB")
    ts = info.get("tensors") or {}
    if ts:
        lines.append(f"tensors (first {min(max_tensors, len(ts))} of {len(ts)}):")
        for name, t in list(ts.items())[:max_tensors]:
            lines.append(f"  {name:<50} {t['dtype']:<5} {str(t['shape']):<16} {t['file']}")
    return "\n".join(lines)
