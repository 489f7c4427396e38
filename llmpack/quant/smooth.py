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
from llmpack.quant.layers import in_dim, is_linear

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
class SmoothGroup:
    """Linear layers sharing one input, and the module whose output produces that input.

    Attributes:
        prev: name of the producer module (a norm or a linear).
        prev_kind: ``"norm"`` or ``"linear"``.
        targets: names of the linear layers that read the smoothed input.
        kind: a short label for reports (``"attn_in"``, ``"mlp_in"``, ``"attn_out"``, ``"mlp_out"``).
        channels: length of the scale vector ``s`` (producer side).
        prev_out_dim: weight dim of the producer that indexes its outputs (0 Linear/norm, 1 Conv1D).
        prev_slice: ``(start, stop)`` of the producer's outputs that feed the targets (GPT-2 value slice).
        target_in_dims: per target, the weight dim that indexes inputs (1 Linear, 0 Conv1D).
        repeat / head_dim: grouped-query attention: each producer head of ``head_dim`` channels feeds
            ``repeat`` consecutive target heads (1 = no sharing).
    """

    prev: str
    prev_kind: str
    targets: tuple[str, ...]
    kind: str
    channels: int
    prev_out_dim: int = 0
    prev_slice: tuple[int, int] | None = None
    target_in_dims: tuple[int, ...] = ()
    repeat: int = 1
    head_dim: int = 0

    def expand(self, s: torch.Tensor) -> torch.Tensor:
        """Producer-side scale → target-side scale (repeats value heads for grouped-query attention)."""
        if self.repeat == 1:
            return s
        kv = s.numel() // self.head_dim
        return s.view(kv, 1, self.head_dim).expand(kv, self.repeat, self.head_dim).reshape(-1)

    def reduce(self, v: torch.Tensor) -> torch.Tensor:
        """Target-side per-channel statistic → producer side (max over heads sharing a value head)."""
        if self.repeat == 1:
            return v
        return v.view(-1, self.repeat, self.head_dim).amax(dim=1).reshape(-1)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        d["target_in_dims"] = list(self.target_in_dims)
        d["prev_slice"] = list(self.prev_slice) if self.prev_slice else None
        return d


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


def _norm_ok(mod: torch.nn.Module) -> bool:
    name = type(mod).__name__
    if "Gemma" in name:  # weight is applied as (1 + w): folding by division would be wrong
        return False
    if isinstance(mod, torch.nn.LayerNorm):
        return mod.elementwise_affine
    return name.endswith("RMSNorm") and isinstance(getattr(mod, "weight", None), torch.Tensor)


def _get(root: torch.nn.Module, name: str) -> torch.nn.Module | None:
    try:
        return root.get_submodule(name)
    except AttributeError:
        return None


def _lin_in(m: torch.nn.Module) -> int:
    return m.weight.shape[in_dim(m)]


def _lin_out(m: torch.nn.Module) -> int:
    return m.weight.shape[1 - in_dim(m)]


