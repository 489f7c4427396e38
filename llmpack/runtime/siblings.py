"""Shared-input siblings (q/k/v, gate/up): W8A8 layers that modeling code calls on the same tensor quantize it
once and get their outputs from one kernel call.

Example:
    >>> import torch
    >>> from llmpack.runtime.linear import Int8Linear
    >>> class Attn(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.q_proj, self.k_proj, self.v_proj = (Int8Linear.from_float(torch.nn.Linear(8, 8)) for _ in "qkv")
    >>> a = Attn()
    >>> group_siblings(a) in (0, 1)
    True
"""

from __future__ import annotations

import torch
from torch import nn

from llmpack.runtime import kernels
from llmpack.runtime.linear import Int8Linear

__all__ = ["SIBLING_GROUPS", "SiblingGroup", "group_siblings"]

SIBLING_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),  # Llama, Mistral, Qwen, Gemma, SmolLM, OPT, ...
    ("gate_proj", "up_proj"),        # gated MLPs of the same families
    ("query", "key", "value"),       # BERT-style attention
    ("w1", "w3"),                    # Mixtral-style experts
)
"""Child names of sibling layers that modeling code calls on the same input tensor."""


class SiblingGroup:
    """W8A8 siblings that read the same input share its quantization.

    The first member called with an input computes every member's output in one
    :func:`~llmpack.runtime.kernels.w8a8` call; the outputs are kept until every member has taken its own (or a
    new input arrives), and are only reused for the very same tensor object (and, outside ``inference_mode``,
    the same version of it). Results equal the separate layers' exactly: activation quantization is per token
    and the accumulation is integer. A member whose weights changed dissolves the group.
    """

    def __init__(self, members: list[Int8Linear]) -> None:
        self.members = members
        self.keys = [m.weights_key() for m in members]
        self._index = {id(m): i for i, m in enumerate(members)}
        # (input, its version, outputs, members yet to take theirs), replaced as one tuple so that a
        # thread never pairs one input with another thread's product.
        self._state: tuple[torch.Tensor, int | None, list[torch.Tensor], set[int]] | None = None
        self._traced: tuple[torch.Tensor, list[torch.Tensor], set[int]] | None = None

    def traced_output(self, member: Int8Linear, x: torch.Tensor, kernel: str) -> torch.Tensor:
        """``member(x)`` while ``torch.compile`` traces: the first member traced on ``x`` records one
        :func:`~llmpack.runtime.kernels.w8a8` call for every member, the others take their slice of it. The
        record lives only during the trace (the last member clears it), so nothing leaves the graph."""
        me = self._index[id(member)]
        rec = self._traced
        if rec is None or rec[0] is not x:
            x2 = x.reshape(-1, x.shape[-1])
            rec = (x, kernels.w8a8(x2, [m.packed() for m in self.members], kernel), set(range(len(self.members))))
        left = rec[2] - {me}
        self._traced = (rec[0], rec[1], left) if left else None
        return rec[1][me].reshape(*x.shape[:-1], member.out_features).to(x.dtype)

    def dissolve(self) -> None:
        """Members go back to running alone."""
        for m in self.members:
            m._group = None
        self._state = None

    def output(self, member: Int8Linear, x: torch.Tensor) -> torch.Tensor | None:
        """``member(x)`` from the shared product, or ``None`` when the member must run alone."""
        me = id(member)
        if me not in self._index:  # the group was copied with its model (copy.deepcopy): key it on the copies
            self._index = {id(m): i for i, m in enumerate(self.members)}
            self.keys = [m.weights_key() for m in self.members]
            self._state = None
            if me not in self._index:
                return None
        if member.weights_key() != self.keys[self._index[me]]:
            self.dissolve()  # a member's weight was replaced or edited: the packed product is stale
            return None
        version = None if x.is_inference() else x._version
        state = self._state
        if state is None or state[0] is not x or state[1] != version or me not in state[3]:
            if x.device.type != "cpu" or x.shape[-1] != member.in_features:
                return None
            if any(m.weights_key() != k for m, k in zip(self.members, self.keys)):
                self.dissolve()
                return None
            x2 = x.reshape(-1, x.shape[-1])
            kernel = member.kernel("cpu", x2.shape[0])
            outs = kernels.w8a8(x2, [m.packed() for m in self.members], kernel)
            state = (x, version, outs, set(self._index))
            self._state = state
        state[3].discard(me)
        if not state[3] and self._state is state:  # every member has its output: drop the references
            self._state = None
        return state[2][self._index[me]].reshape(*x.shape[:-1], member.out_features).to(x.dtype)


def group_siblings(model: nn.Module) -> int:
    """Form a :class:`SiblingGroup` for every :data:`SIBLING_GROUPS` set of CPU W8A8 layers with one input
    size, where the kernel quantizes once for several layers (llmpack's native and the 7-bit oneDNN kernels,
    also where the native kernel serves only decode steps); returns how many.
    """
    candidates = []
    for parent in model.modules():
        for names in SIBLING_GROUPS:
            mods = [getattr(parent, name, None) for name in names]
            if not all(isinstance(m, Int8Linear) for m in mods):
                continue
            if any(m._group is not None for m in mods):  # already grouped (prepare_int8 called twice)
                continue
            if all(m.act_quant and m.scheme == "int8" and m.weight.device.type == "cpu"
                   and m.in_features == mods[0].in_features for m in mods):
                candidates.append(mods)
    # Asked only where there is something to group: the question may build the native kernels (seconds), which
    # FP8 models, weight-only models and models on a GPU never use.
    if not candidates or (kernels.cpu_kernel() not in ("vnni", "avx2", "avx2-7bit", "onednn-7bit")
                          and not kernels.native_float_ops_on()):
        return 0
    for mods in candidates:
        group = SiblingGroup(mods)  # type: ignore[arg-type]
        for m in mods:
            m._group = group  # type: ignore[union-attr]
    return len(candidates)
