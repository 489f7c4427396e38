"""Calibration for INT8: token batches from text, per-input-channel activation statistics, and a
fake-quantization simulator used to measure what INT8 costs before anything is written.

Everything here runs on one in-memory float model and never copies it: statistics are collected with
forward hooks that keep one vector per linear layer (``max |x_j|`` over calibration tokens), and the
simulator (:func:`simulate`) swaps each selected layer's ``forward`` for a quantize-dequantize version
that recomputes the int8 weight on the fly, so no second copy of the weights is ever held.

Example:
    >>> from llmpack.testing import tiny_model
    >>> m = tiny_model("llama")
    >>> batches = [torch.randint(0, 256, (1, 16))]
    >>> stats = collect_input_absmax(m, batches)
    >>> stats["model.layers.0.mlp.down_proj"].shape
    torch.Size([176])
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F

from llmpack._nn import forward_hooks, is_conv1d
from llmpack.errors import BadInputError
from llmpack.quant import int8 as _int8
from llmpack.quant.int8 import ACT_DIVISOR, QMAX, fake_quant_weight
from llmpack.quant.layers import in_dim, is_linear
from llmpack.stream.evaluate import EvalResult

__all__ = [
    "LayerSim",
    "EvalResult",
    "token_batches",
    "linear_layers",
    "is_linear",
    "in_dim",
    "collect_input_absmax",
    "absmax_hooks",
    "fake_quant_weight",
    "fake_quant_act",
    "act_grid",
    "simulate",
    "Evaluator",
]

def linear_layers(model: torch.nn.Module, skip: Iterable[str] = ("lm_head",)) -> dict[str, torch.nn.Module]:
    """Name → module for every linear layer INT8 may quantize (``lm_head`` and ``skip`` names excluded).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> len(linear_layers(tiny_model("llama")))
        14
    """
    skip = tuple(skip)
    out = {}
    for name, mod in model.named_modules():
        if not is_linear(mod):
            continue
        if any(name == s or name.endswith("." + s) for s in skip):
            continue
        out[name] = mod
    return out


def token_batches(tokenizer: Any, text: str, seq_len: int = 512, max_tokens: int | None = None) -> list[torch.Tensor]:
    """Tokenize ``text`` once and cut it into ``[1, seq_len]`` windows (the last one may be shorter).

    Args:
        tokenizer: a Hugging Face tokenizer.
        text: calibration or evaluation text.
        seq_len: tokens per window (non-overlapping).
        max_tokens: keep at most this many tokens (``None`` = all).

    Returns:
        A list of ``LongTensor`` of shape ``[1, n]``, ``n >= 2``.

    Example:
        >>> from transformers import AutoTokenizer   # doctest: +SKIP
        >>> token_batches(tok, "hello world " * 100, seq_len=64)[0].shape   # doctest: +SKIP
        torch.Size([1, 64])
    """
    if seq_len < 2:
        raise BadInputError(f"seq_len={seq_len} is too small: use at least 2 tokens per window")
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise BadInputError("the calibration text tokenizes to fewer than 2 tokens: pass a longer text")
    out = [ids[i:i + seq_len].unsqueeze(0) for i in range(0, ids.numel(), seq_len)]
    return [b for b in out if b.shape[1] >= 2]


@torch.no_grad()
def collect_input_absmax(
    model: torch.nn.Module,
    batches: Sequence[torch.Tensor],
    names: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-input-channel ``max |x_j|`` of every linear layer's input over all calibration tokens.

    Hooks keep one float32 vector per layer, so memory is that of one forward pass plus
    ``sum(in_features)`` floats.

    Args:
        model: a float model (``nn.Linear`` / ``Conv1D`` layers).
        batches: input id tensors ``[1, n]`` (see :func:`token_batches`).
        names: layer names to watch (default: :func:`linear_layers`).

    Returns:
        layer name → float32 tensor ``[in_features]``.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> s = collect_input_absmax(tiny_model("gpt2"), [torch.randint(0, 256, (1, 8))])
        >>> s["transformer.h.0.attn.c_attn"].shape
        torch.Size([64])
    """
    names = list(linear_layers(model)) if names is None else list(names)
    stats: dict[str, torch.Tensor] = {}
    with absmax_hooks(model, names, stats):
        device = _model_device(model)
        for b in batches:
            model(input_ids=b.to(device))
    return stats