def find_groups(model: torch.nn.Module, skip: Iterable[str] = ()) -> list[SmoothGroup]:
    """Find every place where a SmoothQuant scale can be folded exactly.

    Recognises pre-LN Llama-style decoder layers (``input_layernorm``, ``self_attn.{q,k,v,o}_proj``,
    ``post_attention_layernorm``, ``mlp.{gate,up,down}_proj``), GPT-2 blocks (``ln_1``, ``attn.c_attn``,
    ``attn.c_proj``, ``ln_2``, ``mlp.c_fc``) and BERT layers (``attention.self.value`` →
    ``attention.output.dense`` only). A group with a layer named in ``skip`` among its consumers, or as its
    producer, is left out.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> [g.kind for g in find_groups(tiny_model("llama"))][:4]
        ['attn_in', 'attn_out', 'mlp_in', 'mlp_out']
    """
    skip = set(skip)
    groups: list[SmoothGroup] = []

    def lins(base: str, names: Iterable[str]) -> list[tuple[str, torch.nn.Module]] | None:
        out = []
        for n in names:
            full = f"{base}.{n}" if base else n
            m = _get(model, full)
            if m is None or not is_linear(m):
                return None
            out.append((full, m))
        return out

    def add(prev: str, prev_mod: torch.nn.Module, kind: str, targets: list[tuple[str, torch.nn.Module]], **kw) -> None:
        # The producer's scale must be undone in *every* consumer: a group with a skipped consumer is not
        # smoothed at all (dropping just that consumer would silently change its output).
        if not targets or any(n in skip for n, _ in targets):
            return
        prev_kind = "norm" if not is_linear(prev_mod) else "linear"
        prev_out_dim = 0 if prev_kind == "norm" else 1 - in_dim(prev_mod)
        n_in = _lin_in(targets[0][1])
        if any(_lin_in(m) != n_in for _, m in targets):
            return
        repeat = kw.get("repeat", 1)
        groups.append(SmoothGroup(
            prev=prev, prev_kind=prev_kind, targets=tuple(n for n, _ in targets), kind=kind,
            channels=n_in // repeat, prev_out_dim=prev_out_dim, prev_slice=kw.get("prev_slice"),
            target_in_dims=tuple(in_dim(m) for _, m in targets), repeat=repeat, head_dim=kw.get("head_dim", 0),
        ))

    for name, mod in model.named_modules():
        p = f"{name}." if name else ""
        # Llama / Mistral / Qwen2 style pre-LN decoder layer
        ln1, ln2 = _get(mod, "input_layernorm"), _get(mod, "post_attention_layernorm")
        attn = lins(f"{p}self_attn", ("q_proj", "k_proj", "v_proj", "o_proj"))
        mlp = lins(f"{p}mlp", ("gate_proj", "up_proj", "down_proj"))
        if ln1 is not None and ln2 is not None and attn and mlp:
            (qn, q), (kn, k), (vn, v), (on, o) = attn
            (gn, g), (un, u), (dn, d) = mlp
            if _norm_ok(ln1) and "pre_feedforward_layernorm" not in dict(mod.named_children()):
                add(f"{p}input_layernorm", ln1, "attn_in", [(qn, q), (kn, k), (vn, v)])
            cfg = getattr(model, "config", None)
            heads = getattr(cfg, "num_attention_heads", None)
            kvh = getattr(cfg, "num_key_value_heads", None) or heads
            head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", 0) // heads if heads else 0)
            if heads and head_dim and _lin_in(o) == heads * head_dim and _lin_out(v) == kvh * head_dim \
                    and vn not in skip and heads % kvh == 0:
                add(vn, v, "attn_out", [(on, o)], repeat=heads // kvh, head_dim=head_dim)
            if _norm_ok(ln2) and "post_feedforward_layernorm" not in dict(mod.named_children()):
                add(f"{p}post_attention_layernorm", ln2, "mlp_in", [(gn, g), (un, u)])
            if _lin_out(u) == _lin_in(d) and un not in skip:
                add(un, u, "mlp_out", [(dn, d)])
            continue
        # GPT-2 block
        l1, l2 = _get(mod, "ln_1"), _get(mod, "ln_2")
        gattn = lins(f"{p}attn", ("c_attn", "c_proj"))
        gmlp = lins(f"{p}mlp", ("c_fc",))
        if isinstance(l1, torch.nn.LayerNorm) and isinstance(l2, torch.nn.LayerNorm) and gattn and gmlp:
            (can, ca), (cpn, cp) = gattn
            if _norm_ok(l1):
                add(f"{p}ln_1", l1, "attn_in", [(can, ca)])
            e = _lin_in(cp)
            if _lin_out(ca) == 3 * e and can not in skip:
                add(can, ca, "attn_out", [(cpn, cp)], prev_slice=(2 * e, 3 * e))
            if _norm_ok(l2):
                add(f"{p}ln_2", l2, "mlp_in", gmlp)
            continue
        # BERT layer: post-LN, so only value -> attention.output.dense
        bert = lins(p.rstrip("."), ("attention.self.value", "attention.output.dense")) if name else None
        if bert and type(mod).__name__.endswith("Layer"):
            (vn, v), (on, o) = bert
            if _lin_out(v) == _lin_in(o) and vn not in skip:
                add(vn, v, "attn_out", [(on, o)])
    return groups


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
