"""llmpack.pack: deterministic OCI image layouts (one layer per shard), ModelPack artifacts and a
Dockerfile stub, plus a verifier for OCI layouts.

Example:
    >>> from llmpack.pack import pack, verify_layout
    >>> res = pack("model-int8", "build")      # doctest: +SKIP
    >>> verify_layout("build/oci").ok           # doctest: +SKIP
    True
"""

from __future__ import annotations

from llmpack._callable import make_callable
from llmpack.pack.api import LayerResult, PackResult, pack
from llmpack.pack.verify import LayoutVerifyResult, find_layout, is_oci_layout, verify_layout

make_callable(__name__, "llmpack.pack.api:pack")  # ``llmpack.pack(...)`` works whichever was imported first

__all__ = ["pack", "PackResult", "LayerResult", "verify_layout", "LayoutVerifyResult", "is_oci_layout",
           "find_layout"]
