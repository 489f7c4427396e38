"""Modules that are also the function they are named after.

``llmpack.measure``, ``llmpack.pack``, ``llmpack.verify`` and ``llmpack.build`` are public
functions *and* (sub)modules of the package. Python binds ``llmpack.<name>`` to the submodule the
first time the submodule is imported, so those modules forward calls to their function: the name
works the same whichever was imported first.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Any

__all__ = ["make_callable"]


class _CallableModule(types.ModuleType):
    """A module whose call runs ``self.__llmpack_target__`` = ``"module:attr"``."""

    def _target(self) -> Any:
        mod, attr = object.__getattribute__(self, "__llmpack_target__").split(":")
        return getattr(importlib.import_module(mod), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._target())

    @property
    def __wrapped__(self) -> Any:
        return self._target()


def make_callable(module_name: str, target: str) -> None:
    """Make module ``module_name`` callable, forwarding to ``target`` (``"pkg.mod:function"``).

    Example:
        >>> make_callable("llmpack.verify", "llmpack.verify:verify")  # doctest: +SKIP
    """
    mod = sys.modules[module_name]
    mod.__llmpack_target__ = target  # type: ignore[attr-defined]
    mod.__class__ = _CallableModule
