"""The public API: every exported name resolves, functions that share a name with a submodule stay callable."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import llmpack


def test_all_exports_resolve() -> None:
    for name in llmpack.__all__:
        assert getattr(llmpack, name) is not None, name
    assert sorted(dir(llmpack)) == sorted(llmpack.__all__)
    assert (Path(llmpack.__file__).parent / "py.typed").exists()


def test_function_names_that_are_also_modules_stay_callable() -> None:
    # Importing the submodules rebinds llmpack.<name> to the module; the module forwards calls.
    for mod in ("llmpack.measure.text", "llmpack.pack.tar", "llmpack.verify", "llmpack.build"):
        importlib.import_module(mod)
    for name, target in [("measure", "llmpack.measure.api"), ("pack", "llmpack.pack.api"),
                         ("verify", "llmpack.verify"), ("build", "llmpack.build")]:
        obj = getattr(llmpack, name)
        assert callable(obj), name
        fn = getattr(importlib.import_module(target), name)
        assert inspect.signature(obj) == inspect.signature(fn), name


def test_verify_through_the_package_after_submodule_import(tiny_dirs, tmp_path) -> None:
    import llmpack.verify  # noqa: F401  (binds llmpack.verify to the module)

    res = llmpack.quantize(tiny_dirs["llama"], method="bf16", out=tmp_path / "o", quiet=True)
    assert llmpack.verify(res.out_dir).files >= 3


def test_import_is_light() -> None:
    """`import llmpack` does not import torch (the cached `llmpack build` path depends on it)."""
    code = "import sys, llmpack; import llmpack.cli; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
