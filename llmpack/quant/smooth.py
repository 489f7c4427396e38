"""SmoothQuant: migrate activation outliers into the weights by an exact re-parameterisation.

For a group of linear layers that read the same input ``x`` (e.g. ``q/k/v_proj`` after a norm), a
per-input-channel scale ``s_j = max|x_j|^α / max|W_j|^(1-α)`` is chosen; the layers then see
``x / s`` (folded into whatever produces ``x``) with weights ``W * s`` (columns scaled), so the float
model computes exactly the same function (up to float rounding) while the activations the INT8
kernel must quantize per token lose their outlier channels.

Where ``s`` is folded (the *producer*):

* a norm (``*RMSNorm`` except Gemma's ``1 + w`` form, ``nn.LayerNorm``) that feeds only the group:
  ``norm.weight /= s`` (and ``norm.bias /= s``). Pre-LN blocks only (Llama/Mistral/Qwen ``input_layernorm``,
  ``post_attention_layernorm``; GPT-2 ``ln_1``/``ln_2``). BERT's post-LN norms also feed the residual, so
  they are never used.
* a linear whose output rows reach the group through an operation that is linear per channel:
  ``v_proj → o_proj`` (attention mixes positions, not channels; grouped-query attention shares a
  value channel between ``n_rep`` heads, so ``s`` is shared across them), GPT-2's value slice of
  ``c_attn → attn.c_proj``, BERT ``value → attention.output.dense``, and Llama's
  ``up_proj → down_proj`` through ``act(gate) * up`` (scaling ``up``'s output by ``1/s`` scales the
  product by ``1/s``). Per-output-channel int8 weights absorb the row scale of the producer exactly.

Every fold is described as data (:class:`ScaleOp` per tensor name), so the same scales apply to an
in-memory model (:func:`fold`) or to tensors streaming from a checkpoint (:func:`apply_ops`).

Example:
    >>> import torch
    >>> from llmpack.testing import tiny_model
    >>> m = tiny_model("llama")
    >>> x = torch.tensor([[1, 2, 3, 4]])
    >>> ref = m(input_ids=x).logits
    >>> groups = find_groups(m)
    >>> from llmpack.tune.calibrate import collect_input_absmax
    >>> scales = compute_scales(m, groups, collect_input_absmax(m, [x]), alpha=0.5)
    >>> fold(m, groups, scales)
    >>> bool(torch.allclose(m(input_ids=x).logits, ref, atol=1e-4))
    True
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

import torch

from llmpack.errors import BadInputError
from llmpack.quant.smooth_groups import SmoothGroup, find_groups

__all__ = [
    "SmoothGroup",
    "ScaleOp",
    "find_groups",
    "compute_scales",
    "group_scale",
    "tensor_ops",
    "apply_ops",
    "fold",
    "target_scale",
]

_S_MIN, _S_MAX = 1e-5, 1e5


@dataclasses.dataclass(frozen=True)
class ScaleOp:
    """One fold on one tensor: ``tensor[..., start:stop, ...] (*|/)= s`` along ``dim``.

    Attributes:
        tensor: full tensor name (``<module>.weight`` / ``<module>.bias``).
        key: the group's ``prev`` name (the key of its scale vector).
        dim: dimension of the tensor the scale runs along.
        divide: True for the producer (``/ s``), False for the targets (``* s``).
        expand: use the target-side (grouped-query expanded) scale.
        start / stop: the slice of ``dim`` that is scaled (``None`` = all).
    """

    tensor: str
    key: str
    dim: int
    divide: bool
    expand: bool = False
    start: int | None = None
    stop: int | None = None


def group_scale(
    group: SmoothGroup,
    act_absmax: torch.Tensor,
    weights: Iterable[torch.Tensor],
    alpha: float,
) -> torch.Tensor:
    """The SmoothQuant scale for one group: ``s_j = a_j^α / w_j^(1-α)`` (producer side).

    Args:
        group: the group.
        act_absmax: target-side ``max |x_j|`` over calibration tokens.
        weights: the targets' weights (each in its own layout, see ``group.target_in_dims``).
        alpha: migration strength in ``[0, 1]`` (0 = no activation change, 1 = all onto the weights).

    Returns:
        float32 ``[group.channels]``; channels with no signal get ``s = 1``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise BadInputError(f"SmoothQuant alpha {alpha!r} must lie in [0, 1]")
    w = None
    for t, d in zip(weights, group.target_in_dims):
        col = t.detach().abs().float().amax(dim=1 - d)
        w = col if w is None else torch.maximum(w, col)
    a = group.reduce(act_absmax.float().to(w.device))
    w = group.reduce(w)
    ok = (a > 0) & (w > 0)
    s = torch.ones_like(a)
    s[ok] = a[ok].pow(alpha) / w[ok].pow(1.0 - alpha)
    return s.clamp(_S_MIN, _S_MAX)


