"""SmoothQuant folding is an exact re-parameterisation; the simulator matches it; streaming ops match folding."""

from __future__ import annotations

import pytest
import torch

from llmpack.tune.calibrate import LayerSim, collect_input_absmax, fake_quant_act, fake_quant_weight, simulate
from llmpack.quant.smooth import apply_ops, compute_scales, find_groups, fold, tensor_ops
from llmpack.testing import tiny_model


def _perturb_norms(m: torch.nn.Module) -> None:
    """Random-init norms are all ones: make them non-trivial so a wrong fold cannot hide."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "norm" in n.lower() or ".ln_" in n:
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def _out(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    o = m(input_ids=x)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def _outlier_batches(m: torch.nn.Module) -> list[torch.Tensor]:
    return [torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(7))]


EXPECTED_KINDS = {
    "llama": {"attn_in", "attn_out", "mlp_in", "mlp_out"},
    "llama-untied": {"attn_in", "attn_out", "mlp_in", "mlp_out"},
    "gpt2": {"attn_in", "attn_out", "mlp_in"},
    "bert": {"attn_out"},  # post-LN: the norms also feed the residual, so only value -> output.dense folds
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_fold_is_exact(kind: str) -> None:
    m = tiny_model(kind)
    _perturb_norms(m)
    x = _outlier_batches(m)[0]
    with torch.no_grad():
        ref = _out(m, x)
        groups = find_groups(m)
        assert {g.kind for g in groups} == EXPECTED_KINDS[kind]
        scales = compute_scales(m, groups, collect_input_absmax(m, [x]), alpha=0.8)
        assert len(scales) == len(groups)
        assert any(float((s - 1).abs().max()) > 0.5 for s in scales.values())  # the fold really changes weights
        before = {n: p.clone() for n, p in m.named_parameters()}
        fold(m, groups, scales)
        changed = [n for n, p in m.named_parameters() if not torch.equal(p, before[n])]
        assert changed
        got = _out(m, x)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


def test_gqa_value_scale_is_shared_across_heads() -> None:
    m = tiny_model("llama")  # 4 heads, 2 kv heads
    g = next(g for g in find_groups(m) if g.kind == "attn_out")
    assert g.repeat == 2 and g.channels == m.config.num_key_value_heads * g.head_dim
    s = torch.arange(1.0, g.channels + 1)
    full = g.expand(s)
    assert full.numel() == m.config.num_attention_heads * g.head_dim
    assert torch.equal(full[: g.head_dim], full[g.head_dim: 2 * g.head_dim])  # heads 0 and 1 share kv head 0


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_simulated_smoothing_in_float_matches_reference(kind: str) -> None:
    m = tiny_model(kind)
    _perturb_norms(m)
    x = _outlier_batches(m)[0]
    groups = find_groups(m)
    scales = compute_scales(m, groups, collect_input_absmax(m, [x]), alpha=0.5)
    plan = {t: LayerSim("float", g.expand(scales[g.prev])) for g in groups for t in g.targets}
    with torch.no_grad():
        ref = _out(m, x)
        with simulate(m, plan):
            got = _out(m, x)
        again = _out(m, x)  # simulate() restores the original forward
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
    assert torch.equal(again, ref)


def test_streaming_ops_equal_in_memory_fold() -> None:
    m = tiny_model("gpt2")
    _perturb_norms(m)
    x = _outlier_batches(m)[0]
    groups = find_groups(m)
    scales = compute_scales(m, groups, collect_input_absmax(m, [x]), alpha=0.65)
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    ops = tensor_ops(groups, scales)
    by_prev = {g.prev: g for g in groups}
    streamed = {k: (apply_ops(v, ops[k], scales, by_prev) if k in ops else v) for k, v in sd.items()}
    fold(m, groups, scales)
    for k, v in m.state_dict().items():
        assert torch.equal(streamed[k], v), k
    # bf16 streaming keeps dtype and shape
    w = sd["transformer.h.0.attn.c_attn.weight"].to(torch.bfloat16)
    out = apply_ops(w, ops["transformer.h.0.attn.c_attn.weight"], scales, by_prev)
    assert out.dtype == torch.bfloat16 and out.shape == w.shape


def test_smoothing_reduces_w8a8_error_on_outlier_channels() -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    x = torch.randn(256, 64)
    x[:, 5] *= 60.0  # an outlier channel, as SmolLM2's down_proj inputs have
    y = lin(x).detach()
    lin.requires_grad_(False)
    naive = torch.nn.functional.linear(fake_quant_act(x), fake_quant_weight(lin.weight), lin.bias)
    s = (x.abs().amax(0) ** 0.5 / lin.weight.abs().amax(0) ** 0.5).detach()
    smoothed = torch.nn.functional.linear(fake_quant_act(x / s), fake_quant_weight(lin.weight.detach() * s), lin.bias)
    err = lambda a: float((a - y).pow(2).mean() / y.pow(2).mean())  # noqa: E731
    assert err(smoothed) < 0.5 * err(naive)


def test_mismatched_scale_is_refused() -> None:
    from llmpack.errors import BadInputError

    m = tiny_model("llama")
    groups = find_groups(m)
    g = groups[0]
    ops = tensor_ops([g], {g.prev: torch.ones(g.channels + 1)})
    with pytest.raises(BadInputError, match="another model"):
        apply_ops(m.state_dict()[f"{g.prev}.weight"], ops[f"{g.prev}.weight"], {g.prev: torch.ones(g.channels + 1)}, {g.prev: g})
