"""The build context and its bookkeeping for :func:`llmpack.pack.pack`: the output lock, the output folder check,
the hard-linked ``model/`` mirror, and the layer cache that lets a re-pack skip unchanged shards.

Example:
    >>> _cache_key("p", [], "gzip", 0, "t") == _cache_key("p", [], "gzip", 0, "t")
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any, Sequence

from llmpack._atomic import atomic_path
from llmpack._lock import file_lock
from llmpack._jsonfile import read_json_object
from llmpack.constants import MODELS_ROOT, MT_OCI_LAYER_GZIP, MT_OCI_LAYER_TAR, MT_OCI_LAYER_ZSTD, OCI_LAYOUT_FILE
from llmpack.errors import BadInputError, OutputExistsError, OutputWriteError
from llmpack.pack import modelpack
from llmpack.pack.files import ModelFile

CACHE_FILE = ".llmpack-pack-cache.json"
LOCK_FILE = ".llmpack-pack.lock"
_CACHE_VERSION = 1
_LAYER_MT = {"none": MT_OCI_LAYER_TAR, "gzip": MT_OCI_LAYER_GZIP, "zstd": MT_OCI_LAYER_ZSTD}


def pack_lock(out: Path) -> "contextlib.AbstractContextManager[None]":
    """The pack lock on ``out/.llmpack-pack.lock`` (:func:`llmpack._atomic.file_lock`; the file is kept, so an
    interrupted or killed pack's folder is still recognised as a pack output)."""
    return file_lock(out / LOCK_FILE, keep=True, fix="check the output directory",
                     busy=lambda pid: f"another llmpack pack is writing {out}: wait for it to finish or choose another --out")


def _is_pack_output(out: Path) -> bool:
    # the lock file is created first and kept: an interrupted or killed pack is still a pack output
    return (out / LOCK_FILE).is_file() or (out / CACHE_FILE).is_file() or ((out / "oci" / OCI_LAYOUT_FILE).is_file() and (out / "Dockerfile").is_file())


def _prepare_out(model_dir: Path, out: Path, overwrite: bool) -> None:
    real_model = os.path.realpath(model_dir)
    real_out = os.path.realpath(out)
    if real_out == real_model or real_out.startswith(real_model + os.sep):
        raise BadInputError(f"output {out} is inside the model directory {model_dir}: choose an --out elsewhere")
    if real_model.startswith(real_out + os.sep):
        raise BadInputError(f"the model directory {model_dir} is inside the output {out}: choose another --out")
    if out.exists():
        if not out.is_dir():
            raise OutputExistsError(f"output {out} exists and is not a directory: remove it or choose another --out")
        if any(out.iterdir()) and not _is_pack_output(out) and not overwrite:
            raise OutputExistsError(f"output {out} exists and is not an llmpack pack output: choose an empty "
                                    "--out, or pass --overwrite to write into it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputWriteError(f"cannot create {out}: {e.strerror}; check the path and permissions") from e


# --------------------------------------------------------------------------------------------
# build context: model/ as hard links

def _same_content_copy(src_st: os.stat_result, dst: Path) -> bool:
    try:
        st = dst.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if (st.st_dev, st.st_ino) == (src_st.st_dev, src_st.st_ino):
        return True
    return st.st_size == src_st.st_size and st.st_mtime_ns == src_st.st_mtime_ns


def _sync_context(files: Sequence[ModelFile], ctx: Path) -> int:
    """Mirror ``files`` into ``ctx`` (hard links; copies only where linking fails); returns bytes copied.

    Hard links share the user's file mode; the Dockerfile's ``COPY --chmod=0644`` fixes it in the image.
    """
    copied = 0
    ctx.mkdir(parents=True, exist_ok=True)
    os.chmod(ctx, 0o755)
    wanted: set[str] = set()
    for f in files:
        dst = ctx / f.rel
        wanted.add(f.rel)
        for parent in reversed(dst.relative_to(ctx).parents):
            if str(parent) != ".":
                p = ctx / parent
                if p.is_symlink() or (p.exists() and not p.is_dir()):
                    p.unlink()
                p.mkdir(exist_ok=True)
                os.chmod(p, 0o755)
        src_st = os.stat(f.path)
        if _same_content_copy(src_st, dst):
            continue
        with atomic_path(dst) as tmp:
            try:
                os.link(f.path, tmp)
                linked = True
            except OSError:  # another file system, or links not permitted
                linked = False
            if not linked:
                try:
                    shutil.copyfile(f.path, tmp)
                    os.chmod(tmp, 0o644)
                    os.utime(tmp, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
                except OSError as e:
                    raise OutputWriteError(f"cannot copy {f.path} to {dst}: {e.strerror}; free space or check "
                                           "permissions") from e
                copied += f.size
    # drop files a previous pack left behind
    for dirpath, dirnames, filenames in os.walk(ctx, topdown=False):
        for fn in filenames:
            p = Path(dirpath) / fn
            if p.relative_to(ctx).as_posix() not in wanted:
                p.unlink()
        if Path(dirpath) != ctx and not any(Path(dirpath).iterdir()):
            Path(dirpath).rmdir()
    return copied


# --------------------------------------------------------------------------------------------
# layer cache (stat-based, like git's index)

def _cache_key(prefix: str, files: Sequence[ModelFile], compression: str, mtime: int, media_type: str) -> str:
    return json.dumps([_CACHE_VERSION, prefix, compression, mtime, media_type,
                       [[f.rel, f.size] for f in files]], separators=(",", ":"))


def _stats(files: Sequence[ModelFile]) -> list[list[int]]:
    out = []
    for f in files:
        st = os.stat(f.path)
        out.append([st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns])
    return out


def _load_cache(out: Path) -> dict[str, Any]:
    data = read_json_object(out / CACHE_FILE)
    if not data or data.get("version") != _CACHE_VERSION or not isinstance(data.get("layers"), dict):
        return {}
    return dict(data["layers"])


# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _LayerPlan:
    files: tuple[ModelFile, ...]
    kind: str
    media_type: str
    prefix: str
    annotations: dict[str, str] | None


def _plan_layers(files: Sequence[ModelFile], *, artifact: str, name: str, compression: str,
                 created: str) -> list[_LayerPlan]:
    weights = [f for f in files if f.kind == "weight"]
    small = [f for f in files if f.kind != "weight"]
    plans: list[_LayerPlan] = []
    if artifact == "image":
        prefix = f"{MODELS_ROOT.strip('/')}/{name}"
        mt = _LAYER_MT[compression]
        for w in weights:
            plans.append(_LayerPlan((w,), "weight", mt, prefix, None))
        if small:
            plans.append(_LayerPlan(tuple(small), "config", mt, prefix, None))
        return plans
    for f in [*weights, *small]:
        ann = {
            modelpack.ANN_FILEPATH: f.rel,
            modelpack.ANN_FILE_METADATA: modelpack.file_metadata(f.rel.rsplit("/", 1)[-1], f.size, created),
        }
        plans.append(_LayerPlan((f,), f.kind, modelpack.layer_media_type(f.kind, compression), "", ann))
    return plans
