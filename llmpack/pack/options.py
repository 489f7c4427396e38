"""How :func:`llmpack.pack` packs: :class:`PackOptions` (frozen, validated, versioned like
:class:`llmpack.Recipe`) and the checks and conversions of each option.

``pack(model_dir, out, options=PackOptions(tag="int8"))`` is the same call as ``pack(model_dir, out, tag="int8")``.
A bad option raises :class:`~llmpack.errors.BadInputError` (CLI exit 2) naming it, before anything is read.

Example:
    >>> o = PackOptions(name="smollm2", tag="int8", platform="linux/amd64,linux/arm64", allow_files=["*.key"])
    >>> o.reference, o.allow_files, len(platforms(o.platform))
    ('smollm2:int8', ('*.key',), 2)
    >>> PackOptions.from_dict(o.to_dict()) == o
    True
"""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from llmpack.config import settings_from_keywords
from llmpack._env import source_date_epoch as env_source_date_epoch
from llmpack.errors import BadInputError, ConfigError

__all__ = ["PackOptions", "PACK_OPTIONS_VERSION", "ARTIFACTS", "default_name", "check_name", "epoch", "rfc3339",
           "platforms"]

PACK_OPTIONS_VERSION = 1
ARTIFACTS = ("image", "modelpack")
_NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    """``name`` when it is a valid image name (lower-case letters, digits, single ``._-`` between them).

    Raises:
        BadInputError: otherwise, with an example of a valid one.

    Example:
        >>> check_name("smollm2-int8")
        'smollm2-int8'
    """
    if not isinstance(name, str) or not _NAME_RE.match(name) or len(name) > 128:
        raise BadInputError(f"invalid image name {name!r}: use lower-case letters, digits and single . _ - "
                            "between them, e.g. --name smollm2-int8")
    return name


@dataclasses.dataclass(frozen=True)
class PackOptions:
    """Everything :func:`llmpack.pack` takes besides the model directory and ``out`` (see its docstring).

    Args:
        name: image name (``None``: from the model directory's name). tag: the tag in ``index.json``.
        base_image: the Dockerfile's default ``BASE_IMAGE``. runtime: ``none`` or ``vllm``.
        artifact: ``image`` or ``modelpack``. compression: ``none``, ``gzip`` or ``zstd``.
        source_date_epoch: tar mtimes and ``created`` (``None``: ``$SOURCE_DATE_EPOCH`` or 0).
        allow_files: secret-looking files that may be packed anyway (kept as a tuple).
        overwrite: write into a non-empty directory that is not a pack output.
        platform: ``os/arch[/variant]``, several comma-separated. registry: where the image will be pushed.
        server_image: the serving image of the deploy files, pinned by digest. quiet: no progress bar.
        version: the options schema version.

    Raises:
        BadInputError: an invalid option, in one line naming it (CLI exit 2).
        ConfigError: an unsupported ``version``.

    Example:
        >>> PackOptions(tag="-bad")
        Traceback (most recent call last):
        ...
        llmpack.errors.BadInputError: invalid tag '-bad': use letters, digits, '_', '.', '-' (max 128, not starting with '.' or '-')
    """

    name: str | None = None
    tag: str = "latest"
    base_image: str | None = None
    runtime: str = "none"
    artifact: str = "image"
    compression: str = "none"
    source_date_epoch: int | None = None
    allow_files: tuple[str, ...] = ()
    overwrite: bool = False
    platform: str = "linux/amd64"
    registry: str | None = None
    server_image: str | None = None
    quiet: bool = False
    version: int = PACK_OPTIONS_VERSION

    def __post_init__(self) -> None:
        from llmpack.pack.dockerfile import runtime_spec
        from llmpack.pack.oci import COMPRESSIONS

        if self.version != PACK_OPTIONS_VERSION:
            raise ConfigError(f"pack options version {self.version!r} is not supported: this llmpack reads "
                              f"version {PACK_OPTIONS_VERSION}")
        runtime_spec(self.runtime)
        if self.artifact not in ARTIFACTS:
            raise BadInputError(f"unknown artifact {self.artifact!r}: choose one of {', '.join(ARTIFACTS)}")
        if self.compression not in COMPRESSIONS:
            raise BadInputError(f"unknown compression {self.compression!r}: choose one of {', '.join(COMPRESSIONS)}")
        if self.name is not None:
            check_name(self.name)
        if not isinstance(self.tag, str) or not _TAG_RE.match(self.tag):
            raise BadInputError(f"invalid tag {self.tag!r}: use letters, digits, '_', '.', '-' (max 128, not starting "
                                "with '.' or '-')")
        plats = platforms(self.platform)
        if len(plats) > 1 and self.artifact != "image":
            raise BadInputError(f"a multi-platform index needs artifact 'image', not {self.artifact!r}: pack one "
                                "platform")
        if self.registry is not None and (not self.registry.strip("/") or any(c.isspace() for c in self.registry)):
            raise BadInputError(f"invalid registry {self.registry!r}: e.g. ghcr.io/my-org or localhost:5000")
        if self.server_image is not None:
            from llmpack.pack.deploy import is_pinned

            if not is_pinned(self.server_image):
                raise BadInputError(f"server image {self.server_image!r} is not pinned by digest: use "
                                    "REPOSITORY[:TAG]@sha256:<digest> (`skopeo inspect docker://IMAGE` prints it)")
        if self.source_date_epoch is not None:
            epoch(self.source_date_epoch)
        files = (self.allow_files,) if isinstance(self.allow_files, str) else self.allow_files
        object.__setattr__(self, "allow_files", tuple(str(f) for f in files))

    @property
    def reference(self) -> str:
        """``name:tag`` (``name`` may still be ``None`` here: then it comes from the model directory)."""
        return f"{self.name}:{self.tag}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict`.

        Example:
            >>> PackOptions(allow_files=("a.pem",)).to_dict()["allow_files"]
            ['a.pem']
        """
        d = dataclasses.asdict(self)
        d["allow_files"] = list(self.allow_files)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PackOptions":
        """Rebuild options from :meth:`to_dict` output; unknown keys are refused (:class:`ConfigError`)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown pack options {sorted(unknown)}: valid keys are {sorted(names)}")
        return cls(**dict(d))

    @classmethod
    def from_keywords(cls, options: "PackOptions | None", **keywords: Any) -> "PackOptions":
        """``options``, or the options the keyword arguments of :func:`llmpack.pack` spell.

        Raises:
            ConfigError: ``options`` together with a keyword that differs from its default.

        Example:
            >>> PackOptions.from_keywords(None, tag="int8").tag
            'int8'
        """
        return settings_from_keywords(cls, options, keywords, arg="options")


