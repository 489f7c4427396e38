"""Where SmoothQuant scales fold exactly: the groups of linear layers that read one input, and the producer
(a pre-LN norm, or a linear whose output reaches the group channel by channel) that absorbs ``1 / s``. The
rules are explained in :mod:`llmpack.quant.smooth`, which computes and folds the scales.

Example:
    >>> from llmpack.testing import tiny_model
    >>> sorted({g.kind for g in find_groups(tiny_model("llama"))})
    ['attn_in', 'attn_out', 'mlp_in', 'mlp_out']
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import torch

from llmpack.quant.layers import in_dim, is_linear

__all__ = ["SmoothGroup", "find_groups"]


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
