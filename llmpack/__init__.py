"""llmpack: quantize, shard, measure and pack Hugging Face models into container-ready artifacts.

Example:
    >>> import llmpack
    >>> res = llmpack.quantize("path/to/hf-model", method="int8", out="model-int8")  # doctest: +SKIP
    >>> model = llmpack.load("model-int8")                                           # doctest: +SKIP
    >>> report = llmpack.measure("path/to/hf-model", "model-int8")                  # doctest: +SKIP
    >>> llmpack.pack("model-int8", "build/")                                         # doctest: +SKIP

The public names are imported lazily so ``import llmpack`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llmpack._version import __version__

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    "quantize": ("llmpack.pipeline", "quantize"),
    "QuantizeResult": ("llmpack.pipeline", "QuantizeResult"),
    "open": ("llmpack.runtime.load", "open_checkpoint"),
    "load": ("llmpack.runtime.load", "load"),
    "verify": ("llmpack.verify", "verify"),
    "VerifyResult": ("llmpack.verify", "VerifyResult"),
    "inspect": ("llmpack.checkpoint.inspect", "inspect"),
    "measure": ("llmpack.measure.api", "measure"),
    "Report": ("llmpack.measure.report", "Report"),
    "MeasureSettings": ("llmpack.measure.settings", "MeasureSettings"),
    "pack": ("llmpack.pack.api", "pack"),
    "PackResult": ("llmpack.pack.api", "PackResult"),
    "PackOptions": ("llmpack.pack.options", "PackOptions"),
    "build": ("llmpack.build", "build"),
    "Recipe": ("llmpack.config", "Recipe"),
    "Method": ("llmpack.config", "Method"),
    "LlmpackError": ("llmpack.errors", "LlmpackError"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'llmpack' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from llmpack.build import build
    from llmpack.checkpoint.inspect import inspect
    from llmpack.config import Method, Recipe
    from llmpack.errors import LlmpackError
    from llmpack.measure.api import measure
    from llmpack.measure.report import Report
    from llmpack.measure.settings import MeasureSettings
    from llmpack.pack.api import PackResult, pack
    from llmpack.pack.options import PackOptions
    from llmpack.pipeline import QuantizeResult, quantize
    from llmpack.runtime.load import load, open_checkpoint as open
    from llmpack.verify import VerifyResult, verify
