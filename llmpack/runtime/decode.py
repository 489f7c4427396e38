"""Compiled decoding: a static KV cache and one ``torch.compile``'d forward per new token, on CPU as on CUDA.

An eager decode step of a small model is mostly Python: transformers' per-layer code, a growing KV cache
concatenated every step, and one dispatch per tensor operation. With a :class:`transformers.StaticCache` the
shapes of a decode step never change, so the step compiles once (per batch size) and inductor fuses the float
work around llmpack's int8 kernels (which stay opaque calls). ``generate`` then prefills eagerly and decodes
through the compiled forward -- transformers' own auto-compile path, switched on for every device.

What it costs: the first ``generate`` call compiles (tens of seconds on a 2-core CPU; again for a new batch size
or cache length); attention runs over the whole static cache length (``max_cache_len``, by default the prompt
plus ``max_new_tokens``); weights must not be replaced afterwards (module guards are skipped, see
:func:`compile_options`). Measured figures: ``benchmarks/decode_cpu.py`` and the README.

Example:
    >>> from llmpack.testing import tiny_model
    >>> m = enable_compiled_decode(tiny_model("llama"))
    >>> m.generation_config.cache_implementation
    'static'
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["compile_options", "decode_compile_config", "enable_compiled_decode", "compiled_forward", "decode_sdpa",
           "ATTENTION"]


def compile_options() -> dict[str, Any] | None:
    """Inductor options for the decode step: skip the guards on module attributes where this PyTorch can
    (a decode step of a 30-layer model otherwise checks hundreds of parameters before every token).

    Example:
        >>> opts = compile_options()
        >>> opts is None or callable(opts["guard_filter_fn"])
        True
    """
    skip = getattr(torch.compiler, "skip_guard_on_all_nn_modules_unsafe", None)
    return None if skip is None else {"guard_filter_fn": skip}


def decode_compile_config() -> Any:
    """transformers' ``CompileConfig`` for llmpack's compiled decode: static shapes, inductor, no CUDA graphs
    (``mode="default"``; ``reduce-overhead`` would capture CUDA graphs on GPUs), on every device.

    Example:
        >>> decode_compile_config().dynamic
        False
    """
    from transformers import CompileConfig

    options = compile_options()
    # (torch.compile takes a mode or options, not both; mode=None is inductor's default mode)
    cfg = CompileConfig(fullgraph=False, dynamic=False, backend="inductor", mode=None if options else "default",  # type: ignore[arg-type]
                        options=options)
    cfg._compile_all_devices = True  # transformers compiles on CUDA only unless told
    return cfg


def enable_compiled_decode(model: nn.Module) -> nn.Module:
    """Make ``model.generate`` decode through a static cache and a compiled forward (see the module's notes).
    int8 layers are prepared first (:func:`~llmpack.runtime.prepare.prepare_int8`). Returns ``model``.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> enable_compiled_decode(tiny_model("llama")).generation_config.compile_config.dynamic
        False
    """
    from llmpack.runtime.prepare import prepare_int8

    prepare_int8(model)
    gc = getattr(model, "generation_config", None)
    if gc is None:
        raise TypeError(f"{type(model).__name__} has no generation_config: compiled decoding is for causal LMs")
    _use_decode_sdpa(model)
    gc.cache_implementation = "static"
    gc.compile_config = decode_compile_config()
    gc.disable_compile = False
    # transformers would compile ``model.__call__``, whose code object every model shares; with the module
    # guards skipped, a second model of the same class could then run the first one's graph. A forward with a
    # code object of its own keeps dynamo's graphs (cached per code object) per model.
    model._compiled_call = torch.compile(_own_forward(model), **gc.compile_config.to_dict())  # type: ignore[assignment]
    model._last_compile_config = gc.compile_config  # so get_compiled_call returns it  # type: ignore[assignment]
    return model


ATTENTION = "llmpack_decode_sdpa"
"""The attention implementation :func:`enable_compiled_decode` sets on models that use ``sdpa``."""


def decode_sdpa(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' ``sdpa`` attention, except that a one-token step of a grouped-query model attends the
    key/value heads as they are: the ``n_rep`` query heads of a group become ``n_rep`` query rows of their
    key/value head, instead of every key/value head being copied ``n_rep`` times over the whole cache (which
    transformers does under ``torch.compile``; a static cache makes that copy the cache's full length, every
    layer, every token). Same arithmetic, no copy.

    Example:
        >>> from types import SimpleNamespace
        >>> m = SimpleNamespace(num_key_value_groups=3, is_causal=True)
        >>> q, k = torch.randn(2, 6, 1, 8), torch.randn(2, 2, 5, 8)
        >>> mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
        >>> out, _ = decode_sdpa(m, q, k, k, mask)
        >>> out.shape
        torch.Size([2, 1, 6, 8])
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    b, heads, q_len, dim = query.shape
    plain = (groups > 1 and q_len == 1 and dropout == 0.0 and key.shape[1] * groups == heads
             and (attention_mask is None or attention_mask.shape[1] == 1)
             and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
             and not kwargs.get("output_attentions", False))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    q = query.reshape(b, heads // groups, groups, dim)
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                           scale=scaling, is_causal=False)
    return out.reshape(b, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


def _use_decode_sdpa(model: nn.Module) -> None:
    """Switch a model that runs transformers' ``sdpa`` to :func:`decode_sdpa` (where this transformers has
    pluggable attention)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError:  # (older transformers: the plain sdpa path stays)
        return
    AttentionInterface.register(ATTENTION, decode_sdpa)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)  # type: ignore[operator]


def _canonical(value: Any) -> Any:
    """A tensor with the strides of a fresh tensor of its shape (a slice such as ``ids[:, -1:]`` keeps its
    parent's strides): the compiled step then never recompiles for a stride alone."""
    if isinstance(value, torch.Tensor) and value.stride() != torch.empty(value.shape, device="meta").stride():
        return value.new_empty(value.shape).copy_(value)
    return value


def _own_forward(model: nn.Module) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        kwargs = {k: _canonical(v) if k in ("input_ids", "cache_position", "position_ids") else v
                  for k, v in kwargs.items()}
        return model(*args, **kwargs)

    forward.__code__ = forward.__code__.replace(co_name=f"llmpack_decode_{type(model).__name__}_{id(model):x}")
    return forward


def compiled_forward(model: nn.Module) -> Any:
    """The compiled forward that ``generate`` decodes with after :func:`enable_compiled_decode` (compiled on
    its first call), for callers that run their own loop over a :class:`transformers.StaticCache`
    (``benchmarks/decode_cpu.py``).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> callable(compiled_forward(enable_compiled_decode(tiny_model("llama"))))
        True
    """
    compiled = getattr(model, "_compiled_call", None)
    if compiled is None:
        raise ValueError("call enable_compiled_decode(model) first")
    return compiled
