"""Pack throughput vs ``sha256sum`` on the same files, and the no-change re-pack time.

Synthesizes a model dir of random safetensors shards (default 2.2 GB in 4 shards, under /tmp),
then in the same run:

1. ``sha256sum`` over every file (the reference: one read + one hash per byte);
2. ``llmpack.pack`` into a fresh output (read + hash + write of every byte);
3. ``llmpack.pack`` again into the same output with nothing changed (layer cache + existing blobs);

and prints MB/s, the ratio pack/sha256sum (target >= 0.7) and re-pack/first (target < 5 %).

Usage:
    python benchmarks/pack_throughput.py [--gb 2.2] [--shards 4] [--keep] [--json]

Example:
    $ python benchmarks/pack_throughput.py --gb 2
    sha256sum   2000 MB in 12.5 s = 160 MB/s
    ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _write_shard(path: Path, nbytes: int, name: str) -> None:
    header = json.dumps({"__metadata__": {"format": "pt"},
                         name: {"dtype": "U8", "shape": [nbytes], "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    chunk = os.urandom(8 << 20)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        left = nbytes
        while left:
            n = min(left, len(chunk))
            f.write(memoryview(chunk)[:n])
            left -= n


def synthesize(root: Path, total_bytes: int, shards: int) -> Path:
    """A model dir with ``shards`` safetensors files of random bytes, an index and a config."""
    d = root / "model"
    d.mkdir(parents=True)
    per = total_bytes // shards
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        _write_shard(d / fname, per, f"w{i}")
        weight_map[f"w{i}"] = fname
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": per * shards}, "weight_map": weight_map}, indent=2))
    (d / "config.json").write_text(json.dumps({"model_type": "synthetic", "torch_dtype": "uint8"}))
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=2.2, help="model size in GB (default 2.2)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--tmp", default=None, help="work directory (default: a new dir in /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the synthesized model and output")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    args = ap.parse_args(argv)

    try:
        from llmpack.pack import pack
    except ModuleNotFoundError:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from llmpack.pack import pack

    work = Path(tempfile.mkdtemp(prefix="llmpack-bench-", dir=args.tmp))
    try:
        model = synthesize(work, int(args.gb * 1e9), args.shards)
        files = sorted(str(p) for p in model.iterdir())
        nbytes = sum(os.path.getsize(p) for p in files)
        subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)  # same page-cache state for both

        t = time.perf_counter()
        subprocess.run(["sha256sum", *files], stdout=subprocess.DEVNULL, check=True)
        t_sha = time.perf_counter() - t

        out = work / "build"
        t = time.perf_counter()
        first = pack(model, out, quiet=True)
        t_pack = time.perf_counter() - t

        t = time.perf_counter()
        again = pack(model, out, quiet=True)
        t_repack = time.perf_counter() - t

        res = {
            "bytes": nbytes,
            "sha256sum_s": round(t_sha, 3),
            "sha256sum_MBps": round(nbytes / t_sha / 1e6, 1),
            "pack_s": round(t_pack, 3),
            "pack_MBps": round(nbytes / t_pack / 1e6, 1),
            "pack_vs_sha256sum": round(t_sha / t_pack, 3),
            "repack_s": round(t_repack, 4),
            "repack_fraction": round(t_repack / t_pack, 4),
            "repack_bytes_written": again.bytes_written,
            "manifest_digest": first.manifest_digest,
            "same_digest_on_repack": first.manifest_digest == again.manifest_digest,
            "python": sys.version.split()[0],
        }
        if args.json:
            print(json.dumps(res, indent=2))
        else:
            mb = nbytes / 1e6
            print(f"model        {mb:,.0f} MB in {args.shards} shards ({model})")
            print(f"sha256sum    {t_sha:6.2f} s = {res['sha256sum_MBps']:,.0f} MB/s")
            print(f"pack         {t_pack:6.2f} s = {res['pack_MBps']:,.0f} MB/s  "
                  f"-> {res['pack_vs_sha256sum']:.2f}x sha256sum (target >= 0.7x)")
            print(f"re-pack      {t_repack:6.3f} s = {100 * res['repack_fraction']:.2f}% of the first pack "
                  f"(target < 5%), {again.bytes_written} bytes written")
            print(f"manifest     {first.manifest_digest} (re-pack same: {res['same_digest_on_repack']})")
        ok = res["pack_vs_sha256sum"] >= 0.7 and res["repack_fraction"] < 0.05 and res["same_digest_on_repack"]
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
