"""One-op equivalents of float modules of transformers models, swapped in by
:func:`llmpack.runtime.prepare.prepare_int8` (so by ``llmpack.load`` and the in-memory ``llmpack.quantize``
of int8 models).

Once the linear layers are int8, the float parts of a small model are a third of an eager forward:

* transformers' ``NewGELUActivation`` (GPT-2's ``gelu_new``) computes the tanh approximation of GELU as
  eight tensor operations; ``F.gelu(x, approximate="tanh")`` computes the same formula in one vectorised
  pass (5x faster on a 1024x3072 activation, results equal to ~1 float32 ulp; transformers ships it as
  ``gelu_pytorch_tanh`` and calls it equivalent). On the AVX2 int8 kernel llmpack's native ``gelu_tanh``
  evaluates it as the equal ``x / (1 + exp(-2u))``, without PyTorch's slow vectorised tanh (128 x 3072:
  315 vs 789 us; error vs float64 5e-7, PyTorch's 4e-7, and none of tanh's cancellation for negative x).
* ``LlamaRMSNorm`` and its copies (Mistral, Mixtral, Qwen2, Qwen3) take six tensor operations; on the AVX2
  int8 kernel, llmpack's native ``rms_norm`` (:mod:`llmpack.runtime.kernels.native`) does one read and one write
  per token (SmolLM2, 128 tokens: 21 vs 106 us per norm; results within ~1 float32 ulp, the sum of squares
  in another order). Elsewhere, and under ``torch.compile`` (which fuses the operations itself), the
  module computes transformers' formula as it is. (``F.rms_norm`` was tried first: on CPU PyTorch
  decomposes it into the same operations.)
* The gate of Llama-style MLPs (``LlamaMLP`` and its copies in Mistral, Qwen2, Qwen3),
  ``act_fn(gate_proj(x)) * up_proj(x)`` with SiLU, is two passes whose vectorised ``exp`` is slow on AVX2
  CPUs; :class:`FusedSwiGLU` runs llmpack's native ``silu_mul`` there, ``g / (1 + exp(-g)) * u`` in one
  pass (2 threads, 1024 x 1536: 0.72-0.80 vs 1.47-1.55 ms; 128 x 1536: 0.10-0.12 vs 0.18-0.19 ms; results
  within a few float32 ulps).
* A float output head (``nn.Linear`` with at least :data:`WIDE_OUT` outputs, e.g. a tied LM head) on
  1 to 8 tokens — a prefill's last positions, every decode step — is a matrix-vector product bound by
  memory; the BLAS call PyTorch makes reads the weight at about half the memory bandwidth. On the AVX2
  int8 kernel :class:`FewTokenLinear` runs llmpack's native ``few_token_linear`` instead, which reads
  each weight row once for all tokens (SmolLM2's 49152 x 576 head: 1 token 5.6 vs 9.9 ms, 8 tokens 8.1
  vs 23.3 ms; results equal up to float summation order).

Only these exact classes are replaced, and a norm only after the replacement reproduced the original on
a probe input; parameters stay the same objects (tied weights stay tied), so the state dict is unchanged.

Example:
    >>> import torch
    >>> from transformers.activations import NewGELUActivation
    >>> m = torch.nn.Sequential(NewGELUActivation())
    >>> fuse_float_modules(m), type(m[0]).__name__
    (1, 'TanhGELU')
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from llmpack.runtime import kernels

__all__ = ["TanhGELU", "FusedRMSNorm", "FusedSwiGLU", "FewTokenLinear", "WIDE_OUT", "fuse_float_modules"]

WIDE_OUT = 8192
"""Float ``nn.Linear`` layers with at least this many outputs (output heads) become :class:`FewTokenLinear`."""
FEW_TOKENS = 8
""":class:`FewTokenLinear` uses the native kernel for 1 to this many tokens."""

_TANH_GELUS = frozenset({"NewGELUActivation"})
_RMS_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "MixtralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})
_SWIGLU_MLPS = frozenset({"LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP"})
_SILUS = frozenset({"SiLU", "SiLUActivation"})


class TanhGELU(nn.Module):
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` in one pass (``F.gelu(x, approximate="tanh")``,
    or llmpack's native ``gelu_tanh`` on float32 CPU tensors where the AVX2 int8 kernel runs).

    Example:
        >>> TanhGELU()(torch.zeros(2)).tolist()
        [0.0, 0.0]
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = _native_for(x)
        if ops is not None:
            return ops.gelu_tanh(x.contiguous())
        return F.gelu(x, approximate="tanh")


class FusedRMSNorm(nn.Module):
    """Llama's RMSNorm, ``weight * (x * rsqrt(mean(x^2) + eps))`` in float32 then the input dtype, through
    llmpack's native one-pass kernel where it runs (float32 on the AVX2 int8 kernel, eager).

    Example:
        >>> n = FusedRMSNorm(torch.nn.Parameter(torch.ones(4)), 1e-6)
        >>> [round(v, 4) for v in n(torch.ones(1, 4))[0].tolist()]
        [1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, weight: nn.Parameter, eps: float) -> None:
        super().__init__()
        self.weight = weight
        self.variance_epsilon = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        ops = _native_for(x, w)
        if ops is not None:
            return ops.rms_norm(x.contiguous(), w, self.variance_epsilon)
        xf = x.to(torch.float32)
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return w * y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class FusedSwiGLU(nn.Module):
    """A Llama-style MLP, ``down_proj(silu(gate_proj(x)) * up_proj(x))``, holding the original's submodules
    (state dict unchanged); the gate runs llmpack's native ``silu_mul`` on float32 CPU activations where
    the AVX2 int8 kernel runs (eager), ``act_fn(g) * u`` elsewhere.

    Example:
        >>> lin = lambda i, o: torch.nn.Linear(i, o, bias=False)
        >>> mlp = FusedSwiGLU(lin(4, 8), lin(4, 8), lin(8, 4), torch.nn.SiLU())
        >>> mlp(torch.ones(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, gate_proj: nn.Module, up_proj: nn.Module, down_proj: nn.Module, act_fn: nn.Module) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj, self.act_fn = gate_proj, up_proj, down_proj, act_fn
        self.native = True  # False: always the PyTorch formula (the swap's probe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, u = self.gate_proj(x), self.up_proj(x)
        ops = _native_for(g) if self.native and u.dtype == g.dtype else None
        h = ops.silu_mul(g.contiguous(), u.contiguous()) if ops is not None else self.act_fn(g) * u
        return self.down_proj(h)


class FewTokenLinear(nn.Linear):
    """An ``nn.Linear`` (sharing the original's parameters) whose calls on 1 to :data:`FEW_TOKENS` float32
    CPU tokens run llmpack's native ``few_token_linear`` on the AVX2 int8 kernel; every other call is
    ``F.linear``.

    Example:
        >>> lin = torch.nn.Linear(4, 3)
        >>> fast = FewTokenLinear(lin)
        >>> fast.weight is lin.weight, torch.allclose(fast(torch.ones(1, 4)), lin(torch.ones(1, 4)))
        (True, True)
    """

    def __init__(self, src: nn.Linear) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = src.in_features, src.out_features
        self.weight = src.weight
        self.bias = src.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        tokens = x.numel() // max(self.in_features, 1)
        ops = _native_for(x, w) if 1 <= tokens <= FEW_TOKENS else None
        if ops is not None:
            y = ops.few_token_linear(x.reshape(tokens, self.in_features).contiguous(), w)
            if self.bias is not None:
                y = y.add_(self.bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, w, self.bias)


def _native_for(x: torch.Tensor, *weights: torch.Tensor) -> Any | None:
    """The native ops for an eager call on a float32 CPU input with contiguous float32 CPU weights, else
    ``None`` (other dtypes, devices and ``torch.compile`` take the PyTorch formula)."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    if any(w.dtype != torch.float32 or w.device.type != "cpu" or not w.is_contiguous() for w in weights):
        return None
    return _native_float_ops()


def _native_float_ops() -> Any | None:
    """The native ops when llmpack's AVX2 int8 kernels run here (the extension is built for them anyway)."""
    return kernels.native_ops() if kernels.native_float_ops_on() else None


def _same_outputs(old: nn.Module, new: nn.Module, width: int, like: torch.Tensor | None = None) -> bool:
    """``new`` reproduces ``old`` on a probe input of ``like``'s dtype and device (default: ``old.weight``'s),
    so a changed upstream formula is never swapped."""
    w = getattr(old, "weight", None) if like is None else like
    if not isinstance(w, torch.Tensor) or w.device.type == "meta" or not w.dtype.is_floating_point:
        return False
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, width, generator=g) * 4).to(device=w.device, dtype=w.dtype)
    with torch.no_grad():
        a, b = old(x), new(x)
    return a.shape == b.shape and bool(torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5))


