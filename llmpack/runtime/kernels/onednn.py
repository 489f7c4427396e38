"""The opt-in ``onednn-7bit`` kernel: PyTorch's own int8 matmuls for CPUs without VNNI, where llmpack's native
kernels cannot be built.

oneDNN's and FBGEMM's ``u8 x s8`` instruction on AVX2 saturates 16-bit pair sums, so tokens use 129 levels
(:data:`~llmpack.runtime.kernels.reference.QMAX7`), centred on each token (``x - centre`` over its half-range;
the centre's contribution is added back in float). That is less exact than the file's 8-bit tokens (no level at
zero, half the levels), hence opt-in. Inputs of at most :data:`FBGEMM_MAX_TOKENS` tokens run FBGEMM's fused
dynamic int8 linear (per token, by normalising each token first), longer ones oneDNN's
``qlinear_pointwise``.

Example:
    >>> onednn_available() in (True, False)
    True
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from llmpack.quant.int8 import SCALE_EPS, midrange
from llmpack.runtime.kernels.reference import QMAX7, centred_q

__all__ = ["FBGEMM_MAX_TOKENS", "onednn_available", "fbgemm_available", "OneDnnWeight", "w8a8_7bit"]

FBGEMM_MAX_TOKENS = 64
"""Inputs of at most this many tokens run FBGEMM (2-4x faster than oneDNN at 1-32 tokens, measured)."""


_probed: dict[str, bool] = {}  # (a plain dict, not lru_cache: read as it is under torch.compile)


def onednn_available() -> bool:
    """oneDNN's int8 matmul runs in this PyTorch."""
    if "onednn" not in _probed:
        _probed["onednn"] = _probe_onednn()
    return _probed["onednn"]


def fbgemm_available() -> bool:
    """FBGEMM's dynamic int8 linear runs here and keeps integer inputs in ``[-64, 63]`` exact."""
    if "fbgemm" not in _probed:
        _probed["fbgemm"] = _probe_fbgemm()
    return _probed["fbgemm"]


def _probe_onednn() -> bool:
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


def _probe_fbgemm() -> bool:
    try:
        g = torch.Generator().manual_seed(0)
        w = torch.randint(-127, 128, (16, 8), dtype=torch.int8, generator=g)
        x = torch.randint(-64, 64, (2, 8), generator=g).float()
        row = torch.zeros(1, 8)
        row[0, 0], row[0, -1] = -QMAX7, QMAX7 - 1
        y = torch.ops.quantized.linear_dynamic(torch.cat([x, row]), _fbgemm_pack(w, torch.ones(16)), True)
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


class OneDnnWeight:
    """oneDNN's (and, built on first short input, FBGEMM's) packed copies of one int8 weight.

    The activation zero point (64) is not given to oneDNN, which would re-sum the weight on every call; its
    contribution ``-64 * sum_k W[n, k] * scale[n]`` is constant, so it is passed as oneDNN's bias.
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor) -> None:
        self.weight, self.scale = weight, scale.reshape(-1).float().contiguous()
        self.packed = torch.ops.onednn.qlinear_prepack(weight, None)
        self.w_zp = torch.zeros(weight.shape[0], dtype=torch.long)
        colsum = weight.sum(1, dtype=torch.int64).double()
        self.comp = (-QMAX7 * colsum * self.scale.double()).float().contiguous()
        self.wsum = self.comp * (-1.0 / QMAX7)  # sum_k W[n, k] * scale[n]: the centres' term
        self._fbgemm: Any = None

    def fbgemm(self) -> Any:
        if self._fbgemm is None:
            self._fbgemm = _fbgemm_pack(self.weight, self.scale)
        return self._fbgemm

    def qlinear(self, xu8: torch.Tensor) -> torch.Tensor:
        """``acc(u8 x s8) * scale + comp`` in float32 ``[tokens, out]``."""
        return torch.ops.onednn.qlinear_pointwise(
            xu8, 1.0, 0, self.packed, self.scale, self.w_zp, self.comp, 1.0, 0, torch.float32, "none", [], ""
        )


def w8a8_7bit(xf: torch.Tensor, weights: list[OneDnnWeight], biases: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Every layer's ``x W^T + b`` with 7-bit centred tokens, the input quantized once (float32 ``xf``)."""
    if xf.shape[0] <= FBGEMM_MAX_TOKENS and fbgemm_available():
        # FBGEMM's per-tensor activation range is made every token's own by normalising each token first.
        centre, half = midrange(xf, 1)
        half = half.clamp_min_(SCALE_EPS)
        xn = xf.sub(centre).div_(half)
        outs = []
        for w, b in zip(weights, biases):
            y = torch.ops.quantized.linear_dynamic(xn, w.fbgemm(), True).mul_(half)
            y.addr_(centre.reshape(-1), w.wsum)
            outs.append(y if b is None else y.add_(b))
        return outs
    q, scale, centre = centred_q(xf)
    # float -> int8 is vectorised on CPU (float -> uint8 is not); the bytes viewed as uint8 plus 64 are q + 64.
    xu8 = q.to(torch.int8).view(torch.uint8).add_(QMAX7)
    c = centre.reshape(-1)
    outs = []
    for w, b in zip(weights, biases):
        y = w.qlinear(xu8).mul_(scale).addr_(c, w.wsum)
        outs.append(y if b is None else y.add_(b))
    return outs
