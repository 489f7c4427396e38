"""INT8 runtime modules: :class:`Int8Linear` (W8A8 and W8A16), :class:`Int8Embedding`, and
:func:`swap_quantized_modules`, which ``llmpack.load`` calls on a meta-device model.

State-dict layout (compressed-tensors ``int-quantized``, see ``docs/int8-format.md``):
``P.weight`` int8 ``[out, in]`` and ``P.weight_scale`` ``[out, 1]`` in the model's float dtype, plus
``P.bias`` when the layer has one. GPT-2 ``Conv1D`` layers are stored in the same ``[out, in]``
layout (transposed once at quantization time), so one module serves both.

Kernels (chosen once per process, override with ``LLMPACK_INT8_KERNEL``):

* ``int_mm``: ``torch._int_mm`` (int8 x int8 -> int32), exact. Used on CUDA (when ``K`` and ``N``
  are multiples of 8; ``M <= 16`` is padded) and on CPUs with VNNI / AMX int8 instructions.
* ``onednn``: the AVX2 kernel, for CPUs without VNNI. Their ``u8 x s8`` instruction saturates 16-bit
  pair sums, so activations use 129 levels (``[-64, 64]``, about 7 bits) to stay exact, spanning each
  token's own ``[min, max]`` (centred: one-sided inputs such as GELU outputs keep 8 bits' resolution);
  ``torch._int_mm`` on such CPUs is a slow reference loop (~20x slower than FP32, measured). It runs
  llmpack's native kernels (:mod:`llmpack.runtime.native`: per-token quantization, int8 matmul and
  epilogue in one call, compiled on first use) and, where they cannot be built, the same arithmetic in
  PyTorch around oneDNN's int8 matmul (``torch.ops.onednn.qlinear_pointwise``; inputs of at most
  :data:`FBGEMM_MAX_TOKENS` tokens through FBGEMM's fused dynamic int8 linear, per token by normalising
  each token first). :func:`prepare_int8` lets shared-input siblings (q/k/v, gate/up) quantize their
  input once.
* ``dequant``: compressed-tensors' reference arithmetic (activations and weights dequantized, one
  float matmul); the fallback for shapes or devices the integer kernels refuse. Results equal the
  integer kernels up to float rounding, and transformers + compressed-tensors bit for bit.

Example:
    >>> import torch
    >>> lin = torch.nn.Linear(64, 32)
    >>> q = Int8Linear.from_float(lin)
    >>> x = torch.randn(2, 5, 64)
    >>> q(x).shape
    torch.Size([2, 5, 32])
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any, Collection, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from llmpack.errors import BadInputError, ConfigError
from llmpack.quant.int8 import SCALE_EPS, absmax, int8_per_channel, midrange, quantize_per_token, sqnr_db

__all__ = [
    "KERNELS",
    "FBGEMM_MAX_TOKENS",
    "SIBLING_GROUPS",
    "ENV_KERNEL",
    "Int8Linear",
    "Int8Embedding",
    "TiedInt8Head",
    "cpu_int8_kernel",
    "swap_quantized_modules",
    "is_conv1d",
    "retie_int8_heads",
    "quantized_module_names",
    "iter_int8_linears",
    "prepare_int8",
    "compile_int8",
    "avx2_act_bits",
    "ENV_ACT_BITS",
    "NORM_FED",
    "ATTN_OUT",
    "act_bits_for",
]

ENV_KERNEL = "LLMPACK_INT8_KERNEL"
KERNELS = ("int_mm", "onednn", "dequant")
ENV_ACT_BITS = "LLMPACK_AVX2_ACT_BITS"
"""``7``, ``8`` or ``auto`` (default): activation bits of W8A8 layers on the native AVX2 kernels (see
:func:`avx2_act_bits`)."""

NORM_FED = frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj", "W_pack", "gate_proj", "up_proj", "gate_up_proj",
                      "w1", "w3", "c_attn", "c_fc", "query", "key", "value", "fc1"})
"""Child names of linear layers that read a normalization's output (attention and MLP inputs): 7-bit tokens
on the native AVX2 kernels with ``LLMPACK_AVX2_ACT_BITS=auto`` (see :func:`act_bits_for`)."""

ATTN_OUT = frozenset({"o_proj", "out_proj", "attn.c_proj", "attention.dense", "self_attention.dense",
                      "attention.output.dense"})
"""Names (child, or parent.child) of attention output projections: 7-bit tokens with ``auto`` too."""


def act_bits_for(name: str) -> int:
    """Token width of the W8A8 layer ``name`` on the native AVX2 kernels with ``LLMPACK_AVX2_ACT_BITS=auto``:
    7 for attention and MLP inputs (:data:`NORM_FED`) and attention outputs (:data:`ATTN_OUT`), 8 for
    MLP outputs (``down_proj``, GPT-2's ``mlp.c_proj``, ``fc2``, ...) and layers of unknown role.

    The MLP output's input (the gated or GELU'd hidden state) carries the largest outliers; 8 bits there
    buy most of what 8 bits everywhere would, at a quarter to a third of the matmul work (measured on the
    ``int8_cpu`` inputs, 1024 tokens, KL vs FP32 / share of W8A8 multiplies at 8 bits: SmolLM2 all 7-bit
    0.0189, MLP outputs 0.0127 / 25 %, MLP and attention outputs 0.0117 / 34 %, all 8-bit 0.0087; GPT-2
    0.000223, 0.000179 / 33 %, 0.000168 / 42 %, 0.000110). 8 bits cost 20-45 % more per multiply.

    Example:
        >>> act_bits_for("model.layers.0.mlp.down_proj"), act_bits_for("model.layers.0.self_attn.o_proj")
        (8, 7)
        >>> act_bits_for("transformer.h.0.mlp.c_proj"), act_bits_for("transformer.h.0.attn.c_proj")
        (8, 7)
    """
    parts = name.split(".")
    tails = {".".join(parts[-n:]) for n in (1, 2, 3)}
    return 7 if parts[-1] in NORM_FED or tails & ATTN_OUT else 8


# AVX2 oneDNN kernel: activations in [-64, 64] (+64 zero point -> u8 in [0, 128]); 128 * 127 * 2 < 2**15,
# so the u8*s8 pair sums of vpmaddubsw never saturate.
_ONEDNN_QMAX = 64


def is_conv1d(module: nn.Module) -> bool:
    """True for transformers' ``Conv1D`` (GPT-2 style, weight stored ``[in, out]``)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def cpu_int8_kernel() -> str:
    """The int8 kernel used for W8A8 on this CPU: ``int_mm``, ``onednn`` or ``dequant``.

    ``LLMPACK_INT8_KERNEL`` overrides the automatic choice (VNNI/AMX -> ``int_mm``; else ``onednn``
    when PyTorch has it; else ``dequant``).

    Example:
        >>> cpu_int8_kernel() in KERNELS
        True
    """
    forced = os.environ.get(ENV_KERNEL, "").strip().lower()
    if forced:
        if forced not in KERNELS:
            raise ConfigError(f"{ENV_KERNEL}={forced!r} is not a kernel: choose one of {', '.join(KERNELS)}")
        return forced
    flags = _cpu_flags()
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8", "avx512vnni"}:
        return "int_mm"
    if _onednn_available():
        return "onednn"
    # Non-x86 (e.g. ARM): _int_mm has optimized paths there too; keep it exact.
    return "int_mm" if not flags else "dequant"


