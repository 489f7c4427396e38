"""INT8 quantizer, plan and streaming pipeline: SQNR on real weights, Conv1D layout, NaN refusal,
in-memory == on-disk logits, size ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import llmpack
from llmpack.config import Recipe
from llmpack.errors import BadInputError, NonFiniteWeightError
from llmpack.quant.int8 import dequantize, int8_per_channel, quantize_per_token, sqnr_db


def test_per_channel_roundtrip_and_layout() -> None:
    torch.manual_seed(0)
    w = torch.randn(33, 70) * torch.linspace(0.01, 3, 33)[:, None]
    q, s = int8_per_channel(w, 0)
    assert q.dtype == torch.int8 and s.shape == (33, 1)
    assert int(q.abs().max()) == 127
    err = (dequantize(q, s) - w).abs()
    assert bool((err <= s / 2 + 1e-6).all())  # half a step per channel at most
    qt, st = int8_per_channel(w.t().contiguous(), 1)
    assert torch.equal(qt.t(), q) and torch.equal(st.t(), s)


def test_scale_dtype_and_errors() -> None:
    q, s = int8_per_channel(torch.randn(4, 8), scale_dtype=torch.bfloat16)
    assert s.dtype == torch.bfloat16
    with pytest.raises(BadInputError):
        int8_per_channel(torch.randn(4), name="x")
    w = torch.ones(3, 3)
    w[0, 0] = float("inf")
    with pytest.raises(NonFiniteWeightError, match="layer.weight"):
        int8_per_channel(w, name="layer.weight")


def test_per_token_matches_compressed_tensors_semantics() -> None:
    q, s = quantize_per_token(torch.tensor([[0.5, -1.0, 0.0], [0.0, 0.0, 0.0]]))
    assert q[0, 0] == 64 and int(q[0, 1]) in (-127, -128) and q[1].tolist() == [0, 0, 0]
    assert s[0, 0].item() == pytest.approx(1 / 127.5)


def _linear_weights(d: Path, limit: int | None = None) -> list[tuple[str, torch.Tensor]]:
    out = []
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(f, "pt") as so:
            for k in so.keys():
                if k.endswith(".weight") and len(so.get_slice(k).get_shape()) == 2 and "embed" not in k:
                    out.append((k, so.get_tensor(k)))
                    if limit and len(out) >= limit:
                        return out
    return out


@pytest.mark.slow
def test_sqnr_on_real_weights_minilm(minilm_dir: Path) -> None:
    ws = _linear_weights(minilm_dir)
    assert len(ws) >= 36
    values = []
    for name, w in ws:
        q, s = int8_per_channel(w.float(), 0, name=name)
        db = sqnr_db(w.float(), dequantize(q, s))
        values.append(db)
        # BERT's FFN output layers have outlier *input columns*, which no per-row scale can absorb:
        # measured 33.5 / 35.4 / 34.4 dB for layers 0-2 (docs/int8-format.md); every other layer >= 35 dB.
        floor = 33.0 if name.endswith("output.dense.weight") and ".attention." not in name else 35.0
        assert db >= floor, name
    assert sorted(values)[len(values) // 2] >= 38.0


@pytest.mark.slow
def test_sqnr_on_real_weights_smollm2(smollm2_dir: Path) -> None:
    ws = _linear_weights(smollm2_dir, limit=21)  # three decoder layers
    for name, w in ws:
        q, s = int8_per_channel(w.float(), 0, name=name)
        assert sqnr_db(w.float(), dequantize(q, s)) >= 35.0, name


# --- plan -----------------------------------------------------------------------------------------
def _plan(kind: str, **recipe: object) -> dict[str, object]:
    from llmpack.checkpoint.sources import open_source
    from llmpack.quant.plan import plan
    from llmpack.testing import tiny_model

    src = open_source(tiny_model(kind))
    return {d.name: d for d in plan(src.infos, src.module_types, Recipe(**recipe), src.config)}


def test_plan_defaults_gpt2_conv1d() -> None:
    ds = _plan("gpt2", method="int8")
    c = ds["transformer.h.0.attn.c_attn.weight"]
    assert c.action == "int8" and c.extra["layout"] == "conv1d"
    assert ds["transformer.h.0.attn.c_attn.bias"].action == "keep"
    assert ds["transformer.wte.weight"].action == "keep"
    assert ds["transformer.ln_f.weight"].action == "keep"


def test_plan_heads_embeddings_ignore_and_float_dtype() -> None:
    ds = _plan("llama-untied", method="int8-weight-only", quantize_embeddings=True, float_dtype="bf16",
               ignore=("*.layers.1.mlp.*",))
    assert ds["lm_head.weight"].action == "int8-weight-only"  # untied: its own int8 tensor, like its embedding
    assert ds["lm_head.weight"].extra["scale_dtype"] == "bf16"
    assert ds["model.embed_tokens.weight"].action == "int8-embedding"
    assert ds["model.layers.0.mlp.up_proj.weight"].action == "int8-weight-only"
    assert ds["model.layers.0.mlp.up_proj.weight"].extra["scale_dtype"] == "bf16"
    assert ds["model.layers.1.mlp.up_proj.weight"].action == "keep"
    assert ds["model.norm.weight"].out_dtype == "bf16"
    plain = _plan("llama-untied", method="int8", float_dtype="bf16")
    assert plain["lm_head.weight"].action == "cast" and plain["lm_head.weight"].out_dtype == "bf16"
    assert plain["model.embed_tokens.weight"].action == "cast"


# --- pipeline -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_in_memory_equals_on_disk(kind: str, tmp_path: Path) -> None:
    from llmpack.testing import tiny_model

    model = tiny_model(kind)
    out = tmp_path / "q"
    llmpack.quantize(model, "int8", out=out, quantize_embeddings=(kind == "llama"), quiet=True)
    mem = llmpack.quantize(model, "int8", quantize_embeddings=(kind == "llama")).model
    disk = llmpack.load(out)
    ids = torch.randint(0, 256, (2, 11), generator=torch.Generator().manual_seed(0))
    key = "last_hidden_state" if kind == "bert" else "logits"
    with torch.no_grad():
        a, b, ref = mem(ids)[key], disk(ids)[key], model(ids)[key]
    assert torch.equal(a, b)
    assert sqnr_db(ref, b) > 20


def test_files_follow_compressed_tensors_layout_gpt2(tmp_path: Path) -> None:
    from llmpack.testing import tiny_model

    model = tiny_model("gpt2")
    out = tmp_path / "g"
    llmpack.quantize(model, "int8", out=out, quiet=True)
    ck = llmpack.open(out)
    w, s = ck["transformer.h.1.mlp.c_fc.weight"], ck["transformer.h.1.mlp.c_fc.weight_scale"]
    src = model.transformer.h[1].mlp.c_fc.weight.detach()  # Conv1D: [in, out]
    assert w.dtype == torch.int8 and tuple(w.shape) == (src.shape[1], src.shape[0])
    assert s.dtype == torch.float32 and tuple(s.shape) == (src.shape[1], 1)
    assert sqnr_db(src.t(), dequantize(w, s)) > 38
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["format"] == "int-quantized" and cfg["ignore"] == ["lm_head"]
    man = json.loads((out / "llmpack.json").read_text())
    assert man["decisions"]["transformer.h.1.mlp.c_fc.weight"]["extra"]["layout"] == "conv1d"


def test_nan_weight_refused_in_pipeline(tmp_path: Path) -> None:
    from llmpack.testing import tiny_model

    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].self_attn.k_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        llmpack.quantize(model, "int8", out=tmp_path / "n", quiet=True)
    assert not (tmp_path / "n").exists()
    with pytest.raises(NonFiniteWeightError, match="k_proj"):
        llmpack.quantize(model, "int8")


def _planned_ratio(d: Path, **recipe: object) -> float:
    from llmpack.checkpoint.sources import open_source
    from llmpack.quant.actions import get_action
    from llmpack.quant.plan import plan

    src = open_source(d)
    ds = plan(src.infos, src.module_types, Recipe(**recipe), src.config)
    out = 0
    for dec in ds:
        for _, shape, dt in get_action(dec.action).out_specs(dec):
            out += torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
    return out / src.total_bytes


@pytest.mark.slow
def test_size_ratio_smollm2(smollm2_dir: Path) -> None:
    assert _planned_ratio(smollm2_dir, method="int8", quantize_embeddings=True) <= 0.30
    assert 0.35 < _planned_ratio(smollm2_dir, method="int8") < 0.45