@contextlib.contextmanager
def absmax_hooks(model: torch.nn.Module, names: Iterable[str], stats: dict[str, torch.Tensor]) -> Iterator[None]:
    """Forward pre-hooks keeping each named layer's per-input-channel ``max |x_j|`` in ``stats`` (merged by max).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> m, s = tiny_model("llama"), {}
        >>> with absmax_hooks(m, ["model.layers.0.mlp.up_proj"], s):
        ...     _ = m(input_ids=torch.tensor([[1, 2]]))
        >>> s["model.layers.0.mlp.up_proj"].shape
        torch.Size([64])
    """
    def make_hook(name: str) -> Any:
        def hook(_m: torch.nn.Module, args: tuple) -> None:
            x = args[0].detach()
            v = x.reshape(-1, x.shape[-1]).abs().amax(dim=0).float()
            prev = stats.get(name)
            stats[name] = v if prev is None else torch.maximum(prev, v)
        return hook

    with forward_hooks(((model.get_submodule(name), make_hook(name)) for name in names), pre=True):
        yield


def fake_quant_act(x: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize activations per token with the runtime's semantics on ``x``'s device (:func:`act_grid`):
    ``absmax / 127.5`` clamped to ``[-128, 127]``, or the opt-in 7-bit CPU kernels' grid centred on each token,
    as ``Int8Linear`` computes (:func:`llmpack.quant.int8.fake_quant_act` on that grid).

    Example:
        >>> x = torch.randn(2, 3, 8)
        >>> fake_quant_act(x).shape
        torch.Size([2, 3, 8])
    """
    return _int8.fake_quant_act(x, act_grid(x.device))


def act_grid(device: "torch.device | str" = "cpu") -> tuple[float, float, float, bool]:
    """``(divisor, lo, hi, centred)`` of the dynamic activation grid ``Int8Linear`` runs on ``device``.

    Every default kernel computes the file's compressed-tensors grid (``absmax / 127.5``, ``[-128, 127]``, not
    centred), so decisions made at quantize time hold wherever the file runs. Only where the user opted into a
    7-bit kernel (``LLMPACK_INT8_KERNEL=avx2-7bit`` / ``onednn-7bit``) is the CPU grid 129 levels centred on each
    token (``(x - c) / (h / 64)`` in ``[-64, 64]``), and the simulator follows it, so the budget measures what
    will run.

    Example:
        >>> act_grid("cuda")
        (127.5, -128.0, 127.0, False)
    """
    if torch.device(device).type == "cpu":
        from llmpack.runtime.kernels import cpu_kernel, is_exact

        if not is_exact(cpu_kernel()):
            return 64.0, -64.0, 64.0, True
    return ACT_DIVISOR, float(-QMAX - 1), float(QMAX), False


@dataclasses.dataclass(frozen=True)
class LayerSim:
    """How one linear layer is simulated.

    Args:
        mode: ``"w8a8"`` (int8 weight per channel + int8 activation per token), ``"w8a16"``
            (weight-only int8) or ``"float"``.
        smooth: optional per-input-channel SmoothQuant scale ``s``: the layer computes
            ``q(x / s) @ q(W * s)ᵀ``, which equals ``x @ Wᵀ`` without quantization.
        scheme: the 8-bit grid of ``q`` (``"int8"`` or ``"fp8"``, :mod:`llmpack.quant.schemes`).
        weight_dtype: ``"float"`` mode only: the weight as stored in this narrower float dtype (e.g.
            ``torch.bfloat16`` for a layer an FP32 source keeps in float), rounded to it and back.
    """

    mode: str = "w8a8"
    smooth: torch.Tensor | None = None
    scheme: str = "int8"
    weight_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("w8a8", "w8a16", "float"):
            raise BadInputError(f"unknown simulation mode {self.mode!r}: choose w8a8, w8a16 or float")


def _sim_forward(mod: torch.nn.Module, sim: LayerSim):
    from llmpack.quant.schemes import get_scheme

    conv1d = is_conv1d(mod)
    scheme = get_scheme(sim.scheme)

    def forward(x: torch.Tensor) -> torch.Tensor:
        w = mod.weight
        dt = x.dtype
        if sim.mode == "float" and sim.smooth is None and sim.weight_dtype is None:
            return mod.__class__.forward(mod, x)
        if sim.mode == "float" and sim.weight_dtype is not None:
            w = w.to(sim.weight_dtype)
        s = sim.smooth
        if s is not None:
            s = s.to(device=x.device, dtype=torch.float32)
            x = x.float() / s
            w = w.float() * (s.unsqueeze(1) if conv1d else s)
        if sim.mode != "float":
            w = scheme.fake_weight(w, 1 if conv1d else 0)
        if sim.mode == "w8a8":
            x = scheme.fake_act(x, act_grid(x.device))
        w = w.to(dt)
        x = x.to(dt)
        if conv1d:
            y = torch.addmm(mod.bias, x.reshape(-1, x.shape[-1]), w) if mod.bias is not None else x.reshape(-1, x.shape[-1]) @ w
            return y.reshape(*x.shape[:-1], w.shape[1])
        return F.linear(x, w, mod.bias)

    return forward


@contextlib.contextmanager
def simulate(model: torch.nn.Module, plan: Mapping[str, LayerSim]) -> Iterator[torch.nn.Module]:
    """Temporarily run the named linear layers as fake-quantized INT8 (no weights are copied or changed).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> m = tiny_model("llama")
        >>> with simulate(m, {"model.layers.0.mlp.down_proj": LayerSim("w8a8")}):
        ...     _ = m(input_ids=torch.tensor([[1, 2, 3]]))
    """
    patched = []
    try:
        for name, sim in plan.items():
            mod = model.get_submodule(name)
            if not is_linear(mod):
                raise BadInputError(f"{name} is a {type(mod).__name__}, not a linear layer: only Linear/Conv1D can be simulated")
            mod.forward = _sim_forward(mod, sim)
            patched.append(mod)
        yield model
    finally:
        for mod in patched:
            with contextlib.suppress(AttributeError):
                del mod.forward


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class Evaluator:
    """Scores a model on fixed token batches against its own float outputs (computed once, cached).

    The float log-probabilities are cached for the batches (``tokens × vocab`` float32), so keep the
    calibration slice modest (the default budget search uses ~1k tokens: ~200 MB for a 49k vocab).

    Example:
        >>> from llmpack.testing import tiny_model
        >>> m = tiny_model("llama")
        >>> ev = Evaluator(m, [torch.randint(0, 256, (1, 32))])
        >>> ev().kl == 0.0
        True
    """

    def __init__(self, model: torch.nn.Module, batches: Sequence[torch.Tensor]) -> None:
        self.model = model
        self.batches = list(batches)
        self.device = _model_device(model)
        self._ref: list[torch.Tensor] = []
        nll, n = 0.0, 0
        with torch.no_grad():
            for b in self.batches:
                logp = self._logprobs(b)
                self._ref.append(logp)
                nll += float(-logp.gather(-1, b[0, 1:].to(logp.device).unsqueeze(-1)).sum())
                n += b.shape[1] - 1
        self.ntokens = n
        self.base_ppl = math.exp(nll / max(n, 1))

    def _logprobs(self, b: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=b.to(self.device))
        logits = out.logits if hasattr(out, "logits") else out[0]
        return torch.log_softmax(logits[0, :-1].float(), dim=-1)

    @torch.no_grad()
    def __call__(self) -> EvalResult:
        """Evaluate the model as it currently runs (e.g. inside :func:`simulate`)."""
        nll, kl, agree, n = 0.0, 0.0, 0, 0
        for b, ref in zip(self.batches, self._ref):
            logp = self._logprobs(b)
            tgt = b[0, 1:].to(logp.device).unsqueeze(-1)
            nll += float(-logp.gather(-1, tgt).sum())
            kl += float((ref.exp() * (ref - logp)).sum())
            agree += int((ref.argmax(-1) == logp.argmax(-1)).sum())
            n += ref.shape[0]
        return EvalResult(ppl=math.exp(nll / max(n, 1)), base_ppl=self.base_ppl, kl=kl / max(n, 1), top1=agree / max(n, 1))
