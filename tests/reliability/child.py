"""Run ``llmpack <argv>`` but pause mid-write, so a test can SIGKILL / SIGINT it at a known point.

Environment: ``LLMPACK_TEST_MARKER`` (file created when the pause point is reached),
``LLMPACK_TEST_PAUSE`` (``shard``: after the first tensor written into a shard; ``blob``: after the first
bytes of a layer blob), ``LLMPACK_TEST_GO`` (optional: resume once this file exists; else wait forever).
The library itself is not modified: the pause is a monkeypatch in this child process only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

MARKER = Path(os.environ["LLMPACK_TEST_MARKER"])
GO = os.environ.get("LLMPACK_TEST_GO")


def _pause() -> None:
    if MARKER.exists():
        return
    MARKER.write_text(str(os.getpid()))
    while GO is None or not Path(GO).exists():
        time.sleep(0.02)


def _wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        r = fn(*args, **kwargs)
        _pause()
        return r
    return wrapper


def main() -> int:
    where = os.environ.get("LLMPACK_TEST_PAUSE", "shard")
    if where == "shard":
        from llmpack.checkpoint import writer

        writer.ShardWriter.write = _wrap(writer.ShardWriter.write)  # type: ignore[method-assign]
    else:
        from llmpack.pack import oci

        oci._TempBlob.write = _wrap(oci._TempBlob.write)  # type: ignore[method-assign]
    from llmpack.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
