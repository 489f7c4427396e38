"""llmpack.runtime.kernels.onednn: the opt-in 7-bit oneDNN / FBGEMM kernel against its exact reference."""

from __future__ import annotations

import pytest
import torch

from llmpack.runtime import kernels
from llmpack.runtime.kernels import onednn, reference

pytestmark = pytest.mark.skipif(not onednn.onednn_available(), reason="no oneDNN int8 matmul in this PyTorch")


@pytest.mark.parametrize("tokens", [1, 5, onednn.FBGEMM_MAX_TOKENS + 1, 200])  # FBGEMM and oneDNN
def test_seven_bit_kernel_is_its_reference(tokens: int) -> None:
    g = torch.Generator().manual_seed(tokens)
    w = torch.randint(-127, 128, (40, 96), dtype=torch.int8, generator=g)
    s, b = torch.rand(40, generator=g) / 50 + 1e-3, torch.randn(40, generator=g)
    x = torch.randn(tokens, 96, generator=g) * 2 + 0.5
    p = kernels.PackedWeight(w, s, b)
    got = kernels.w8a8(x, [p, p], "onednn-7bit")
    want = reference.w8a8_exact(x, w, s, b, 7)
    fbgemm = tokens <= onednn.FBGEMM_MAX_TOKENS and onednn.fbgemm_available()
    for y in got:  # oneDNN: the exact 7-bit product; FBGEMM normalises tokens first (its own rounding)
        tol = 2e-2 if fbgemm else 1e-4
        torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol * want.abs().max().item())