@functools.lru_cache(maxsize=None)
def avx2_act_bits() -> int | None:
    """Activation bits forced on every W8A8 layer of the native AVX2 kernels by ``LLMPACK_AVX2_ACT_BITS``:
    7 (129 levels centred on each token) or 8 (255 levels, the int8 format's own precision, 20-45 % slower
    matmuls: AVX2 without VNNI needs one more instruction per multiply); ``None`` for ``auto`` (the
    default), where each layer uses its own ``act_bits`` (set by :func:`prepare_int8`, see
    :func:`act_bits_for`). The PyTorch fallback always uses 7.

    Example:
        >>> avx2_act_bits() in (None, 7, 8)
        True
    """
    raw = os.environ.get(ENV_ACT_BITS, "").strip().lower() or "auto"
    if raw not in ("7", "8", "auto"):
        raise ConfigError(f"{ENV_ACT_BITS}={raw!r} is not an activation width: choose 7, 8 or auto")
    return None if raw == "auto" else int(raw)


@functools.lru_cache(maxsize=None)
def _onednn_available() -> bool:
    try:
        w = torch.zeros(8, 8, dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(w, [1, 8])
        torch.ops.onednn.qlinear_pointwise(
            torch.zeros(1, 8, dtype=torch.uint8), 1.0, 64, packed, torch.ones(8), torch.zeros(8, dtype=torch.long),
            None, 1.0, 0, torch.float32, "none", [], "",
        )
        return True
    except (RuntimeError, AttributeError):
        return False


FBGEMM_MAX_TOKENS = 64
"""On the AVX2 (``onednn``) kernel's PyTorch fallback (no native kernels), inputs of at most this many
tokens (decode steps, short prompts) run through FBGEMM's dynamic int8 linear instead of oneDNN: 2-4x
faster at 1-32 tokens, even at ~128, slower beyond (measured on SmolLM2 and GPT-2 shapes)."""


@functools.lru_cache(maxsize=None)
def _fbgemm_available() -> bool:
    """FBGEMM's dynamic int8 linear runs here, and keeps integer inputs in ``[-64, 63]`` exact.

    (PyTorch has deprecated its quantized-tensor API; when it is gone, the oneDNN kernel serves every size.)
    """
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randint(-127, 128, (16, 8), dtype=torch.int8, generator=g)
        x = torch.randint(-64, 64, (2, 8), generator=g).float()
        y = torch.ops.quantized.linear_dynamic(torch.cat([x, _range_row(8)]), _fbgemm_pack(w, torch.ones(16)), True)
        return bool(torch.equal(y[:2], x @ w.float().t()))
    except (RuntimeError, AttributeError):
        return False


def _fbgemm_pack(weight: torch.Tensor, scale: torch.Tensor) -> Any:
    """FBGEMM's packed form of an int8 ``[out, in]`` weight with per-output-channel ``scale`` (exact)."""
    out = weight.shape[0]
    with warnings.catch_warnings():  # "quantized tensor creation functions are deprecated" (we probe for them)
        warnings.simplefilter("ignore", UserWarning)
        wq = torch._make_per_channel_quantized_tensor(
            weight.contiguous(), scale.reshape(-1).double(), torch.zeros(out, dtype=torch.long), 0
        )
        return torch.ops.quantized.linear_prepack(wq, None)


def _fbgemm_w8a8(xf: torch.Tensor, packed: Any, wsum: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """W8A8 through FBGEMM's fused dynamic int8 linear, per token: each token is centred and divided by its
    half-range first (:func:`_centre`), so FBGEMM's per-tensor activation range is every token's own
    (7 bits, like the oneDNN path); ``wsum`` (:func:`_weight_sums`) adds the centres back."""
    centre, half = _centre(xf)
    y = torch.ops.quantized.linear_dynamic(xf.sub(centre).div_(half), packed, True).mul_(half)
    y.addr_(centre.reshape(-1), wsum)
    return y if bias is None else y.add_(bias)


def _centre(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token (row): centre ``(max + min) / 2`` and half-range ``(max - min) / 2`` (at least
    ``SCALE_EPS``), both ``[tokens, 1]``: the AVX2 kernels quantize ``x - centre`` over ``[-half, half]``, so
    the 129 levels of their 7-bit tokens span each token's own ``[min, max]``."""
    centre, half = midrange(xf, 1)
    return centre, half.clamp_min_(SCALE_EPS)


def _weight_sums(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``sum_k W[n, k] * scale[n]`` as float32 ``[out]``: what a token's centre contributes per unit."""
    return (weight.sum(1, dtype=torch.int64).double() * scale.reshape(-1).double()).float()


def _small_batch(tokens: int) -> bool:
    """Use FBGEMM (not oneDNN) for this many tokens on the AVX2 kernel (never under torch.compile)."""
    return tokens <= FBGEMM_MAX_TOKENS and not torch.compiler.is_compiling() and _fbgemm_available()


class Int8Linear(nn.Module):
    """A linear layer with int8 per-output-channel weights; W8A8 (dynamic per-token int8 activations)
    or W8A16 (``act_quant=False``: weights dequantized, activations stay float).

    Computes ``y = x W^T + b`` like ``nn.Linear`` (and like GPT-2's ``Conv1D`` when it replaces one:
    ``conv1d_layout=True`` only records that origin; the stored weight is ``[out, in]`` either way).
    ``act_bits`` (7 or 8) is the token width on the native AVX2 kernels (CPUs without VNNI): 7 by default,
    set by :func:`prepare_int8` from the layer's role (:func:`act_bits_for`), overridden for every layer by
    ``LLMPACK_AVX2_ACT_BITS``; it is a runtime setting, not stored in the files.

    Args:
        in_features: input size.
        out_features: output size.
        bias: whether the layer has a bias.
        act_quant: quantize activations per token (W8A8); ``False`` keeps them float (W8A16).
        conv1d_layout: the layer replaced a ``Conv1D`` (for :meth:`to_float` and reporting).
        dtype: float dtype of ``weight_scale`` and ``bias``.
        device: where to allocate (``"meta"`` while loading).

    Example:
        >>> m = Int8Linear(8, 4, bias=True)
        >>> m.weight.dtype, tuple(m.weight_scale.shape)
        (torch.int8, (4, 1))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        act_quant: bool = True,
        conv1d_layout: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.act_quant = bool(act_quant)
        self.conv1d_layout = bool(conv1d_layout)
        self.weight = nn.Parameter(
            torch.zeros(out_features, in_features, dtype=torch.int8, device=device), requires_grad=False
        )
        self.weight_scale = nn.Parameter(torch.ones(out_features, 1, dtype=dtype, device=device), requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._cache_key: tuple[Any, ...] | None = None
        self._cache: dict[str, Any] = {}
        self._group: _SiblingGroup | None = None  # set by prepare_int8 (shared-input siblings, e.g. q/k/v)
        self.act_bits = 7  # tokens on the native AVX2 kernels; prepare_int8 sets act_bits_for(name)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_float(
        cls, module: nn.Module, *, act_quant: bool = True, name: str = "weight", scale_dtype: torch.dtype | None = None
    ) -> "Int8Linear":
        """Quantize an ``nn.Linear`` or ``Conv1D`` (per output channel, symmetric).

        Raises:
            NonFiniteWeightError: the weight holds NaN/Inf (``name`` is used in the message).

        Example:
            >>> Int8Linear.from_float(torch.nn.Linear(4, 2), act_quant=False).act_quant
            False
        """
        w = module.weight.detach()
        conv = is_conv1d(module)
        if conv:
            w = w.t()  # Conv1D stores [in, out]; quantize per output channel in [out, in]
        elif not isinstance(module, nn.Linear):
            raise BadInputError(f"{name}: cannot quantize a {type(module).__name__} as Int8Linear (Linear/Conv1D only)")
        sdt = scale_dtype or w.dtype
        q, scale = int8_per_channel(w, 0, scale_dtype=sdt, name=name)
        bias = getattr(module, "bias", None)
        out = cls(
            q.shape[1], q.shape[0], bias is not None, act_quant=act_quant, conv1d_layout=conv, dtype=sdt, device="meta"
        )
        out.weight = nn.Parameter(q.contiguous(), requires_grad=False)
        out.weight_scale = nn.Parameter(scale.contiguous(), requires_grad=False)
        if bias is not None:
            out.bias = nn.Parameter(bias.detach().to(sdt).clone(), requires_grad=False)
        return out

    def to_float(self) -> nn.Module:
        """The dequantized float layer (``nn.Linear``, or ``Conv1D`` when it replaced one)."""
        w = self.weight.float() * self.weight_scale.float()
        dt = self.weight_scale.dtype
        if self.conv1d_layout:
            from transformers.pytorch_utils import Conv1D

            m: nn.Module = Conv1D(self.out_features, self.in_features)
            m.weight = nn.Parameter(w.t().contiguous().to(dt))
            if self.bias is not None:
                m.bias = nn.Parameter(self.bias.detach().clone())
            return m
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=dt)
        lin.weight = nn.Parameter(w.to(dt))
        if self.bias is not None:
            lin.bias = nn.Parameter(self.bias.detach().clone())
        return lin

    def extra_repr(self) -> str:
        mode = "w8a8" if self.act_quant else "w8a16"
        extra = ", from_conv1d=True" if self.conv1d_layout else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {mode}{extra}"

    # ------------------------------------------------------------------ forward
    def _prepared(self) -> dict[str, Any]:
        """Per-weight cached views (scale row, packed oneDNN weight); rebuilt when tensors are reassigned."""
        if torch.compiler.is_compiling() and self._cache and self._cache_key[2] == self.weight.device:
            # Under torch.compile the caches built by prepare() (llmpack.load and llmpack.quantize call it)
            # are used as they are: the version checks below would break the graph.
            return self._cache
        s = self.weight_scale
        key = self._weights_key()
        if key != self._cache_key:
            b = self.bias
            self._cache = {
                "scale_row": s.detach().float().reshape(1, -1).contiguous(),
                "bias_f32": None if b is None else b.detach().float().contiguous(),
            }
            self._cache_key = key
        return self._cache

    def _weights_key(self) -> tuple[Any, ...]:
        """Identity of the current weight/scale/bias tensors (changes when they are reassigned or edited)."""
        params = self._parameters  # (not self.weight: nn.Module.__getattr__ is slow on a per-call path)
        w, s, b = params["weight"], params["weight_scale"], params["bias"]
        # Inference tensors (made under torch.inference_mode) have no version counter.
        return (w.data_ptr(), s.data_ptr(), w.device, s.dtype,
                None if w.is_inference() else w._version, None if s.is_inference() else s._version,
                None if b is None else b.data_ptr())

    def prepare(self) -> "Int8Linear":
        """Build the cached kernel inputs now (float scale row and bias; on AVX2 CPUs the packed weight,
        for llmpack's native kernels or, where they are unavailable, for oneDNN) instead of on the first
        forward. :func:`compile_int8` calls it before compiling.

        Example:
            >>> Int8Linear.from_float(torch.nn.Linear(8, 4)).prepare().out_features
            4
        """
        cache = self._prepared()
        cache["cpu_kernel"] = cpu_int8_kernel()
        cache["act_bits"] = self._act_bits()
        if self.weight.device.type != "cpu" or cache["cpu_kernel"] != "onednn":
            return self
        ops = _native_ops()
        if ops is not None:
            self._avx2_packed(cache, ops)
        elif self.act_quant and "onednn_args" not in cache:  # (the cache is rebuilt when weights change)
            _onednn_pack(self, cache)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = x W^T + b`` with int8 weights (and int8 per-token activations when ``act_quant``)."""
        if not torch.compiler.is_compiling():
            group = self._group
            if group is not None:
                y = group.output(self, x)
                if y is not None:
                    return y
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        y = self._native_forward(x2)
        if y is None:
            y = self._forward_w8a8(x2) if self.act_quant else self._forward_w8a16(x2)
        return y.reshape(*shape[:-1], self.out_features)

    def _native_forward(self, x2: torch.Tensor) -> torch.Tensor | None:
        """``x2 W^T + b`` through llmpack's native AVX2 kernels, or ``None`` where they do not serve the call.

        Weight-only layers use them (two-term ~13-bit activations, reading the int8 weight as it is) only for
        few tokens (decode), where converting the whole weight to float per call dominates. Long inputs keep
        exact float activations: weight-only layers are the ones with massive activation outliers, where 13
        bits of the token's absmax lose the small values (SmolLM2 budget output, eval text: ppl 14.40
        two-term vs 14.20 float, measured)."""
        if x2.device.type != "cpu" or (not self.act_quant and x2.shape[0] > FBGEMM_MAX_TOKENS):
            return None
        cache = self._prepared()
        if self._kernel(x2) != "onednn":
            return None
        packed = self._native_packed(cache)
        if packed is None:
            return None
        xf = x2.float().contiguous()
        if self.act_quant:
            y = torch.ops.llmpack_avx2.w8a8(xf, [packed[0]], [packed[1]], [packed[2]], [cache["bias_f32"]],
                                            self._act_bits())[0]
        else:
            y = torch.ops.llmpack_avx2.w8a16(xf, *packed, cache["bias_f32"])
        return y.to(x2.dtype)

    def _forward_w8a16(self, x2: torch.Tensor) -> torch.Tensor:
        cache = self._prepared()
        dt = x2.dtype
        if self.weight.device.type == "cpu" and self._kernel(x2) == "onednn" and _small_batch(x2.shape[0]):
            # Few tokens (decode): converting the whole weight to float per call dominates; FBGEMM reads it
            # in int8 with ~13-bit two-term activations (the weight-only result, see _fbgemm_w8a16).
            y = _fbgemm_w8a16(x2.float(), self._fbgemm_packed(cache))
            return (y if cache["bias_f32"] is None else y.add_(cache["bias_f32"])).to(dt)
        # Per-output-channel scales commute with the matmul: one int8->float conversion of W, then a row scale.
        y = F.linear(x2, self.weight.to(dt))
        if self.bias is not None:
            return torch.addcmul(self.bias.to(dt), y, cache["scale_row"].to(dt))  # one pass: b + y * s
        return y.mul_(cache["scale_row"].to(dt))

    def _avx2_packed(self, cache: dict[str, Any], ops: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The native kernels' packed weight, built on first use (see :func:`_avx2_pack`)."""
        if "avx2" not in cache:
            cache["avx2"] = _avx2_pack(ops, self.weight.detach(), cache["scale_row"])
        return cache["avx2"]

    def _native_packed(self, cache: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The packed weight when the native kernels serve this call (under torch.compile: when
        :meth:`prepare` packed it; the ops are then opaque to inductor)."""
        if torch.compiler.is_compiling():
            return cache.get("avx2")
        ops = _native_ops()
        return None if ops is None else self._avx2_packed(cache, ops)

    def _fbgemm_packed(self, cache: dict[str, Any]) -> Any:
        """FBGEMM's packed weight, built on first use: only workloads with short inputs pay its memory."""
        if "fbgemm" not in cache:
            cache["fbgemm"] = _fbgemm_pack(self.weight.detach(), cache["scale_row"])
        return cache["fbgemm"]

    def _weight_sums(self, cache: dict[str, Any]) -> torch.Tensor:
        """:func:`_weight_sums` of this layer (the centres' term of the PyTorch fallback), built on first use."""
        if "wsum" not in cache:
            cache["wsum"] = _weight_sums(self.weight.detach(), cache["scale_row"])
        return cache["wsum"]

    def _act_bits(self) -> int:
        """Activation bits on the native AVX2 kernels: the environment's, else this layer's own."""
        if torch.compiler.is_compiling() and "act_bits" in self._cache:
            return self._cache["act_bits"]  # read by prepare(): keeps lru_cache out of dynamo
        return avx2_act_bits() or self.act_bits

    def _kernel(self, x2: torch.Tensor) -> str:
        if x2.device.type == "cuda":
            k, n = self.in_features, self.out_features
            return "int_mm" if (k % 8 == 0 and n % 8 == 0) else "dequant"
        if x2.device.type == "cpu":
            if torch.compiler.is_compiling() and "cpu_kernel" in self._cache:
                return self._cache["cpu_kernel"]  # chosen by prepare(); keeps lru_cache out of dynamo
            return cpu_int8_kernel()
        return "dequant"

    def _forward_w8a8(self, x2: torch.Tensor) -> torch.Tensor:
        cache = self._prepared()
        kernel = self._kernel(x2)
        dt = x2.dtype
        xf = x2.float()
        bias = cache["bias_f32"]
        if kernel == "onednn":
            if _small_batch(xf.shape[0]):
                return _fbgemm_w8a8(xf, self._fbgemm_packed(cache), self._weight_sums(cache), bias).to(dt)
            if "onednn_args" not in cache:
                _onednn_pack(self, cache)
            return _onednn_w8a8(xf, cache["onednn_args"], self._weight_sums(cache), bias).to(dt)
        # compressed-tensors semantics: absmax / 127.5, clamp to [-128, 127]
        xq8, a_scale = quantize_per_token(xf)
        if kernel == "dequant":
            # compressed-tensors' own fake-quant arithmetic, op for op (dequantize activations and
            # weights, one float matmul with the bias inside), so this reference kernel reproduces
            # transformers + compressed-tensors bit for bit on the same CPU and thread count.
            w = self.weight.float().mul_(cache["scale_row"].reshape(-1, 1))
            return F.linear(xq8.float().mul_(a_scale), w, bias).to(dt)
        m = x2.shape[0]
        if x2.device.type == "cuda" and m <= 16:
            xq8 = F.pad(xq8, (0, 0, 0, 17 - m))
        y = torch._int_mm(xq8, self.weight.t())[:m] * a_scale  # int32 * float32 -> float32
        y.mul_(cache["scale_row"])
        if bias is not None:
            y.add_(bias)
        return y.to(dt)


def _onednn_w8a8(xf: torch.Tensor, onednn_args: tuple[torch.Tensor, ...], wsum: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """W8A8 through oneDNN's u8 x s8 matmul on AVX2 (activations in ``[-64, 64]``, zero point 64), float32 out.

    Quantization: ``round((x - centre) * 64 / half)`` per token (half to even, :func:`_centre`), stored as
    ``u8 = q + 64``; the weight scale and the zero-point correction are applied inside oneDNN, the token
    scale, the centre's term (``wsum``, :func:`_weight_sums`) and the bias after it.
    """
    return _onednn_w8a8_shared(xf, [(onednn_args, wsum, bias)])[0]


def _onednn_w8a8_shared(
    xf: torch.Tensor, layers: list[tuple[tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor | None]]
) -> list[torch.Tensor]:
    """:func:`_onednn_w8a8` for several layers reading the same input, which is quantized once."""
    xu8, scale, centre = _centred_u8(xf)
    centre = centre.reshape(-1)
    outs = []
    for onednn_args, wsum, bias in layers:
        # Epilogue in place (beats one broadcasting addcmul by ~2x on CPU, measured): y * token scale
        # + centre x weight sums (+ bias).
        y = _onednn_qlinear(xu8, onednn_args).mul_(scale).addr_(centre, wsum)
        outs.append(y if bias is None else y.add_(bias))
    return outs


@functools.lru_cache(maxsize=None)
def _native_ops() -> Any | None:
    """llmpack's native AVX2 kernels (:func:`llmpack.runtime.native.avx2_ops`), once checked against the
    exact integer result here; ``None`` where they are off, cannot be built, or are wrong."""
    from llmpack.runtime import native

    ops = native.avx2_ops()
    if ops is None:
        return None
    g = torch.Generator().manual_seed(0)
    w = torch.randint(-128, 128, (37, 45), dtype=torch.int8, generator=g)
    scale = torch.rand(37, generator=g) / 50 + 1e-3
    bias = torch.randn(37, generator=g)
    x = torch.randn(7, 45, generator=g) * 3
    packed = _avx2_pack(ops, w, scale)
    w16 = ops.w8a16(x, *packed, bias)
    exact16 = x.double() @ (w.double() * scale.double().reshape(-1, 1)).t() + bias.double()
    if all(torch.allclose(ops.w8a8(x, [packed[0]], [packed[1]], [packed[2]], [bias], bits)[0].double(),
                          w8a8_reference(x, w, scale, bias, bits), rtol=1e-5, atol=1e-5) for bits in (7, 8)) \
            and sqnr_db(exact16, w16.double()) > 60:
        return ops
    native.mark_unusable("not used: wrong results on this machine")
    warnings.warn("llmpack: the native int8 kernels give wrong results on this machine; using the PyTorch "
                  "path.", RuntimeWarning, stacklevel=2)
    return None


def _avx2_pack(ops: Any, weight: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(panels, ``64 * row sums`` as int32, float32 scales) of an int8 ``[out, in]`` weight for the native
    kernels; the panels take the weight's size again (like oneDNN's packed copy, which they replace)."""
    panels, corr = ops.pack(weight)
    return panels, corr, scale.reshape(-1).float().contiguous()


def w8a8_reference(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                   bias: torch.Tensor | None = None, act_bits: int = 7) -> torch.Tensor:
    """What the AVX2 kernels compute, in float64: tokens quantized to ``round((x - centre) * Q / half)``
    (:func:`_centre`; ``Q`` = 64 for ``act_bits=7``, 127 for 8), an exact integer product, then the scales,
    the centres' term (and bias). The reference the native kernels are checked against.

    Example:
        >>> w = torch.tensor([[1, -2], [3, 4]], dtype=torch.int8)
        >>> y = w8a8_reference(torch.tensor([[0.5, -1.0]]), w, torch.tensor([0.1, 0.2]))
        >>> [round(v, 6) for v in y[0].tolist()]
        [0.25, -0.5]
    """
    q, tok_scale, centre = _centred_q(x.float(), 127 if act_bits == 8 else _ONEDNN_QMAX)
    w = weight.double()
    y = (q.double() @ w.t()) * tok_scale.double() * scale.double().reshape(1, -1)
    y += centre.double() * (w.sum(1) * scale.double().reshape(-1)).reshape(1, -1)
    return y if bias is None else y + bias.double()


def _centred_q(xf: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(round((x - centre) * qmax / half)`` (float, integer-valued, in ``[-qmax, qmax]``), token scales
    ``half / qmax``, centres``)``, the last two ``[tokens, 1]`` (:func:`_centre`); the native kernels'
    float operations, in the same order."""
    centre, half = _centre(xf)
    inv = torch.reciprocal(half).mul_(qmax)  # [tokens, 1]: tiny
    return xf.sub(centre).mul_(inv).round_(), half.div_(qmax), centre


def _centred_u8(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_centred_q` with 7-bit tokens stored as ``q + 64``, uint8 in ``[0, 128]``."""
    q, scale, centre = _centred_q(xf, _ONEDNN_QMAX)
    # float -> int8 is vectorised on CPU (float -> uint8 is not: 4x slower, measured); the int8 bytes
    # viewed as uint8 plus 64 (mod 256) are q + 64 in [0, 128], since q is in [-64, 64] by construction.
    return q.to(torch.int8).view(torch.uint8).add_(_ONEDNN_QMAX), scale, centre


def _onednn_qlinear(xu8: torch.Tensor, onednn_args: tuple[torch.Tensor, ...]) -> torch.Tensor:
    # Under torch.compile the custom op keeps the call opaque to inductor (its own qlinear lowering
    # wants frozen constants); quantization and epilogue around it still fuse.
    qlinear = torch.ops.llmpack.onednn_qlinear if torch.compiler.is_compiling() else _onednn_qlinear_impl
    return qlinear(xu8, *onednn_args)


def _two_terms(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split each token in two 7-bit terms, ``x ~ q1 * s1 + q2 * s2``: ``q1, q2`` integers in ``[-64, 63]``
    (as float), ``q2`` quantizing the rounding error of ``q1``. The error is at most ``amax / 8192`` per token
    (about 13 bits, finer than bfloat16's 8-bit mantissa)."""
    a1 = absmax(xf, 1).clamp_min_(SCALE_EPS)
    s1 = a1.div_(_ONEDNN_QMAX)
    q1 = torch.round(xf / s1).clamp_(-_ONEDNN_QMAX, _ONEDNN_QMAX - 1)
    rest = xf - q1 * s1
    s2 = absmax(rest, 1).clamp_min_(SCALE_EPS).div_(_ONEDNN_QMAX)
    q2 = torch.round(rest / s2).clamp_(-_ONEDNN_QMAX, _ONEDNN_QMAX - 1)
    return q1, s1, q2, s2


def _combine(y: torch.Tensor, tokens: int, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
    """``y[:tokens] * s1 + y[tokens:2 * tokens] * s2`` (the two terms' products), in place."""
    return y[:tokens].mul_(s1).add_(y[tokens:2 * tokens].mul_(s2))


def _onednn_w8a16(xf: torch.Tensor, onednn_args: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Weight-only int8 (float activations) through the u8 x s8 matmul, float32 out: both
    :func:`_two_terms` go through one matmul, so the weight is read once (what a memory-bound output head
    pays for), and the result is the float product up to the weight's int8."""
    q1, s1, q2, s2 = _two_terms(xf)
    xu8 = torch.cat([q1, q2]).to(torch.int8).view(torch.uint8).add_(_ONEDNN_QMAX)
    return _combine(_onednn_qlinear(xu8, onednn_args), xf.shape[0], s1, s2)


def _fbgemm_w8a16(xf: torch.Tensor, packed: Any) -> torch.Tensor:
    """:func:`_onednn_w8a16` through FBGEMM (much faster for a few tokens). FBGEMM picks its activation
    range from the data; a last row holding -64 and 63 makes it exactly ``[-64, 63]`` (scale 1, zero
    point 64), so the integer terms pass unchanged (checked by :func:`_fbgemm_available`)."""
    q1, s1, q2, s2 = _two_terms(xf)
    y = torch.ops.quantized.linear_dynamic(torch.cat([q1, q2, _range_row(xf.shape[1])]), packed, True)
    return _combine(y, xf.shape[0], s1, s2)


def _range_row(k: int) -> torch.Tensor:
    row = torch.zeros(1, k)
    row[0, 0], row[0, -1] = -_ONEDNN_QMAX, _ONEDNN_QMAX - 1
    return row


def _onednn_pack(mod: Int8Linear, cache: dict[str, Any]) -> None:
    """oneDNN's packed int8 weight and the constant tensors its call needs, stored in ``cache`` (with the
    weight sums of the centres' term: the zero-point correction is exactly -64 times them)."""
    cache["onednn_args"] = _onednn_args(mod.weight.detach(), cache["scale_row"])
    cache.setdefault("wsum", cache["onednn_args"][3] * (-1.0 / _ONEDNN_QMAX))


def _onednn_args(weight: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What :func:`_onednn_qlinear_impl` takes after the activations: packed int8 ``[out, in]`` weight,
    float32 per-channel scale, zero points, zero-point correction."""
    packed = torch.ops.onednn.qlinear_prepack(weight, None)
    w_zp = torch.zeros(weight.shape[0], dtype=torch.long)
    scale_vec = scale.reshape(-1).float().contiguous()
    # The activation zero point (64) is not given to oneDNN, which would re-sum the weight on every call
    # (measured 5-15 % of the kernel time); its contribution -64 * sum_k W[n, k] * scale[n] is constant,
    # so it is passed as the bias (oneDNN adds it after scaling, in float).
    colsum = weight.sum(1, dtype=torch.int64).double()
    comp = (-_ONEDNN_QMAX * colsum * scale_vec.double()).float().contiguous()
    return packed, scale_vec, w_zp, comp


def _onednn_qlinear_impl(
    xu8: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor, comp: torch.Tensor
) -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(
        xu8, 1.0, 0, packed, w_scale, w_zp, comp, 1.0, 0, torch.float32, "none", [], ""
    )


@torch.library.custom_op("llmpack::onednn_qlinear", mutates_args=())
def _onednn_qlinear_op(
    xu8: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor, comp: torch.Tensor
) -> torch.Tensor:
    """``acc(u8 x s8) * w_scale + comp`` in float32 ``[tokens, out]`` (``comp`` removes the zero point 64)."""
    return _onednn_qlinear_impl(xu8, packed, w_scale, w_zp, comp)


@_onednn_qlinear_op.register_fake
def _(xu8: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
    return xu8.new_empty((xu8.shape[0], w_scale.shape[0]), dtype=torch.float32)


SIBLING_GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),  # Llama, Mistral, Qwen, Gemma, SmolLM, OPT, ...
    ("gate_proj", "up_proj"),        # gated MLPs of the same families
    ("query", "key", "value"),       # BERT-style attention
    ("w1", "w3"),                    # Mixtral-style experts
)
"""Child names of sibling layers that modeling code calls on the same input tensor; on the oneDNN kernel
:func:`prepare_int8` lets each such set quantize its input once (see :class:`_SiblingGroup`)."""


class _SiblingGroup:
    """W8A8 siblings that read the same input (q/k/v, gate/up) share its quantization on the AVX2 kernels.

    The first member called with an input quantizes it once and computes every member's output: in one
    call of the native kernels with each member's own packed weight; on the PyTorch fallback with each
    member's own oneDNN weight, or, for few tokens (decode), as one FBGEMM matmul on the members' weights
    concatenated and packed once on first use (members then never pack their own). The outputs are kept until every member has taken its own (or a new input arrives), and
    are only reused for the very same tensor object (and, outside ``inference_mode``, the same version
    of it). Results equal the separate layers' exactly: activation quantization is per token and the
    accumulation is integer. Members' weights are checked on every call; a change dissolves the group.
    """

    def __init__(self, members: list[Int8Linear]) -> None:
        self.members = members
        self.keys = [m._weights_key() for m in members]
        self._fbgemm: Any = None
        if any(m.bias is not None for m in members):
            self.bias: torch.Tensor | None = torch.cat([
                m._cache["bias_f32"] if m.bias is not None else torch.zeros(m.out_features) for m in members
            ])
        else:
            self.bias = None
        self.slices: dict[int, tuple[int, int]] = {}
        start = 0
        for m in members:
            self.slices[id(m)] = (start, start + m.out_features)
            start += m.out_features
        # (input, its version, outputs, members yet to take theirs), replaced as one tuple so that a
        # thread never pairs one input with another thread's product.
        self._state: tuple[torch.Tensor, int | None, list[torch.Tensor], set[int]] | None = None
        self._index = {id(m): i for i, m in enumerate(members)}

    def _products(self, x2: torch.Tensor) -> list[torch.Tensor]:
        """Every member's output for ``x2``, its quantization done once: one native call with the members'
        own packed weights; on the PyTorch fallback FBGEMM on the concatenated weights for few tokens, else
        each member's own oneDNN weight."""
        ops = _native_ops()  # (groups are bypassed under torch.compile)
        if ops is not None:
            caches = [m._prepared() for m in self.members]
            packs = [m._avx2_packed(c, ops) for m, c in zip(self.members, caches)]
            return ops.w8a8(x2.contiguous(), [p[0] for p in packs], [p[1] for p in packs], [p[2] for p in packs],
                            [c["bias_f32"] for c in caches], max(m._act_bits() for m in self.members))
        if _small_batch(x2.shape[0]):
            if self._fbgemm is None:
                w, s = self._concatenated()
                self._fbgemm = (_fbgemm_pack(w, s), _weight_sums(w, s))
            y = _fbgemm_w8a8(x2, *self._fbgemm, self.bias)
            return [y[:, a:b] for a, b in (self.slices[id(m)] for m in self.members)]
        layers = []
        for m in self.members:
            cache = m._prepared()
            if "onednn_args" not in cache:
                _onednn_pack(m, cache)
            layers.append((cache["onednn_args"], m._weight_sums(cache), cache["bias_f32"]))
        return _onednn_w8a8_shared(x2, layers)

    def _concatenated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' int8 weights and float32 scales, stacked along the output dimension."""
        return (torch.cat([m.weight.detach() for m in self.members]),
                torch.cat([m._prepared()["scale_row"].reshape(-1) for m in self.members]))

    def dissolve(self) -> None:
        """Members go back to running alone (their weights changed)."""
        for m in self.members:
            m._group = None
        self._state = None

    def output(self, member: Int8Linear, x: torch.Tensor) -> torch.Tensor | None:
        """``member(x)`` from the shared product, or ``None`` when the member must run alone."""
        me = id(member)
        if member._weights_key() != self.keys[self._index[me]]:
            self.dissolve()  # a member's weight was replaced or edited: the packed product is stale
            return None
        version = None if x.is_inference() else x._version
        state = self._state
        if state is None or state[0] is not x or state[1] != version or me not in state[3]:
            if x.device.type != "cpu" or cpu_int8_kernel() != "onednn" or x.shape[-1] != member.in_features:
                return None
            if any(m._weights_key() != k for m, k in zip(self.members, self.keys)):
                self.dissolve()
                return None
            state = (x, version, self._products(x.reshape(-1, x.shape[-1]).float()), set(self._index))
            self._state = state
        state[3].discard(me)
        if not state[3] and self._state is state:  # every member has its output: drop the references
            self._state = None
        return state[2][self._index[me]].reshape(*x.shape[:-1], member.out_features).to(x.dtype)


def _group_siblings(model: nn.Module) -> None:
    """Form :class:`_SiblingGroup` s for :data:`SIBLING_GROUPS` (W8A8, same input size, CPU, oneDNN kernel)."""
    if cpu_int8_kernel() != "onednn":
        return
    for parent in model.modules():
        for names in SIBLING_GROUPS:
            mods = [getattr(parent, name, None) for name in names]
            if not all(isinstance(m, Int8Linear) for m in mods):
                continue
            if any(m._group is not None for m in mods):  # already grouped (prepare_int8 called twice)
                continue
            if not all(m.act_quant and m.weight.device.type == "cpu" and m.in_features == mods[0].in_features
                       for m in mods):
                continue
            group = _SiblingGroup(mods)
            for m in mods:
                m._group = group


def prepare_int8(model: nn.Module) -> nn.Module:
    """Build every :class:`Int8Linear`'s cached kernel inputs now (see :meth:`Int8Linear.prepare`); on
    AVX2 CPUs (oneDNN kernel) also let shared-input siblings such as q/k/v and gate/up quantize their input
    once, and give MLP outputs 8-bit tokens there (:func:`act_bits_for`). Swaps transformers' eight-op
    GELU-tanh module and Llama-style RMSNorms for one-pass equivalents, and wide float heads for the
    few-token kernel (:mod:`llmpack.runtime.fused`; same formulas, results equal up to float rounding).

    Example:
        >>> m = torch.nn.Sequential(Int8Linear.from_float(torch.nn.Linear(8, 4)))
        >>> prepare_int8(m) is m
        True
    """
    from llmpack.runtime.fused import fuse_float_modules

    for name, mod in model.named_modules():
        if isinstance(mod, Int8Linear):
            mod.act_bits = act_bits_for(name)
        if isinstance(mod, (Int8Linear, TiedInt8Head)):
            mod.prepare()
    _group_siblings(model)
    fuse_float_modules(model)
    return model


def compile_int8(model: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """``torch.compile(model)`` after :func:`prepare_int8`. Inductor fuses the float parts of the model
    (norms, activations, residual adds) into generated kernels; on AVX2 CPUs the int8 layers stay
    llmpack's native kernels (opaque ops), or, where those are unavailable, inductor also fuses each
    layer's activation quantization and epilogue around oneDNN's int8 matmul.

    The first call of the compiled model compiles (tens of seconds on a small CPU); later calls with
    new input shapes may recompile. Weights must not be replaced afterwards.

    Example:
        >>> m = torch.nn.Sequential(Int8Linear.from_float(torch.nn.Linear(8, 4)))
        >>> callable(compile_int8(m))
        True
    """
    return torch.compile(prepare_int8(model), **compile_kwargs)


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one float scale per row (weight-only).

    Example:
        >>> e = Int8Embedding.from_float(torch.nn.Embedding(10, 4))
        >>> e(torch.tensor([[1, 2]])).shape
        torch.Size([1, 2, 4])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = int(num_embeddings)
        self.embedding_dim = int(embedding_dim)
        self.padding_idx = padding_idx
        self.weight = nn.Parameter(
            torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8, device=device), requires_grad=False
        )
        self.weight_scale = nn.Parameter(torch.ones(num_embeddings, 1, dtype=dtype, device=device), requires_grad=False)

    @classmethod
    def from_float(
        cls, module: nn.Embedding, *, name: str = "weight", scale_dtype: torch.dtype | None = None
    ) -> "Int8Embedding":
        """Quantize an ``nn.Embedding`` per row (symmetric int8)."""
        w = module.weight.detach()
        sdt = scale_dtype or w.dtype
        q, scale = int8_per_channel(w, 0, scale_dtype=sdt, name=name)
        out = cls(q.shape[0], q.shape[1], module.padding_idx, dtype=sdt, device="meta")
        out.weight = nn.Parameter(q.contiguous(), requires_grad=False)
        out.weight_scale = nn.Parameter(scale.contiguous(), requires_grad=False)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 per-row"

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Look up rows and dequantize only those."""
        rows = F.embedding(ids, self.weight)
        scales = F.embedding(ids, self.weight_scale)
        return (rows.to(self.weight_scale.dtype) * scales)


class TiedInt8Head(nn.Module):
    """An output projection that reuses an :class:`Int8Embedding`'s int8 table (tied embeddings):
    ``logits = x (W_q * s)^T``, weight-only. It owns no tensors, so the table is stored once.

    Example:
        >>> emb = Int8Embedding.from_float(torch.nn.Embedding(10, 4))
        >>> TiedInt8Head(emb)(torch.randn(3, 4)).shape
        torch.Size([3, 10])
    """

    def __init__(self, embedding: Int8Embedding) -> None:
        super().__init__()
        # A plain attribute (not a submodule), so state_dict() does not repeat the table.
        object.__setattr__(self, "_embedding", embedding)
        self.in_features = embedding.embedding_dim
        self.out_features = embedding.num_embeddings

        self._cache_key: tuple[Any, ...] | None = None
        self._onednn_args: tuple[torch.Tensor, ...] | None = None
        self._avx2: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._fbgemm: Any = None

    def prepare(self) -> "TiedInt8Head":
        """Pack the int8 table for the CPU kernel now (AVX2 CPUs; :func:`prepare_int8` calls it): for
        llmpack's native kernels, or for oneDNN where they are unavailable.

        Example:
            >>> TiedInt8Head(Int8Embedding.from_float(torch.nn.Embedding(10, 4))).prepare().out_features
            10
        """
        emb = self._embedding
        if emb.weight.device.type == "cpu" and cpu_int8_kernel() == "onednn":
            key = (emb.weight.data_ptr(), emb.weight_scale.data_ptr(), emb.weight_scale.dtype,
                   None if emb.weight.is_inference() else emb.weight._version)
            if key != self._cache_key:
                self._onednn_args = self._avx2 = self._fbgemm = None  # packed on first use
                self._cache_key = key
            ops = _native_ops()
            if ops is not None:
                if self._avx2 is None:
                    self._avx2 = _avx2_pack(ops, emb.weight.detach(), emb.weight_scale.detach())
            elif self._onednn_args is None:
                self._onednn_args = _onednn_args(emb.weight.detach(), emb.weight_scale.detach())
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from the shared int8 table."""
        emb = self._embedding
        dt = x.dtype
        if torch.compiler.is_compiling():  # packed by prepare() before compiling
            onednn_args, native = self._onednn_args, self._avx2
        elif cpu_int8_kernel() == "onednn" and x.device.type == "cpu":  # (re)packs when the table changed
            self.prepare()
            onednn_args, native = self._onednn_args, (self._avx2 if _native_ops() is not None else None)
        else:
            onednn_args = native = None
        if native is not None and x.device.type == "cpu":  # native: two-term activations, one pass over the table
            y = torch.ops.llmpack_avx2.w8a16(x.reshape(-1, self.in_features).float().contiguous(), *native, None)
            return y.reshape(*x.shape[:-1], self.out_features).to(dt)
        if onednn_args is not None and x.device.type == "cpu":
            # AVX2: one int8 matmul that reads the table in int8 (4x less memory traffic than float);
            # converting the whole table to float on every call costs ~7x a float matmul (measured).
            x2 = x.reshape(-1, self.in_features).float()
            if _small_batch(x2.shape[0]):
                if self._fbgemm is None:
                    self._fbgemm = _fbgemm_pack(emb.weight.detach(), emb.weight_scale.detach().float())
                y = _fbgemm_w8a16(x2, self._fbgemm)
            else:
                y = _onednn_w8a16(x2, onednn_args)
            return y.reshape(*x.shape[:-1], self.out_features).to(dt)
        y = F.linear(x, emb.weight.to(dt))
        return y * emb.weight_scale.reshape(1, -1).to(dt)


# ---------------------------------------------------------------------- swapping
def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    if "." in name:
        parent_name, child = name.rsplit(".", 1)
        return model.get_submodule(parent_name), child
    return model, name


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = _get_parent(model, name)
    setattr(parent, child, new)


def _float_dtype_of(module: nn.Module, default: torch.dtype) -> torch.dtype:
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.is_floating_point():
        return w.dtype
    return default


def swap_quantized_modules(
    model: nn.Module,
    qcfg: Mapping[str, Any] | None,
    state_keys: Collection[str],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "meta",
) -> list[str]:
    """Replace the layers that a compressed-tensors checkpoint stores in int8 by llmpack modules.

    A module ``P`` is swapped when ``P.weight_scale`` is among ``state_keys``: ``nn.Linear`` and
    ``Conv1D`` become :class:`Int8Linear` (W8A8 or W8A16 per the config group that targets it),
    ``nn.Embedding`` becomes :class:`Int8Embedding`. A tied output head whose embedding became int8
    (and that has no tensors of its own in the file) becomes a :class:`TiedInt8Head`. New modules are
    allocated on ``device`` (``"meta"`` for ``load_state_dict(assign=True)``); call
    :func:`retie_int8_heads` after assigning tensors.

    Args:
        model: the model, usually built on the meta device.
        qcfg: ``config.json``'s ``quantization_config`` (dict), or ``None``.
        state_keys: the tensor names stored in the checkpoint.
        dtype: float dtype of scales/biases (default: the replaced module's dtype).
        device: where new module tensors are allocated.

    Returns:
        The names of the swapped modules.

    Raises:
        ConfigError: the quantization config is not one llmpack can run.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> from llmpack.quant.ct_config import build_quantization_config
        >>> m = tiny_model("llama")
        >>> keys = {"model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight_scale"}
        >>> swap_quantized_modules(m, build_quantization_config("int8"), keys, device="cpu")
        ['model.layers.0.mlp.up_proj']
    """
    from llmpack.quant.ct_config import scheme_for

    keys = set(state_keys)
    suffix = ".weight_scale"
    targets = sorted(k[: -len(suffix)] for k in keys if k.endswith(suffix))
    swapped: list[str] = []
    embeddings: dict[str, Int8Embedding] = {}
    for name in targets:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(
                f"checkpoint tensor {name}.weight_scale names a module the model does not have: "
                f"config.json does not match the weights"
            ) from None
        fdt = dtype or _float_dtype_of(mod, torch.float32)
        if isinstance(mod, nn.Embedding):
            new_e = Int8Embedding(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, dtype=fdt, device=device)
            _set_module(model, name, new_e)
            embeddings[name] = new_e
            swapped.append(name)
            continue
        if isinstance(mod, (Int8Linear, Int8Embedding)):
            continue
        conv = is_conv1d(mod)
        if not (conv or isinstance(mod, nn.Linear)):
            raise ConfigError(
                f"checkpoint stores {name} in int8 but the model's {name} is a {type(mod).__name__}: "
                f"llmpack runs int8 Linear, Conv1D and Embedding layers only"
            )
        scheme = scheme_for(name, type(mod).__name__, qcfg)
        act_quant = scheme != "w8a16"
        if conv:
            in_f, out_f = mod.weight.shape
        else:
            in_f, out_f = mod.in_features, mod.out_features
        new = Int8Linear(
            in_f, out_f, getattr(mod, "bias", None) is not None,
            act_quant=act_quant, conv1d_layout=conv, dtype=fdt, device=device,
        )
        _set_module(model, name, new)
        swapped.append(name)
    if embeddings:
        _swap_tied_heads(model, embeddings, keys)
    return swapped


def _swap_tied_heads(model: nn.Module, embeddings: Mapping[str, Int8Embedding], keys: set[str]) -> None:
    """Tied output head of an int8 input embedding -> :class:`TiedInt8Head` (when it has no own tensor)."""
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    if get_out is None or get_in is None:
        return
    head = get_out()
    emb = get_in()
    if head is None or not isinstance(emb, Int8Embedding):
        return
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    if head_name is None or f"{head_name}.weight" in keys or isinstance(head, (Int8Linear, TiedInt8Head)):
        return
    _set_module(model, head_name, TiedInt8Head(emb))


def retie_int8_heads(model: nn.Module) -> None:
    """Point every :class:`TiedInt8Head` at the model's current input embedding (after tensors were assigned)."""
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if get_in is not None else None
    for mod in model.modules():
        if isinstance(mod, TiedInt8Head) and isinstance(emb, Int8Embedding):
            object.__setattr__(mod, "_embedding", emb)


def quantized_module_names(model: nn.Module) -> list[str]:
    """Names of the int8 modules in ``model``.

    Example:
        >>> quantized_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        []
    """
    return [n for n, m in model.named_modules() if isinstance(m, (Int8Linear, Int8Embedding))]


def iter_int8_linears(model: nn.Module) -> Iterable[tuple[str, Int8Linear]]:
    """``(name, module)`` for every :class:`Int8Linear` in ``model``."""
    for n, m in model.named_modules():
        if isinstance(m, Int8Linear):
            yield n, m