def _swiglu(mod: nn.Module) -> FusedSwiGLU | None:
    """:class:`FusedSwiGLU` for a Llama-style MLP with SiLU, after its PyTorch path reproduced the original
    forward exactly on a probe (the native gate is checked against ``F.silu`` by the kernel tests)."""
    parts = [getattr(mod, n, None) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")]
    if any(not isinstance(p, nn.Module) for p in parts) or type(parts[3]).__name__ not in _SILUS:
        return None
    gate = parts[0]
    # the probe's dtype and device: the first float parameter (an int8 / fp8 layer's is its weight scale)
    like = next((p for p in gate.parameters() if p.dtype.is_floating_point and p.element_size() > 1), None)
    if like is None:
        return None
    new = FusedSwiGLU(*parts)
    new.native = False
    ok = _same_outputs(mod, new, int(getattr(gate, "in_features", 0)), like)
    new.native = True
    return new if ok else None


def _replacement(mod: nn.Module) -> nn.Module | None:
    cls = type(mod)
    if cls is nn.Linear and mod.out_features >= WIDE_OUT:
        return FewTokenLinear(mod)
    if not cls.__module__.startswith("transformers."):
        return None
    if cls.__name__ in _TANH_GELUS:
        return TanhGELU()
    if cls.__name__ in _SWIGLU_MLPS:
        return _swiglu(mod)
    if cls.__name__ in _RMS_NORMS:
        w, eps = getattr(mod, "weight", None), getattr(mod, "variance_epsilon", None)
        if isinstance(w, nn.Parameter) and w.dim() == 1 and isinstance(eps, float):
            new = FusedRMSNorm(w, eps)
            return new if _same_outputs(mod, new, w.numel()) else None
    return None


def fuse_float_modules(model: nn.Module) -> int:
    """Replace transformers' ``NewGELUActivation`` modules by :class:`TanhGELU`, Llama-style RMSNorms by
    :class:`FusedRMSNorm`, Llama-style SiLU MLPs by :class:`FusedSwiGLU` and wide float ``nn.Linear`` heads
    by :class:`FewTokenLinear`, in place; returns how many.

    Example:
        >>> fuse_float_modules(torch.nn.Linear(2, 2))
        0
    """
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            new = _replacement(child)
            if new is not None:
                swaps.append((parent, name, new))
    for parent, name, new in swaps:
        setattr(parent, name, new)
    return len(swaps)
