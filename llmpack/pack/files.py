"""Which files of a model directory go into the image, and which are refused.

Rules (issue 8, "Security"):

* every path is relative, normalised and stays inside the model directory; a symlink that points
  outside it is refused (:class:`~llmpack.errors.UnsafePathError`);
* files that look like secrets (``.env``, ``*.pem``, ``id_rsa*``, ``.git/``, token and credential
  files …) are refused (:class:`~llmpack.errors.SecretFileError`) unless ``allow_files`` names them;
* caches and VCS metadata (``.cache/``, ``__pycache__/``, ``.gitattributes`` …) and llmpack's own temp
  and lock files are skipped; pickle checkpoints (``*.bin``, ``*.pt`` …) are skipped with a warning.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "config.json").write_text("{}")
    >>> [f.rel for f in collect_files(d).files]
    ['config.json']
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from llmpack.constants import LOCK_SUFFIX, PICKLE_SUFFIXES, TEMP_PREFIX
from llmpack.errors import BadInputError, SecretFileError, SourceNotFoundError, UnsafePathError
from llmpack.pack.tar import normalize_relpath

__all__ = ["ModelFile", "FileSelection", "collect_files", "SECRET_PATTERNS", "is_secret", "WEIGHT_SUFFIXES"]

# Files that get a layer of their own (weights change least, so they sit at the bottom).
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".onnx")
# Any other file at least this large gets its own layer too.
LARGE_FILE_BYTES = 32 << 20
DOC_PATTERNS = ("readme*", "license*", "licence*", "notice*", "*.md")

# Matched against every path component (directories) or the file name, case-insensitively.
SECRET_DIRS = (".git", ".ssh", ".aws", ".gnupg", ".docker", ".kube", ".azure", ".config/gcloud")
SECRET_PATTERNS = (
    ".env", ".env.*", "*.env",
    "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    ".netrc", "_netrc", ".pypirc", ".npmrc", ".git-credentials", ".htpasswd",
    "token", "*.token", "token.txt", "*_token", "*_token.txt", "hf_token*", ".hf_token",
    "credentials", "credentials.json", "*credentials*.json", "service-account*.json", "secrets.*", "*.secret",
)
# Skipped silently: caches, VCS metadata, OS litter.
SKIP_DIRS = (".cache", "__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".mypy_cache", ".hg", ".svn",
             ".huggingface")
SKIP_FILES = (".gitattributes", ".gitignore", ".gitmodules", ".DS_Store", "Thumbs.db", "*.pyc", "*.lock",
              "*" + LOCK_SUFFIX, TEMP_PREFIX + "*")


@dataclass(frozen=True)
class ModelFile:
    """A file to pack.

    Attributes:
        rel: path relative to the model directory (``/``-separated, normalised).
        path: the file on disk (symlinks inside the model directory resolved).
        size: bytes.
        kind: ``"weight"`` (own layer), ``"config"`` or ``"doc"`` (both in the small layer).
    """

    rel: str
    path: Path
    size: int
    kind: str


@dataclass
class FileSelection:
    """Result of :func:`collect_files`: files to pack (sorted) and warnings about skipped files."""

    files: list[ModelFile]
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _match(name: str, patterns: Iterable[str]) -> bool:
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def is_secret(rel: str) -> bool:
    """Whether ``rel`` looks like a secret (by a directory component or the file name).

    Example:
        >>> is_secret("keys/server.pem"), is_secret(".git/config"), is_secret("tokenizer.json")
        (True, True, False)
    """
    parts = rel.split("/")
    for i in range(len(parts) - 1):
        if _match(parts[i], SECRET_DIRS) or _match("/".join(parts[: i + 1]), SECRET_DIRS):
            return True
    return _match(parts[-1], SECRET_PATTERNS)


def _allowed(rel: str, allow: Iterable[str]) -> bool:
    for a in allow:
        a = a.strip().replace(os.sep, "/").strip("/")
        if not a:
            continue
        if rel == a or rel.startswith(a + "/") or fnmatch.fnmatchcase(rel, a):
            return True
    return False


def _kind(rel: str, size: int) -> str:
    name = rel.rsplit("/", 1)[-1]
    if name.lower().endswith(WEIGHT_SUFFIXES) or size >= LARGE_FILE_BYTES:
        return "weight"
    if _match(name, DOC_PATTERNS):
        return "doc"
    return "config"


def collect_files(model_dir: str | os.PathLike[str], allow_files: Iterable[str] = (),
                  exclude: Iterable[Path] = ()) -> FileSelection:
    """Walk ``model_dir`` and decide for each file: pack, skip, or refuse.

    Args:
        model_dir: the model directory.
        allow_files: relative paths or glob patterns that may be packed even though they look like secrets.
        exclude: directories (absolute) never to enter, e.g. the pack output when it lies inside.

    Raises:
        SourceNotFoundError: ``model_dir`` is not a directory.
        SecretFileError: a secret-looking file was found and not allowed.
        UnsafePathError: a symlink points outside the model directory.
        BadInputError: a special file (FIFO, socket, device) or no file at all.

    Example:
        >>> collect_files("/nonexistent")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        SourceNotFoundError: ...
    """
    root = Path(model_dir)
    if not root.is_dir():
        raise SourceNotFoundError(f"model directory {root} does not exist or is not a directory: "
                                  "pass the directory written by `llmpack quantize` or an HF model directory")
    real_root = Path(os.path.realpath(root))
    excluded = {os.path.realpath(p) for p in exclude}
    allow = tuple(allow_files)
    files: list[ModelFile] = []
    warnings: list[str] = []
    skipped: list[str] = []
    secrets: list[str] = []
    visited: set[str] = set()

    def inside(real: str) -> bool:
        return real == str(real_root) or real.startswith(str(real_root) + os.sep)

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real_dir = os.path.realpath(dirpath)
        if real_dir in visited:
            dirnames[:] = []
            continue
        visited.add(real_dir)
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        keep_dirs = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            if real in excluded:
                continue
            if _match(d, SKIP_DIRS) and not _allowed(rel, allow):
                skipped.append(rel + "/")
                continue
            if not inside(real):
                raise UnsafePathError(f"{full} is a symlink to {real}, outside the model directory: "
                                      "copy the files into the model directory instead of linking them")
            if is_secret(rel + "/x") and not _allowed(rel, allow):
                secrets.append(rel + "/")
                continue
            keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for fname in sorted(filenames):
            rel = f"{rel_dir}/{fname}" if rel_dir else fname
            full = os.path.join(dirpath, fname)
            if _match(fname, SKIP_FILES) and not _allowed(rel, allow):
                skipped.append(rel)
                continue
            real = os.path.realpath(full)
            if not inside(real):
                raise UnsafePathError(f"{full} is a symlink to {real}, outside the model directory: "
                                      "copy the file into the model directory instead of linking it")
            if is_secret(rel) and not _allowed(rel, allow):
                secrets.append(rel)
                continue
            try:
                st = os.stat(full)
            except FileNotFoundError as e:
                raise UnsafePathError(f"{full} is a dangling symlink: remove it from the model directory") from e
            if not stat.S_ISREG(st.st_mode):
                raise BadInputError(f"{full} is not a regular file (FIFO, socket or device): remove it")
            if fname.lower().endswith(PICKLE_SUFFIXES) and not _allowed(rel, allow):
                warnings.append(f"skipped pickle file {rel}: llmpack never ships pickled checkpoints "
                                f"(pass --allow-file {rel} to pack it anyway)")
                skipped.append(rel)
                continue
            norm = normalize_relpath(rel)
            files.append(ModelFile(norm, Path(real), st.st_size, _kind(norm, st.st_size)))
    if secrets:
        shown = ", ".join(secrets[:5]) + (f" and {len(secrets) - 5} more" if len(secrets) > 5 else "")
        raise SecretFileError(f"{root} holds files that look like secrets: {shown}; remove them, or pass "
                              f"--allow-file {secrets[0].rstrip('/')} for each one you really mean to ship")
    if not files:
        raise BadInputError(f"{root} holds no files to pack: pass a model directory")
    files.sort(key=lambda f: f.rel.split("/"))
    return FileSelection(files=files, warnings=warnings, skipped=skipped)
