"""``ServeConfig``: every setting of ``llmpack serve`` in one frozen, validated dataclass."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from llmpack.errors import BadInputError, ConfigError

__all__ = ["ServeConfig", "SERVE_CONFIG_VERSION"]

SERVE_CONFIG_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Settings of the OpenAI-compatible server (``llmpack serve``).

    Attributes:
        model_dir: the model directory (what ``llmpack.load`` loads; int8 output included).
        host: address to bind; loopback unless told otherwise.
        port: TCP port.
        device: ``"cpu"`` or ``"cuda"``.
        served_model_name: the id clients pass as ``model`` (default: the directory's name).
        max_batch_size: most sequences decoded together in one step.
        max_wait_ms: how long an idle scheduler waits for more requests before a first prefill.
        max_queue: most requests waiting once the batch is full; one more is refused with 429 + ``Retry-After``.
        drain_timeout: seconds SIGTERM waits for in-flight requests before the process exits anyway.
        api_key: when set, ``/v1/*`` needs ``Authorization: Bearer <api_key>`` (401 otherwise).
        threads: torch intra-op threads (``None``: torch's default).
        continuous: new requests join the running batch at step boundaries; ``False`` joins at the next batch.
        default_max_tokens: ``max_tokens`` of a chat request that sets none (capped by the context).
        warmup: run a short generation before ``/ready`` turns 200.

    Example:
        >>> cfg = ServeConfig("model-int8", max_batch_size=4)
        >>> ServeConfig.from_dict(cfg.to_dict()) == cfg
        True
        >>> ServeConfig("m", max_batch_size=0)
        Traceback (most recent call last):
        ...
        llmpack.errors.ConfigError: max_batch_size must be >= 1, got 0
    """

    model_dir: str
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    served_model_name: str | None = None
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    drain_timeout: float = 30.0
    api_key: str | None = None
    threads: int | None = None
    continuous: bool = True
    default_max_tokens: int = 512
    warmup: bool = True
    version: int = SERVE_CONFIG_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_dir", str(self.model_dir))
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for name, low in (("max_batch_size", 1), ("max_queue", 1), ("default_max_tokens", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value!r}")
        if not (0 <= self.port <= 65535):
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        for name in ("max_wait_ms", "drain_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("api_key is empty: pass a non-empty key or none")
        if self.version != SERVE_CONFIG_VERSION:
            raise ConfigError(f"ServeConfig version {self.version} is not supported (this llmpack reads {SERVE_CONFIG_VERSION})")

    @property
    def model_name(self) -> str:
        """The id served in ``/v1/models`` and accepted as ``model``.

        Example:
            >>> ServeConfig("/models/smollm2-int8/").model_name
            'smollm2-int8'
        """
        return self.served_model_name or Path(self.model_dir).resolve().name or "model"

    def check_device(self) -> None:
        """Raise :class:`~llmpack.errors.BadInputError` when ``device="cuda"`` and no CUDA device is present.

        Example:
            >>> ServeConfig("m").check_device()
        """
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise BadInputError("--device cuda was asked for but no CUDA device is available; use --device cpu")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the API key is never written out: ``"***"`` when set)."""
        d = dataclasses.asdict(self)
        if d["api_key"] is not None:
            d["api_key"] = "***"
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServeConfig":
        """Inverse of :meth:`to_dict` (unknown keys are refused, naming them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown ServeConfig keys {unknown}: valid keys are {sorted(names)}")
        d = dict(data)
        if d.get("api_key") == "***":
            d["api_key"] = None
        return cls(**d)
