"""Row-exact attention for padded batches.

A batch with left padding makes transformers hand SDPA an explicit mask, and SDPA then takes another
kernel path (``repeat_kv`` instead of ``enable_gqa``, a masked kernel instead of ``is_causal``) than
for the same sequence alone: the results differ in the last float bits. In a float model that never
shows; in an int8 model with dynamic per-token activations a last-bit change can flip one rounding
and the greedy tokens diverge. :func:`install_row_attention` wraps the model's attention function so
that, when the batch is padded, each row runs the very call it would run alone: its real keys only
(the padding prefix sliced off), and no mask when its mask allows everything the unpadded call would.
Every other op of a decoder (linears, norms, rotary) is row-independent, so a row's tokens do not depend
on its batch-mates (tested against ``generate`` on one prompt at a time).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

__all__ = ["install_row_attention"]


def _trivial(mask: torch.Tensor) -> bool:
    """True when a [1, 1, q, kv] bool mask is what an unpadded call runs without a mask (all, or causal)."""
    q, kv = mask.shape[-2], mask.shape[-1]
    if bool(mask.all()):
        return q == 1
    if q == kv:
        causal = torch.ones(q, kv, dtype=torch.bool, device=mask.device).tril()
        return bool(torch.equal(mask[0, 0], causal))
    return False


def _plan(mask: torch.Tensor, q: int) -> list[tuple[int, int, bool, list[int]]]:
    """Rows of a [B, 1, q, kv] bool mask grouped by (padding prefix, first real query, trivial): one attention
    call per group, with the group's rows sliced to their real keys."""
    kv = mask.shape[-1]
    first = mask[:, 0].any(1).to(torch.int8).argmax(-1).tolist()  # first column any query attends
    groups: dict[tuple[int, int, bool], list[int]] = {}
    for i, pad in enumerate(first):
        qs = max(0, pad - (kv - q))
        trivial = mask.shape[1] == 1 and _trivial(mask[i:i + 1, :, qs:, pad:])
        groups.setdefault((pad, qs, trivial), []).append(i)
    return [(pad, qs, trivial, rows) for (pad, qs, trivial), rows in groups.items()]


def _rows(base: Callable[..., Any]) -> Callable[..., Any]:
    plans: dict[int, tuple[torch.Tensor, list[tuple[int, int, bool, list[int]]]]] = {}

    def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        if attention_mask is None or query.shape[0] == 1 or attention_mask.dtype != torch.bool \
                or attention_mask.shape[0] != query.shape[0]:
            return base(module, query, key, value, attention_mask, **kwargs)
        b, heads, q, _ = query.shape
        hit = plans.get(id(attention_mask))
        if hit is None or hit[0] is not attention_mask:  # the model passes one mask object to every layer
            if len(plans) > 4:
                plans.clear()
            hit = plans[id(attention_mask)] = (attention_mask, _plan(attention_mask, q))
        groups = hit[1]
        if len(groups) == 1 and groups[0][:3] == (0, 0, True):
            return base(module, query, key, value, None, **kwargs)  # nothing padded: the unmasked call, batched
        out = query.new_zeros(b, q, heads, value.shape[-1])
        for pad, qs, trivial, rows in groups:
            if qs >= q:
                continue  # rows of padding only
            idx = torch.tensor(rows, device=query.device)
            mi = None if trivial else attention_mask.index_select(0, idx)[:, :, qs:, pad:]
            o, _ = base(module, query.index_select(0, idx)[:, :, qs:], key.index_select(0, idx)[:, :, pad:],
                        value.index_select(0, idx)[:, :, pad:], mi, **kwargs)
            out[idx, qs:] = o
        return out, None

    return attention


def install_row_attention(model: torch.nn.Module) -> bool:
    """Make ``model``'s attention row-exact under padding (see the module docstring); returns whether it did.

    Only models on a registered attention function (``sdpa``, ``eager`` …) whose masks are boolean are
    wrapped; others are left as they are (their batched tokens may differ from unbatched ones in the last bits).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> m = tiny_model("llama")
        >>> install_row_attention(m), m.config._attn_implementation
        (True, 'llmpack_rows_sdpa')
    """
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

    impl = getattr(model.config, "_attn_implementation", None)
    if not isinstance(impl, str) or impl.startswith("llmpack_rows_"):
        return isinstance(impl, str)
    if impl not in ALL_ATTENTION_FUNCTIONS or impl not in ALL_MASK_ATTENTION_FUNCTIONS:
        return False
    name = f"llmpack_rows_{impl}"
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _rows(ALL_ATTENTION_FUNCTIONS[impl]))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    try:
        model.set_attn_implementation(name)
    except (ValueError, TypeError, KeyError):
        return False
    return getattr(model.config, "_attn_implementation", None) == name
