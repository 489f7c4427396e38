"""OCI image layout writer: content-addressed blobs, canonical JSON, ``index.json``.

A blob is hashed while it is written (one pass), into a temp file inside ``blobs/sha256``; its size
is checked, then it is renamed into place under its digest. A blob that already exists is never
rewritten (the temp file is dropped), so re-packing an unchanged shard costs no writes.

Example:
    >>> import tempfile, pathlib
    >>> store = BlobStore(pathlib.Path(tempfile.mkdtemp()) / "oci")
    >>> d = store.put_bytes(b"{}")
    >>> d.digest
    'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a'
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from llmpack._atomic import atomic_write, temp_path, write_all
from llmpack._jsonfile import read_json_object
from llmpack.constants import (
    ANN_REF_NAME,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    OCI_INDEX_FILE,
    OCI_LAYOUT_FILE,
    OCI_LAYOUT_VERSION,
    TEMP_PREFIX,
)
from llmpack.errors import BadInputError, IntegrityError, OutputWriteError
from llmpack.pack.tar import TarMember, write_tar

__all__ = [
    "Descriptor",
    "BlobStore",
    "LayerBlob",
    "canonical_json",
    "write_layer",
    "COMPRESSIONS",
    "DIGEST_RE",
]

COMPRESSIONS = ("none", "gzip", "zstd")
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_LEGACY_TMP_PREFIX = ".tmp-"  # temp blobs of earlier llmpack versions (still removed by gc)
_PARSED_TYPES = (MT_OCI_INDEX, MT_OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json",
                 "application/vnd.docker.distribution.manifest.list.v2+json")
_FILE_MODE = 0o644
_FIX = "check the output directory"
_DIR_MODE = 0o755


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the same object always gives the same bytes.

    Example:
        >>> canonical_json({"b": 1, "a": [1, 2]})
        b'{"a":[1,2],"b":1}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (media type, digest, size, optional annotations)."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in a manifest or index."""
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.artifact_type:
            d["artifactType"] = self.artifact_type
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return d


@dataclass(frozen=True)
class LayerBlob:
    """What writing a layer produced: the compressed blob's digest/size and the uncompressed diff_id."""

    digest: str
    size: int
    diff_id: str
    written: bool


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, _DIR_MODE)


class _TempBlob:
    """A temp file in ``blobs/sha256`` that hashes everything written to it."""

    def __init__(self, blob_dir: Path) -> None:
        self.path = temp_path(blob_dir / "blob")
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        except OSError as e:
            raise OutputWriteError(f"cannot write blobs in {blob_dir}: {e.strerror}; check the output directory") from e
        os.fchmod(self.fd, _FILE_MODE)
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: memoryview | bytes) -> int:
        mv = memoryview(data)
        self.sha.update(mv)
        try:
            write_all(self.fd, mv)
        except OSError as e:
            raise OutputWriteError(f"writing {self.path} failed: {e.strerror}; free space and pack again") from e
        self.size += len(mv)
        return len(mv)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class BlobStore:
    """An OCI image layout directory: ``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``.

    Attributes:
        root: the layout directory.
        bytes_written: bytes of new blobs renamed into place by this store.
        blobs_written / blobs_reused: counts of new and already present blobs.

    Example:
        >>> import tempfile, pathlib
        >>> s = BlobStore(pathlib.Path(tempfile.mkdtemp()))
        >>> s.put_bytes(b"x").size
        1
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blob_dir = self.root / "blobs" / "sha256"
        _mkdir(self.root)
        _mkdir(self.root / "blobs")
        _mkdir(self.blob_dir)
        self.bytes_written = 0
        self.blobs_written = 0
        self.blobs_reused = 0

    def path(self, digest: str) -> Path:
        """The file of blob ``digest``."""
        if not DIGEST_RE.match(digest):
            raise BadInputError(f"invalid digest {digest!r}: expected sha256:<64 hex>")
        return self.blob_dir / digest.split(":", 1)[1]

    def has(self, digest: str, size: int) -> bool:
        """Whether the blob exists with the expected size (contents are checked by ``verify``)."""
        try:
            return self.path(digest).stat().st_size == size
        except FileNotFoundError:
            return False

    def _commit(self, tmp: _TempBlob, expected_size: int | None = None) -> tuple[str, bool]:
        tmp.close()
        digest = "sha256:" + tmp.sha.hexdigest()
        if expected_size is not None and tmp.size != expected_size:
            tmp.discard()
            raise IntegrityError(f"blob {digest} has {tmp.size} bytes, expected {expected_size}: "
                                 "the input changed while packing; pack again")
        actual = os.stat(tmp.path).st_size
        if actual != tmp.size:
            tmp.discard()
            raise OutputWriteError(f"blob {digest}: {actual} bytes on disk, {tmp.size} written; check the disk")
        final = self.path(digest)
        if self.has(digest, tmp.size):
            tmp.discard()
            self.blobs_reused += 1
            return digest, False
        os.replace(tmp.path, final)
        self.bytes_written += tmp.size
        self.blobs_written += 1
        return digest, True

    def put_bytes(self, data: bytes, media_type: str = "application/octet-stream",
                  annotations: dict[str, str] | None = None) -> Descriptor:
        """Store a small blob (JSON config, manifest) and return its descriptor."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.has(digest, len(data)):
            self.blobs_reused += 1
            return Descriptor(media_type, digest, len(data), annotations)
        tmp = _TempBlob(self.blob_dir)
        try:
            tmp.write(data)
            digest, _ = self._commit(tmp, len(data))
        except BaseException:
            tmp.discard()
            raise
        return Descriptor(media_type, digest, len(data), annotations)

    def put_json(self, obj: Any, media_type: str, annotations: dict[str, str] | None = None) -> Descriptor:
        """Store ``obj`` as canonical JSON."""
        return self.put_bytes(canonical_json(obj), media_type, annotations)

    def write_layout_file(self) -> None:
        """Write ``oci-layout`` (``{"imageLayoutVersion": "1.0.0"}``)."""
        atomic_write(self.root / OCI_LAYOUT_FILE, canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}), fix=_FIX)

    def write_index(self, manifests: Sequence[Descriptor]) -> bytes:
        """Write ``index.json`` listing ``manifests`` (atomically); returns its bytes."""
        data = canonical_json({
            "schemaVersion": 2,
            "mediaType": MT_OCI_INDEX,
            "manifests": [m.to_json() for m in manifests],
        })
        atomic_write(self.root / OCI_INDEX_FILE, data, fix=_FIX)
        return data

    def read_index_manifests(self) -> list[dict[str, Any]]:
        """The ``manifests`` of an existing ``index.json`` ([] when there is none or it is unreadable)."""
        manifests = (read_json_object(self.root / OCI_INDEX_FILE) or {}).get("manifests")
        return [m for m in manifests if isinstance(m, dict)] if isinstance(manifests, list) else []

    def referenced(self) -> set[str]:
        """Digests reachable from ``index.json`` (manifests, configs, layers, nested indexes).

        Only manifests and indexes are parsed (by media type); layers are never read.
        """
        seen: set[str] = set()
        todo = [(m.get("digest", ""), m.get("mediaType", "")) for m in self.read_index_manifests()]
        while todo:
            digest, media_type = todo.pop()
            if digest in seen or not DIGEST_RE.match(str(digest)):
                continue
            seen.add(digest)
            if media_type not in _PARSED_TYPES:
                continue
            doc = read_json_object(self.path(digest))
            if doc is None:
                continue
            for key in ("manifests", "layers", "blobs"):
                for d in doc.get(key) or []:
                    if isinstance(d, dict):
                        todo.append((d.get("digest", ""), d.get("mediaType", "")))
            for key in ("config", "subject"):
                if isinstance(doc.get(key), dict):
                    todo.append((doc[key].get("digest", ""), doc[key].get("mediaType", "")))
        return seen

    def gc(self) -> list[str]:
        """Remove blobs and stale temp files that ``index.json`` does not reference; returns removed names."""
        keep = {d.split(":", 1)[1] for d in self.referenced()}
        removed = []
        for p in sorted(self.blob_dir.iterdir()):
            if p.name not in keep and (p.name.startswith((TEMP_PREFIX, _LEGACY_TMP_PREFIX)) or re.fullmatch(r"[0-9a-f]{64}", p.name)):
                p.unlink()
                removed.append(p.name)
        return removed