def default_name(model_dir: str | os.PathLike[str]) -> str:
    """An image name from the directory name: lower case, ``[a-z0-9._-]``.

    Example:
        >>> default_name("/m/SmolLM2-135M_Instruct")
        'smollm2-135m_instruct'
    """
    base = Path(os.path.abspath(model_dir)).name.lower()
    base = re.sub(r"[^a-z0-9._-]+", "-", base)
    base = re.sub(r"[._-]{2,}", "-", base).strip("._-")
    return base or "model"


def epoch(source_date_epoch: int | None) -> int:
    """``source_date_epoch``, else ``$SOURCE_DATE_EPOCH``, else 0: the mtime of every tar entry.

    Example:
        >>> epoch(1700000000)
        1700000000
    """
    if source_date_epoch is None:
        source_date_epoch = env_source_date_epoch()
        if source_date_epoch is None:
            return 0
    if not 0 <= int(source_date_epoch) < 8**11:
        raise BadInputError(f"source_date_epoch {source_date_epoch} out of range: use seconds since 1970 (>= 0)")
    return int(source_date_epoch)


def rfc3339(epoch: int) -> str:
    """Seconds since 1970 as an RFC 3339 UTC time (the image's ``created``).

    Example:
        >>> rfc3339(0)
        '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _platform(platform: str) -> dict[str, str]:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise BadInputError(f"platform {platform!r} is not os/arch[/variant]: e.g. linux/amd64")
    d = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        d["variant"] = parts[2]
    return d


def platforms(platform: str) -> list[dict[str, str]]:
    """``"linux/amd64,linux/arm64"`` -> platform dicts (one image manifest each, in an image index).

    Example:
        >>> platforms("linux/arm64/v8")
        [{'os': 'linux', 'architecture': 'arm64', 'variant': 'v8'}]
    """
    names = [x.strip() for x in platform.split(",") if x.strip()]
    if not names:
        raise BadInputError(f"platform {platform!r} is empty: e.g. linux/amd64 or linux/amd64,linux/arm64")
    if len(set(names)) != len(names):
        raise BadInputError(f"platform {platform!r} names a platform twice")
    return [_platform(x) for x in names]
