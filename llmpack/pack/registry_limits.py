"""Registry limits every pack is checked against (GHCR, Harbor, ECR Public …).

Example:
    >>> registry_warnings([11 * 10**9], ["model-00001-of-00001.safetensors"])[0][:40]
    'layer model-00001-of-00001.safetensors i'
"""

from __future__ import annotations

from typing import Sequence

from llmpack.constants import REGISTRY_MAX_LAYER_BYTES, REGISTRY_MAX_LAYERS

__all__ = ["registry_warnings", "MAX_LAYER_BYTES", "MAX_LAYERS"]

MAX_LAYER_BYTES = REGISTRY_MAX_LAYER_BYTES
MAX_LAYERS = REGISTRY_MAX_LAYERS


def _gb(n: int) -> str:
    return f"{n / 1000**3:.1f} GB"


def registry_warnings(layer_sizes: Sequence[int], layer_names: Sequence[str], *,
                      max_layer_bytes: int = MAX_LAYER_BYTES, max_layers: int = MAX_LAYERS) -> list[str]:
    """One warning per layer above ``max_layer_bytes`` and one when there are more than ``max_layers`` layers.

    Each warning names the fix: re-shard with ``llmpack quantize --max-shard-size``.

    Example:
        >>> registry_warnings([1, 2], ["a", "b"])
        []
    """
    out: list[str] = []
    for size, name in zip(layer_sizes, layer_names):
        if size > max_layer_bytes:
            out.append(f"layer {name} is {_gb(size)}, above the {_gb(max_layer_bytes)} per-layer limit of "
                       "some registries (GHCR, Harbor, ECR Public): re-shard with "
                       "`llmpack quantize --max-shard-size 5GB` and pack again")
    if len(layer_sizes) > max_layers:
        out.append(f"the image has {len(layer_sizes)} layers, above the {max_layers}-layer limit of some "
                   "registries: re-shard with a larger `llmpack quantize --max-shard-size` and pack again")
    return out
