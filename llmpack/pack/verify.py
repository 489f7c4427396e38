"""Verify an OCI image layout: the layout file, the index, every blob's digest and size, every diff_id.

``llmpack.verify(path)`` delegates here when ``path`` is an OCI layout (a directory with
``oci-layout``, or a pack output whose ``oci/`` holds one).

Checks, in order:

1. ``oci-layout`` exists and declares ``imageLayoutVersion`` 1.0.0;
2. ``index.json`` is valid and every descriptor it lists resolves (nested indexes too);
3. every file in ``blobs/sha256`` hashes to its name (one streaming pass; compressed layers are
   decompressed in the same pass to get their diff_id);
4. every descriptor's size matches its blob; manifests parse; the config's ``rootfs.diff_ids`` (or a
   ModelPack config's ``modelfs.diffIds``) has one entry per layer and each equals the sha256 of the
   uncompressed layer tar.

The first mismatch raises :class:`~llmpack.errors.IntegrityError` naming the blob (CLI exit 3).

Example:
    >>> res = verify_layout("build/oci")  # doctest: +SKIP
    >>> res.ok, res.blobs                 # doctest: +SKIP
    (True, 7)
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import re
import zlib
from pathlib import Path
from typing import Any, Callable

from llmpack._jsonfile import read_json
from llmpack.constants import (
    MT_MODELPACK_CONFIG,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    OCI_INDEX_FILE,
    OCI_LAYOUT_FILE,
    OCI_LAYOUT_VERSION,
)
from llmpack.errors import IntegrityError, SourceNotFoundError

__all__ = ["verify_layout", "LayoutVerifyResult", "is_oci_layout", "find_layout"]

_HEX = re.compile(r"^[0-9a-f]{64}$")
_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_BUF = 8 << 20


@dataclasses.dataclass
class LayoutVerifyResult:
    """Outcome of :func:`verify_layout` (only returned when everything checked out).

    Attributes:
        path: the layout directory.
        ok: always ``True`` (a failure raises).
        tags: ``ref.name`` annotations found in ``index.json``.
        manifests: manifest digests checked.
        blobs: number of blobs hashed.
        bytes: bytes hashed.
        diff_ids: number of layer diff_ids checked.
    """

    path: Path
    ok: bool
    tags: list[str]
    manifests: list[str]
    blobs: int
    bytes: int
    diff_ids: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["path"] = str(self.path)
        return d


def is_oci_layout(path: str | Path) -> bool:
    """Whether ``path`` (or ``path/oci``) is an OCI image layout directory.

    Example:
        >>> is_oci_layout("/nonexistent")
        False
    """
    return find_layout(path) is not None


def find_layout(path: str | Path) -> Path | None:
    """``path`` if it holds ``oci-layout``, else ``path/oci`` if that does, else ``None``."""
    p = Path(path)
    for cand in (p, p / "oci"):
        if (cand / OCI_LAYOUT_FILE).is_file():
            return cand
    return None


def _load_json(path: Path, what: str) -> Any:
    return read_json(path, error=IntegrityError, fix=f"{what}; re-run `llmpack pack`", want_object=False)


class _Hasher:
    """Hashes each blob file once; a layer's diff_id is computed in the same pass."""

    def __init__(self, blob_dir: Path) -> None:
        self.blob_dir = blob_dir
        self.digests: dict[str, str] = {}  # hex name -> actual sha256 hex
        self.diff_ids: dict[str, str] = {}
        self.bytes = 0

    def file_digest(self, name: str, media_type: str = "") -> str:
        want_diff = media_type.endswith(("+gzip", "+zstd"))
        if name in self.digests and (not want_diff or name in self.diff_ids):
            return self.digests[name]
        path = self.blob_dir / name
        sha = hashlib.sha256()
        diff = hashlib.sha256() if want_diff else None
        feed: Callable[[bytes], None] | None = None
        finish: Callable[[], None] | None = None
        if diff is not None and media_type.endswith("+gzip"):
            dec = zlib.decompressobj(16 + zlib.MAX_WBITS)

            def feed(b: bytes) -> None:
                diff.update(dec.decompress(b))

            def finish() -> None:
                diff.update(dec.flush())
        elif diff is not None:
            try:
                import zstandard  # type: ignore[import-not-found]
            except ImportError:
                raise IntegrityError(f"blob sha256:{name} is zstd-compressed: install 'zstandard' to check "
                                     "its diff_id (pip install zstandard)") from None
            zobj = zstandard.ZstdDecompressor().decompressobj()

            def feed(b: bytes) -> None:
                diff.update(zobj.decompress(b))

        buf = bytearray(_BUF)
        view = memoryview(buf)
        try:
            with open(path, "rb", buffering=0) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    sha.update(view[:n])
                    self.bytes += n
                    if feed is not None:
                        feed(bytes(view[:n]))
            if finish is not None:
                finish()
        except FileNotFoundError:
            raise IntegrityError(f"blob sha256:{name} is missing from {self.blob_dir}: re-run `llmpack pack`") from None
        except (zlib.error, EOFError, gzip.BadGzipFile) as e:
            raise IntegrityError(f"blob sha256:{name} is not valid {media_type} ({e}): re-run `llmpack pack`") from None
        except Exception as e:  # zstandard.ZstdError
            if type(e).__name__ == "ZstdError":
                raise IntegrityError(f"blob sha256:{name} is not valid zstd ({e}): re-run `llmpack pack`") from None
            raise
        self.digests[name] = sha.hexdigest()
        if diff is not None:
            self.diff_ids[name] = diff.hexdigest()
        return self.digests[name]

    def diff_id(self, name: str, media_type: str) -> str:
        if media_type.endswith(("+gzip", "+zstd")):
            self.file_digest(name, media_type)
            return self.diff_ids[name]
        return self.file_digest(name)


