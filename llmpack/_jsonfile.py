"""The one reader of JSON files: the caller names the error class and the fix, the messages are the same everywhere.

Example:
    >>> import tempfile, pathlib
    >>> from llmpack.errors import ConfigError
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "config.json"; _ = p.write_text("[1]")
    >>> read_json(p, error=ConfigError, fix="fix or re-create config.json")
    Traceback (most recent call last):
    ...
    llmpack.errors.ConfigError: ... is not a JSON object (got list); fix or re-create config.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmpack.errors import LlmpackError

__all__ = ["read_json", "read_json_object"]


def read_json(path: "str | os.PathLike[str]", *, error: type[LlmpackError], fix: str,
              missing: type[LlmpackError] | None = None, missing_fix: str | None = None,
              want_object: bool = True) -> Any:
    """The JSON document in ``path``, or ``error`` with a one-line message that names the file and ends in ``fix``.

    Args:
        path: the file (read as UTF-8).
        error: the class raised when the file cannot be read, is not JSON, or (``want_object``) not an object.
        fix: what the user should do, appended to every message.
        missing: the class raised when the file does not exist (default ``error``).
        missing_fix: the fix for a missing file (default ``fix``).
        want_object: refuse anything but a JSON object.

    Raises:
        LlmpackError: the subclass passed as ``error`` / ``missing``:
            ``<path> is missing: <fix>``, ``cannot read <path>: <reason>; <fix>``,
            ``<path> is not valid JSON (<reason>); <fix>``, ``<path> is not a JSON object (got <type>); <fix>``.

    Example:
        >>> from llmpack.errors import IntegrityError
        >>> read_json("/nonexistent/index.json", error=IntegrityError, fix="re-run `llmpack pack`")
        Traceback (most recent call last):
        ...
        llmpack.errors.IntegrityError: /nonexistent/index.json is missing: re-run `llmpack pack`
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise (missing or error)(f"{p} is missing: {missing_fix or fix}") from None
    except OSError as e:
        raise error(f"cannot read {p}: {e.strerror or e}; {fix}") from e
    except ValueError as e:  # not UTF-8
        raise error(f"{p} is not valid JSON ({e}); {fix}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise error(f"{p} is not valid JSON ({e}); {fix}") from None
    if want_object and not isinstance(data, dict):
        raise error(f"{p} is not a JSON object (got {type(data).__name__}); {fix}")
    return data


def read_json_object(path: "str | os.PathLike[str]") -> dict[str, Any] | None:
    """The JSON object stored at ``path``, or ``None`` when it is missing, unreadable or not an object.

    For files llmpack keeps for itself (caches, build records), where a damaged file is simply rebuilt.

    Example:
        >>> read_json_object("/nonexistent/config.json") is None
        True
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
