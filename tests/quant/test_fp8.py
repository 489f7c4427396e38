"""FP8 (E4M3) method: tensor functions, plan, compressed-tensors ``float-quantized`` config, NaN refusal, budget,
the streamed write and the in-memory path; interop with transformers + compressed-tensors is in
``test_fp8_interop.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import llmpack
from llmpack.config import Method, Recipe
from llmpack.errors import ConfigError, NonFiniteWeightError
from llmpack.quant.ct_config import build_quantization_config, parse_quantization_config, scheme_for
from llmpack.quant.fp8 import FP8_DTYPE, FP8_MAX, fake_quant_fp8, fp8_per_channel, quantize_per_token_fp8
from llmpack.quant.int8 import dequantize, sqnr_db
from llmpack.quant.actions import QUANT_ACTIONS, scheme_of_action
from llmpack.quant.schemes import get_scheme
from llmpack.testing import tiny_model

FW = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel", "dynamic": False}
FA = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token", "dynamic": True}


def test_method_names_and_properties() -> None:
    assert Method.parse("fp8-dynamic") is Method.FP8
    assert Method.parse("FP8_WO") is Method.FP8_WEIGHT_ONLY
    assert Method.FP8.scheme == "fp8" and Method.FP8.act_quant and Method.FP8.is_quantized
    assert not Method.FP8_WEIGHT_ONLY.act_quant and not Method.FP8.is_int8
    assert Method.INT8.scheme == "int8" and Method.BF16.scheme is None
    with pytest.raises(ConfigError, match="int8 methods"):
        Recipe(method="fp8", quantize_embeddings=True)
    assert Recipe(method="fp8", max_ppl_increase=1).max_ppl_increase == 1


def test_fp8_per_channel_grid_and_sqnr() -> None:
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    q, s = fp8_per_channel(w, scale_dtype=torch.bfloat16)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.bfloat16 and s.shape == (64, 1)
    # every row's largest magnitude lands on (or within one bf16 rounding of) the grid's end
    assert float(q.float().abs().amax(1).min()) >= 0.99 * FP8_MAX * 0.99
    assert bool(torch.isfinite(q.float()).all())
    assert sqnr_db(w, dequantize(q, s, torch.float32)) >= 30.0  # E4M3: 3 mantissa bits, measured ~31 dB
    qc, sc = fp8_per_channel(w.t(), 1)  # Conv1D layout: one scale per column
    assert sc.shape == (1, 64) and torch.equal(qc.t().float(), fp8_per_channel(w)[0].float())


def test_fp8_refuses_nan_and_names_the_tensor() -> None:
    w = torch.ones(4, 4)
    w[1, 2] = float("nan")
    with pytest.raises(NonFiniteWeightError, match=r"'m\.fc\.weight'.*fp8"):
        fp8_per_channel(w, name="m.fc.weight")


def test_per_token_activation_quantization_is_compressed_tensors_arithmetic() -> None:
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import fake_quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    x = torch.randn(7, 96, generator=torch.Generator().manual_seed(1)) * 3
    args = QuantizationArgs(**FA)
    scale, zp = calculate_qparams(x.amin(-1, keepdim=True), x.amax(-1, keepdim=True), args)
    ref = fake_quantize(x, scale, zp, args)
    q, s = quantize_per_token_fp8(x)
    torch.testing.assert_close(q.float() * s, ref, rtol=0, atol=0)
    torch.testing.assert_close(fake_quant_fp8(x), ref, rtol=0, atol=0)
    assert ct is not None


def test_scheme_table() -> None:
    assert scheme_of_action("fp8").dtype == FP8_DTYPE and scheme_of_action("int8-embedding").name == "int8"
    assert set(QUANT_ACTIONS) >= {"fp8", "fp8-weight-only"}
    with pytest.raises(ConfigError, match="fp8, int8"):
        get_scheme("nf4")


def test_config_layout_and_library_validation() -> None:
    cfg = build_quantization_config("fp8", ignore=["lm_head"], weight_only_modules=["model.layers.0.mlp.down_proj"])
    assert cfg["format"] == "float-quantized"
    assert cfg["config_groups"]["group_0"] == {"targets": ["Linear"], "weights": FW, "input_activations": FA,
                                               "format": "float-quantized"}
    assert cfg["config_groups"]["group_1"]["input_activations"] is None
    assert scheme_for("model.layers.0.mlp.down_proj", "Linear", cfg) == "w8a16"
    assert parse_quantization_config(cfg).scheme == "fp8"
    assert parse_quantization_config(build_quantization_config("fp8-weight-only")).weight_only
    with pytest.raises(ConfigError, match="fp8"):
        build_quantization_config("fp8", embeddings=["model.embed_tokens"])
    # mixing int and float groups in one checkpoint is refused with the reason
    bad = dict(cfg, config_groups={"g": dict(cfg["config_groups"]["group_0"], weights=dict(FW, type="int"))})
    with pytest.raises(ConfigError, match="symmetric float"):
        parse_quantization_config(bad)


def test_config_is_llm_compressor_fp8_dynamic_by_the_library_itself() -> None:
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    cfg = build_quantization_config("fp8", ignore=["lm_head"])
    parsed = QuantizationConfig.model_validate(cfg)  # compressed-tensors' own pydantic validation
    preset = preset_name_to_scheme("FP8_DYNAMIC", ["Linear"])
    g = parsed.config_groups["group_0"]
    assert g.weights == preset.weights and g.input_activations == preset.input_activations
    assert parsed.format == "float-quantized" and parsed.ignore == ["lm_head"]


def test_plan_writes_fp8_weights_and_keeps_head_float() -> None:
    from llmpack.checkpoint.sources import _module_infos, dedupe_state_dict, module_types_of
    from llmpack.quant.actions import get_action
    from llmpack.quant.plan import plan

    m = tiny_model("llama")
    sd, _ = dedupe_state_dict(m)
    ds = plan(_module_infos(sd), module_types_of(m), Recipe(method="fp8", ignore=("*.layers.1.mlp.*",)))
    by = {d.name: d for d in ds}
    up = by["model.layers.0.mlp.up_proj.weight"]
    assert up.action == "fp8" and up.out_dtype == "fp8" and "fp8 per-channel (w8a8)" in up.reason
    specs = get_action(up.action).out_specs(up)
    assert [(n, dt) for n, _, dt in specs] == [(up.name, FP8_DTYPE), (up.name + "_scale", torch.float32)]
    assert by["model.layers.1.mlp.up_proj.weight"].action == "keep"
    assert by["model.embed_tokens.weight"].action == "keep"
    wo = plan(_module_infos(sd), module_types_of(m), Recipe(method="fp8-weight-only"))
    assert {d.action for d in wo if d.module.endswith("proj")} == {"fp8-weight-only"}


def test_streamed_write_records_decisions_and_loads(tmp_path: Path) -> None:
    from llmpack.runtime.linear import Fp8Linear

    m = tiny_model("llama-untied")
    src = tmp_path / "src"
    m.save_pretrained(src)
    out = tmp_path / "fp8"
    res = llmpack.quantize(src, "fp8", out=out, quiet=True, ignore=["model.layers.0.self_attn.o_proj"])
    man = json.loads((out / "llmpack.json").read_text())
    assert man["recipe"]["method"] == "fp8"
    assert man["decisions"]["model.layers.1.mlp.down_proj.weight"]["action"] == "fp8"
    assert man["decisions"]["model.layers.0.self_attn.o_proj.weight"]["action"] == "keep"
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert "model.layers.0.self_attn.o_proj" in qc["ignore"] and "lm_head" in qc["ignore"]
    assert llmpack.open(out)["model.layers.1.mlp.down_proj.weight"].dtype == FP8_DTYPE
    assert res.output_bytes < 0.5 * res.source_bytes
    loaded = llmpack.load(out)
    assert isinstance(loaded.model.layers[1].mlp.down_proj, Fp8Linear)
    assert not isinstance(loaded.model.layers[0].self_attn.o_proj, Fp8Linear)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, got = m(ids).logits, loaded(ids).logits
    assert sqnr_db(ref, got) > 20  # (random-init logits are nearly flat: top-1 says little here)
    assert llmpack.verify(out).ok
    packed = llmpack.pack(out, tmp_path / "build", name="tiny", tag="fp8", quiet=True)
    assert llmpack.verify(tmp_path / "build" / "oci").ok and packed is not None


def test_nan_weight_refused_in_the_pipeline(tmp_path: Path) -> None:
    m = tiny_model("llama")
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError, match="model.layers.0.mlp.up_proj.weight"):
        llmpack.quantize(m, "fp8", out=tmp_path / "x", quiet=True, calibrate=False)
    assert not (tmp_path / "x").exists()


def test_in_memory_fp8_equals_the_written_file(tmp_path: Path) -> None:
    m = tiny_model("gpt2")
    mem = llmpack.quantize(m, "fp8", calibrate=False, quiet=True).model
    disk = llmpack.load(llmpack.quantize(m, "fp8", out=tmp_path / "q", calibrate=False, quiet=True).out_dir)
    ids = torch.randint(0, 256, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(mem(ids).logits, disk(ids).logits, rtol=1e-5, atol=1e-5)
    assert mem.transformer.h[0].mlp.c_fc.scheme == "fp8"


def test_budget_moves_sensitive_layers_to_weight_only_or_float() -> None:
    from llmpack.tune.budget import search_budget

    torch.manual_seed(0)
    m = tiny_model("llama")
    with torch.no_grad():
        m.model.embed_tokens.weight[:, 3] *= 60.0  # an outlier channel that per-token FP8 activations lose
    batches = [torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))]
    naive = search_budget(m, None, Recipe(method="fp8", smooth=0.0), batches=batches)
    d = search_budget(m, None, Recipe(method="fp8", smooth=0.0, max_kl=naive.summary["planned"]["kl"] / 4),
                  batches=batches)
    modes = {n: d.layer_mode(n) for n in d.params}
    assert set(modes.values()) - {"w8a8"}, modes
    assert d.summary["planned"]["kl"] <= naive.summary["planned"]["kl"]
    recs = d.manifest_decisions()
    assert all(r.get("scheme") == "fp8" for n, r in recs.items() if r["int8"] != "float" and r["reason"] != "default")


@pytest.mark.parametrize("method", ["fp8", "fp8-weight-only", "int8"])
def test_config_without_compressed_tensors_is_the_same(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU machine has no compressed-tensors: the plain dict written there equals the library-generated one."""
    pytest.importorskip("compressed_tensors")
    import sys

    kw = dict(ignore=["lm_head"], weight_only_modules=["model.layers.0.mlp.down_proj"])
    with_ct = build_quantization_config(method, **kw)
    monkeypatch.setitem(sys.modules, "compressed_tensors.quantization", None)  # import fails
    assert build_quantization_config(method, **kw) == with_ct