def _check_descriptor(d: Any, where: str) -> tuple[str, str, int]:
    if not isinstance(d, dict):
        raise IntegrityError(f"{where}: descriptor is not an object; re-run `llmpack pack`")
    digest, size, mt = d.get("digest"), d.get("size"), d.get("mediaType", "")
    if not isinstance(digest, str) or not digest.startswith("sha256:") or not _HEX.match(digest[7:]):
        raise IntegrityError(f"{where}: invalid digest {digest!r} (only sha256 is supported); re-run `llmpack pack`")
    if not isinstance(size, int) or size < 0:
        raise IntegrityError(f"{where}: descriptor of {digest} has invalid size {size!r}; re-run `llmpack pack`")
    return digest[7:], str(mt), size


def verify_layout(path: str | Path) -> LayoutVerifyResult:
    """Check an OCI image layout completely (see the module docstring).

    Args:
        path: the layout directory, or a pack output directory containing ``oci/``.

    Returns:
        A :class:`LayoutVerifyResult` with counts.

    Raises:
        SourceNotFoundError: ``path`` holds no OCI layout (exit 2).
        IntegrityError: a digest, size, diff_id or structure mismatch, naming the blob (exit 3).

    Example:
        >>> verify_layout("build/oci").ok  # doctest: +SKIP
        True
    """
    root = find_layout(path)
    if root is None:
        raise SourceNotFoundError(f"{path} is not an OCI image layout (no oci-layout file): pass the "
                                  "`oci/` directory written by `llmpack pack`")
    layout = _load_json(root / OCI_LAYOUT_FILE, "the OCI layout marker")
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != OCI_LAYOUT_VERSION:
        raise IntegrityError(f"{root / OCI_LAYOUT_FILE}: imageLayoutVersion is not {OCI_LAYOUT_VERSION}; "
                             "re-run `llmpack pack`")
    blob_dir = root / "blobs" / "sha256"
    if not blob_dir.is_dir():
        raise IntegrityError(f"{blob_dir} is missing: re-run `llmpack pack`")
    hasher = _Hasher(blob_dir)

    def blob(hexd: str, size: int, mt: str, where: str) -> Path:
        p = blob_dir / hexd
        if not p.is_file():
            raise IntegrityError(f"blob sha256:{hexd} ({where}) is missing from {blob_dir}: re-run `llmpack pack`")
        actual_size = p.stat().st_size
        if actual_size != size:
            raise IntegrityError(f"blob sha256:{hexd} ({where}) has {actual_size} bytes, the descriptor says "
                                 f"{size}: the layout is corrupt; re-run `llmpack pack`")
        got = hasher.file_digest(hexd, mt)
        if got != hexd:
            raise IntegrityError(f"blob sha256:{hexd} ({where}) hashes to sha256:{got}: the blob is corrupt; "
                                 "re-run `llmpack pack`")
        return p

    index = _load_json(root / OCI_INDEX_FILE, "the OCI index")
    if not isinstance(index, dict) or index.get("schemaVersion") != 2 or not isinstance(index.get("manifests"), list):
        raise IntegrityError(f"{root / OCI_INDEX_FILE} is not an OCI index (schemaVersion 2 with manifests); "
                             "re-run `llmpack pack`")
    tags: list[str] = []
    manifests: list[str] = []
    n_diff = 0
    todo: list[tuple[Any, str]] = [(d, f"index.json manifests[{i}]") for i, d in enumerate(index["manifests"])]
    for d, _ in todo:
        ref = (d.get("annotations") or {}).get("org.opencontainers.image.ref.name") if isinstance(d, dict) else None
        if ref:
            tags.append(str(ref))
    seen: set[str] = set()
    while todo:
        d, where = todo.pop(0)
        hexd, mt, size = _check_descriptor(d, where)
        if hexd in seen:
            continue
        seen.add(hexd)
        p = blob(hexd, size, mt, where)
        if mt in (MT_OCI_INDEX, _DOCKER_LIST):
            sub = _load_json(p, f"nested index sha256:{hexd}")
            for i, dd in enumerate((sub.get("manifests") or []) if isinstance(sub, dict) else []):
                todo.append((dd, f"index sha256:{hexd[:12]} manifests[{i}]"))
            continue
        if mt not in (MT_OCI_MANIFEST, _DOCKER_MANIFEST):
            continue
        manifests.append("sha256:" + hexd)
        man = _load_json(p, f"manifest sha256:{hexd}")
        if not isinstance(man, dict) or man.get("schemaVersion") != 2:
            raise IntegrityError(f"manifest sha256:{hexd} is not a schemaVersion 2 manifest; re-run `llmpack pack`")
        if man.get("mediaType", mt) != mt:
            raise IntegrityError(f"manifest sha256:{hexd} says mediaType {man.get('mediaType')!r}, the index says "
                                 f"{mt!r}; re-run `llmpack pack`")
        chex, cmt, csize = _check_descriptor(man.get("config"), f"manifest sha256:{hexd[:12]} config")
        cpath = blob(chex, csize, cmt, f"config of manifest sha256:{hexd[:12]}")
        layers = man.get("layers")
        if not isinstance(layers, list):
            raise IntegrityError(f"manifest sha256:{hexd} has no layers list; re-run `llmpack pack`")
        layer_info = []
        for i, ld in enumerate(layers):
            lhex, lmt, lsize = _check_descriptor(ld, f"manifest sha256:{hexd[:12]} layers[{i}]")
            blob(lhex, lsize, lmt, f"layer {i} of manifest sha256:{hexd[:12]}")
            layer_info.append((lhex, lmt))
        cfg = _load_json(cpath, f"config sha256:{chex}")
        diff_ids: Any = None
        if cmt == MT_MODELPACK_CONFIG:
            diff_ids = ((cfg.get("modelfs") or {}) if isinstance(cfg, dict) else {}).get("diffIds")
        elif isinstance(cfg, dict) and isinstance(cfg.get("rootfs"), dict):
            diff_ids = cfg["rootfs"].get("diff_ids")
        if diff_ids is None:
            continue  # an artifact whose config carries no diff_ids: digests and sizes were checked
        if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_info):
            raise IntegrityError(f"config sha256:{chex} lists {len(diff_ids) if isinstance(diff_ids, list) else 0} "
                                 f"diff_ids for {len(layer_info)} layers; re-run `llmpack pack`")
        for i, ((lhex, lmt), want) in enumerate(zip(layer_info, diff_ids)):
            got = "sha256:" + hasher.diff_id(lhex, lmt)
            if got != want:
                raise IntegrityError(f"layer {i} (blob sha256:{lhex}) uncompresses to {got}, but config "
                                     f"sha256:{chex[:12]} records diff_id {want}: the blob or config is corrupt; "
                                     "re-run `llmpack pack`")
            n_diff += 1
    # blobs nothing references must still hash to their names
    for p in sorted(blob_dir.iterdir()):
        if _HEX.match(p.name) and p.name not in hasher.digests:
            got = hasher.file_digest(p.name)
            if got != p.name:
                raise IntegrityError(f"blob sha256:{p.name} (unreferenced) hashes to sha256:{got}: the blob is "
                                     "corrupt; delete it or re-run `llmpack pack`")
    return LayoutVerifyResult(path=root, ok=True, tags=tags, manifests=manifests, blobs=len(hasher.digests),
                              bytes=hasher.bytes, diff_ids=n_diff)
