"""Errors raised by llmpack.

Every error llmpack raises on purpose derives from :class:`LlmpackError`. Each class carries the
CLI exit code it maps to (see ``docs/troubleshooting.md``): 1 a measurement gate failed, 2 bad usage or
bad input, 3 integrity failure, 130 interrupted. Messages are one line that names the file, tensor
or key at fault and says how to fix it.
"""

from __future__ import annotations

__all__ = [
    "LlmpackError",
    "BadInputError",
    "SourceNotFoundError",
    "UnsupportedFormatError",
    "ConfigError",
    "OutputExistsError",
    "OutputLockedError",
    "OutputWriteError",
    "NonFiniteWeightError",
    "Fp16OverflowError",
    "IntegrityError",
    "GateFailedError",
    "HubUnavailableError",
    "UnsafePathError",
    "SecretFileError",
    "ToolError",
    "Interrupted",
]


class LlmpackError(Exception):
    """Base class of every error llmpack raises on purpose.

    Attributes:
        exit_code: the CLI exit code for this error class.

    Example:
        >>> try:
        ...     raise BadInputError("config.json is missing in /m: pass an HF model directory")
        ... except LlmpackError as e:
        ...     e.exit_code
        2
    """

    exit_code: int = 2


class BadInputError(LlmpackError, ValueError):
    """The input (a file, an argument, a tensor) is malformed or unsupported."""


class SourceNotFoundError(BadInputError, FileNotFoundError):
    """The source model (directory, file, hub id) does not exist."""


class UnsupportedFormatError(BadInputError):
    """A file format llmpack refuses, e.g. pickled ``.bin``/``.pt`` checkpoints."""


class ConfigError(BadInputError):
    """A recipe, ``llmpack.toml`` or ``config.json`` value is invalid."""


class OutputExistsError(BadInputError, FileExistsError):
    """The output already exists and ``overwrite`` was not given."""


class OutputLockedError(LlmpackError):
    """Another llmpack process is writing the same output."""


class OutputWriteError(LlmpackError, OSError):
    """Writing the output failed (disk full, read-only, permission denied)."""


class NonFiniteWeightError(BadInputError):
    """A weight holds NaN or Inf values."""


class Fp16OverflowError(BadInputError):
    """FP16 would overflow (weights or activations beyond +-65504)."""


class ConfigMismatchError(BadInputError):
    """``config.json`` does not describe the checkpoint's tensors (a shape, a missing or an unexpected tensor)."""


class StreamUnsupported(ConfigError):
    """The model cannot be run one block at a time (no list of identical blocks, or blocks not called in order)."""


class IntegrityError(LlmpackError):
    """A file's digest, size or structure does not match what was recorded (exit 3)."""

    exit_code = 3


class GateFailedError(LlmpackError):
    """A measurement gate failed (exit 1)."""

    exit_code = 1


class HubUnavailableError(LlmpackError, ConnectionError):
    """A hub id was given but the Hugging Face Hub cannot be reached."""


class UnsafePathError(BadInputError):
    """A path inside a model (index, tokenizer, tar entry) escapes the model directory."""


class SecretFileError(BadInputError):
    """``pack`` found a file that looks like a secret and was not allowed with ``--allow-file``."""


class ToolError(LlmpackError):
    """An external tool llmpack drives failed."""


class Interrupted(LlmpackError, KeyboardInterrupt):
    """The run was interrupted (Ctrl-C); nothing half-written was left behind (exit 130)."""

    exit_code = 130