def _zstd_module() -> Any:
    try:
        import zstandard  # type: ignore[import-not-found]
    except ImportError as e:
        raise BadInputError("compression 'zstd' needs the 'zstandard' package: pip install zstandard "
                            "(or use --compression none|gzip)") from e
    return zstandard


def write_layer(store: BlobStore, members: Sequence[TarMember], *, mtime: int, compression: str = "none",
                expected_tar_size: int | None = None,
                on_progress: Callable[[int], object] | None = None) -> LayerBlob:
    """Stream the tar of ``members`` into a new blob, hashing on the way; returns digest, size and diff_id.

    With ``compression="none"`` the blob is the tar and ``digest == diff_id``. gzip uses mtime 0 and no
    file name in its header; zstd uses level 3, one thread, no content size: both are deterministic.

    Example:
        >>> import tempfile, pathlib
        >>> s = BlobStore(pathlib.Path(tempfile.mkdtemp()))
        >>> b = write_layer(s, [], mtime=0)
        >>> b.digest == b.diff_id, b.size
        (True, 1024)
    """
    if compression not in COMPRESSIONS:
        raise BadInputError(f"unknown compression {compression!r}: choose one of {', '.join(COMPRESSIONS)}")
    zstd = _zstd_module() if compression == "zstd" else None
    tmp = _TempBlob(store.blob_dir)
    try:
        if compression == "none":
            tar_bytes = write_tar(members, tmp.write, mtime=mtime, on_progress=on_progress)
            diff_id = "sha256:" + tmp.sha.hexdigest()
        else:
            diff = hashlib.sha256()
            if compression == "gzip":
                comp: Any = gzip.GzipFile(filename="", mode="wb", fileobj=tmp, compresslevel=6, mtime=0)  # type: ignore[arg-type]
            else:
                comp = zstd.ZstdCompressor(level=3, threads=0, write_content_size=False,
                                           write_checksum=False).stream_writer(tmp, closefd=False)

            def sink(b: memoryview) -> None:
                diff.update(b)
                comp.write(b)

            tar_bytes = write_tar(members, sink, mtime=mtime, on_progress=on_progress)
            if compression == "gzip":
                comp.close()
            else:
                comp.flush(zstd.FLUSH_FRAME)
            diff_id = "sha256:" + diff.hexdigest()
        if expected_tar_size is not None and tar_bytes != expected_tar_size:
            raise IntegrityError(f"layer tar has {tar_bytes} bytes, expected {expected_tar_size}: "
                                 "the input changed while packing; pack again")
        digest, written = store._commit(tmp)
    except BaseException:
        tmp.discard()
        raise
    return LayerBlob(digest=digest, size=os.stat(store.path(digest)).st_size, diff_id=diff_id, written=written)


def ref_annotations(tag: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Index-entry annotations: the tag in ``org.opencontainers.image.ref.name``."""
    ann = {ANN_REF_NAME: tag}
    if extra:
        ann.update(extra)
    return ann