def compute_scales(
    model: torch.nn.Module,
    groups: Iterable[SmoothGroup],
    act_absmax: Mapping[str, torch.Tensor],
    alpha: float | Mapping[str, float],
) -> dict[str, torch.Tensor]:
    """Scales for every group whose targets were seen in calibration (``prev`` name → ``s``).

    ``alpha`` is one number, or a mapping from group ``kind`` (``attn_in``, ``attn_out``, ``mlp_in``,
    ``mlp_out``) to alpha; a kind missing from the mapping is not smoothed.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> from llmpack.tune.calibrate import collect_input_absmax
        >>> m = tiny_model("gpt2"); gs = find_groups(m)
        >>> sc = compute_scales(m, gs, collect_input_absmax(m, [torch.tensor([[1, 2, 3]])]), {"mlp_in": 0.5})
        >>> list(sc)
        ['transformer.h.0.ln_2', 'transformer.h.1.ln_2']
    """
    out = {}
    for g in groups:
        a = alpha.get(g.kind) if isinstance(alpha, Mapping) else alpha
        if a is None:
            continue
        stats = [act_absmax[t] for t in g.targets if t in act_absmax]
        if not stats:
            continue
        act = stats[0] if len(stats) == 1 else torch.stack(stats).amax(0)
        out[g.prev] = group_scale(g, act, [model.get_submodule(t).weight for t in g.targets], float(a))
    return out


def target_scale(group: SmoothGroup, s: torch.Tensor) -> torch.Tensor:
    """The per-input-channel scale the group's targets multiply their weight columns by."""
    return group.expand(s)


def tensor_ops(groups: Iterable[SmoothGroup], scales: Mapping[str, torch.Tensor],
               has_bias: Mapping[str, bool] | None = None) -> dict[str, list[ScaleOp]]:
    """Describe the folds of ``scales`` as per-tensor operations, for streaming pipelines.

    Args:
        groups: the groups (from :func:`find_groups`).
        scales: ``prev`` name → ``s`` (from :func:`compute_scales`); groups without a scale are ignored.
        has_bias: module name → whether it has a bias (``None``: emit bias ops for every producer;
            :func:`apply_ops` is only ever called on tensors that exist).

    Returns:
        tensor name → list of :class:`ScaleOp` (in the order to apply).

    Example:
        >>> g = SmoothGroup("l.norm", "norm", ("l.q",), "attn_in", 4, target_in_dims=(1,))
        >>> sorted(tensor_ops([g], {"l.norm": torch.ones(4)}))
        ['l.norm.bias', 'l.norm.weight', 'l.q.weight']
    """
    ops: dict[str, list[ScaleOp]] = {}
    for g in groups:
        if g.prev not in scales:
            continue
        start, stop = g.prev_slice if g.prev_slice else (None, None)
        for suffix in ("weight", "bias"):
            if suffix == "bias" and has_bias is not None and not has_bias.get(g.prev, False):
                continue
            dim = g.prev_out_dim if suffix == "weight" else 0
            ops.setdefault(f"{g.prev}.{suffix}", []).append(
                ScaleOp(f"{g.prev}.{suffix}", g.prev, dim, True, False, start, stop))
        for t, d in zip(g.targets, g.target_in_dims):
            ops.setdefault(f"{t}.weight", []).append(ScaleOp(f"{t}.weight", g.prev, d, False, True))
    return ops


def apply_ops(tensor: torch.Tensor, ops: Iterable[ScaleOp], scales: Mapping[str, torch.Tensor],
              groups: Mapping[str, SmoothGroup]) -> torch.Tensor:
    """Apply the folds ``ops`` to one tensor; returns a new tensor of the same dtype and shape.

    The arithmetic runs in float32 and the result is cast back once.

    Args:
        tensor: the tensor as stored (any float dtype).
        ops: its operations (``tensor_ops(...)[name]``).
        scales: ``prev`` name → ``s``.
        groups: ``prev`` name → group.
    """
    out = tensor.detach().float().clone()
    for op in ops:
        g = groups[op.key]
        s = scales[op.key].float().to(out.device)
        if op.expand:
            s = g.expand(s)
        if op.dim >= out.dim():
            raise BadInputError(f"{op.tensor}: cannot scale dim {op.dim} of a {out.dim()}-d tensor; the smoothing plan does not match this checkpoint")
        view = out.narrow(op.dim, op.start or 0, (op.stop if op.stop is not None else out.shape[op.dim]) - (op.start or 0))
        if view.shape[op.dim] != s.numel():
            raise BadInputError(
                f"{op.tensor}: smoothing scale has {s.numel()} channels but dim {op.dim} has {view.shape[op.dim]}; "
                "the smoothing plan was computed for another model"
            )
        shape = [1] * out.dim()
        shape[op.dim] = s.numel()
        if op.divide:
            view.div_(s.view(shape))
        else:
            view.mul_(s.view(shape))
    return out.to(tensor.dtype)


@torch.no_grad()
def fold(model: torch.nn.Module, groups: Iterable[SmoothGroup], scales: Mapping[str, torch.Tensor]) -> None:
    """Fold ``scales`` into ``model``'s weights in place (an exact re-parameterisation of the float model).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> m = tiny_model("bert"); gs = find_groups(m)
        >>> fold(m, gs, {g.prev: torch.full((g.channels,), 2.0) for g in gs})
    """
    groups = list(groups)
    by_prev = {g.prev: g for g in groups}
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, ops in tensor_ops(groups, scales).items():
        p = params.get(name)
        if p is None:
            if name.endswith(".bias"):
                continue
            raise BadInputError(f"{name}: not a parameter of this model; the smoothing plan was computed for another model")
        p.data.copy_(apply_ops(p.data, ops, scales, by_prev))
