"""compressed-tensors interop, both ways: transformers (+ compressed-tensors) loads llmpack's int8
output, and llmpack loads a checkpoint written by the compressed-tensors library itself."""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import pytest
import torch

import llmpack
from llmpack.errors import ConfigError
from llmpack.quant.ct_config import build_quantization_config, parse_quantization_config, scheme_for
from llmpack.runtime.kernels import select
from llmpack.runtime.linear import Int8Linear
from llmpack._env import ENV_KERNEL

ct = pytest.importorskip("compressed_tensors")

W = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False}
A = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True}


def test_config_is_exactly_the_design_layout() -> None:
    cfg = build_quantization_config("int8", ignore=["lm_head"])
    assert cfg == {
        "quant_method": "compressed-tensors", "format": "int-quantized", "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": W, "input_activations": A,
                                      "format": "int-quantized"}},
        "ignore": ["lm_head"],
    }
    wo = build_quantization_config("int8-weight-only")
    assert wo["config_groups"]["group_0"]["input_activations"] is None
    assert parse_quantization_config(wo).weight_only


def test_mixed_groups_and_scheme_lookup() -> None:
    cfg = build_quantization_config("int8", ignore=["lm_head"], weight_only_modules=["model.layers.0.mlp.down_proj"])
    assert scheme_for("model.layers.0.mlp.down_proj", "Linear", cfg) == "w8a16"
    assert scheme_for("model.layers.1.mlp.down_proj", "Linear", cfg) == "w8a8"
    assert scheme_for("transformer.h.0.mlp.c_fc", "Conv1D", cfg) == "w8a8"
    assert scheme_for("lm_head", "Linear", cfg) is None


@pytest.mark.parametrize("bad", [{"format": "pack-quantized"}, {"quant_method": "gptq"},
                                 {"config_groups": {"g": {"targets": ["Linear"], "weights": dict(W, num_bits=4)}}}])
def test_unsupported_configs_refused(bad: dict) -> None:
    cfg = dict(build_quantization_config("int8"), **bad)
    with pytest.raises(ConfigError):
        parse_quantization_config(cfg)


def _ct_written_llama(out: Path) -> torch.nn.Module:
    """Quantize and save a tiny Llama with the compressed-tensors library's own API."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationArgs, QuantizationConfig, QuantizationScheme, apply_quantization_config,
    )
    from compressed_tensors.quantization.utils import calculate_qparams

    from llmpack.testing import tiny_model

    model = tiny_model("llama-untied")
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(**W), input_activations=QuantizationArgs(**A))
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    with torch.no_grad():
        for mod in model.modules():
            if getattr(mod, "quantization_scheme", None) is not None and hasattr(mod, "weight_scale"):
                w = mod.weight
                scale, zp = calculate_qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), mod.quantization_scheme.weights)
                mod.weight_scale.copy_(scale)
                if hasattr(mod, "weight_zero_point"):
                    mod.weight_zero_point.copy_(zp)
    comp = ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    comp.compress_model(model)
    model.save_pretrained(out)
    comp.update_config(str(out))
    return model


def test_llmpack_loads_checkpoint_written_by_compressed_tensors(tmp_path: Path) -> None:
    from llmpack.quant.int8 import sqnr_db
    from llmpack.testing import tiny_model

    d = tmp_path / "ct"
    _ct_written_llama(d)
    ck = llmpack.open(d)
    assert ck["model.layers.0.mlp.up_proj.weight"].dtype == torch.int8
    model = llmpack.load(d)
    assert isinstance(model.model.layers[0].mlp.up_proj, Int8Linear)
    assert not isinstance(model.lm_head, Int8Linear)
    ref = tiny_model("llama-untied")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert sqnr_db(ref(ids).logits, model(ids).logits) > 25


def _hf_vs_llmpack(d: Path, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(d)
    ours = llmpack.load(d)
    with torch.no_grad():
        return hf(ids).logits, ours(ids).logits


@pytest.mark.parametrize("method", ["int8", "int8-weight-only"])
def test_transformers_loads_llmpack_output_tiny(method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmpack.testing import tiny_model

    d = tmp_path / "q"
    llmpack.quantize(tiny_model("llama"), method, out=d, quiet=True)
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))
    a, b = _hf_vs_llmpack(d, ids)
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def _quantize_smollm2(src: Path, method: str, d: Path, ntok: int, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """Quantize SmolLM2 into ``d`` (the default kernel computes the file's semantics); ``ntok`` eval-text ids."""
    from transformers import AutoTokenizer

    from llmpack.measure.text import default_text

    llmpack.quantize(src, method, out=d, quiet=True)
    tok = AutoTokenizer.from_pretrained(d)
    return tok(default_text("eval", nbytes=2000), return_tensors="pt").input_ids[:, :ntok]


@pytest.mark.slow
def test_transformers_loads_llmpack_smollm2(smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SmolLM2 W8A16: same int8 weights, so the logits must agree to float rounding (W8A8: next test)."""
    d = tmp_path / "s"
    ids = _quantize_smollm2(smollm2_dir, "int8-weight-only", d, 192, monkeypatch)
    a, b = _hf_vs_llmpack(d, ids)
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agree >= 0.99, agree
    assert os.path.getsize(d / "model.safetensors") < 0.5 * os.path.getsize(smollm2_dir / "model.safetensors")


@pytest.mark.slow
def test_transformers_runs_llmpack_w8a8_smollm2_layer_for_layer(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2 W8A8 (defaults: calibrated smoothing): on the same input, every int8 layer computes the
    same function under transformers + compressed-tensors and under ``llmpack.load`` (float rounding).

    End to end, llmpack's ``dequant`` kernel (compressed-tensors' fake-quant arithmetic op for op)
    reproduces transformers' logits: top-1 agreement >= 0.99 (measured: identical logits). The exact
    integer kernel agrees on ~0.94 of next tokens only: compressed-tensors' rule
    (``scale = absmax / 127.5``) puts every token's negative extreme exactly on the rounding tie
    -127.5, so float-rounding differences of 1e-7 between runtimes flip it to -128 or -127 and the
    flips compound over 30 layers. See docs/int8-format.md."""
    from transformers import AutoModelForCausalLM

    from llmpack.quant.int8 import sqnr_db

    d = tmp_path / "w8a8"
    ids = _quantize_smollm2(smollm2_dir, "int8", d, 192, monkeypatch)
    hf = AutoModelForCausalLM.from_pretrained(d)
    ours = llmpack.load(d)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: inputs.__setitem__(n, a[0].detach()))
             for n, m in hf.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    with torch.no_grad():
        a = hf(ids).logits
        for h in hooks:
            h.remove()
        b = ours(ids).logits
        assert len(inputs) == 210
        worst = min(float(sqnr_db(hf.get_submodule(n)(x), ours.get_submodule(n)(x))) for n, x in inputs.items())
        monkeypatch.setenv(ENV_KERNEL, "dequant")
        select.reset()
        c = llmpack.load(d)(ids).logits
    select.reset()
    assert worst > 100, worst  # float rounding only: identical quantization of weights and activations
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agree >= 0.85, agree
    agree_ref = (a.argmax(-1) == c.argmax(-1)).float().mean().item()
    assert agree_ref >= 0.99, agree_ref
    torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen3", "gemma2", "gemma3", "phi3", "gpt-neox", "opt"])
def test_transformers_applies_the_scheme_llmpack_wrote(arch: str, tmp_path: Path) -> None:
    """A file with W8A8 and W8A16 groups (as a budget writes them, by exact-name targets): the scheme transformers
    + compressed-tensors attaches to every layer is the one llmpack wrote (every target matches with the
    library's own matcher, no "Could not match" warning) and the one llmpack.load runs."""
    import json

    from transformers import AutoModelForCausalLM

    from llmpack.quant.ct_config import build_quantization_config
    from llmpack.runtime.linear import Int8Linear as Lin
    from llmpack.testing import arch_configs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(arch_configs(300)[arch]).eval()
    d = tmp_path / "q"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no calibration: the file layout is what is tested
        llmpack.quantize(model, "int8", out=d, quiet=True)
    cfg = json.loads((d / "config.json").read_text())
    ours = llmpack.load(d)
    int8 = sorted(n for n, m in ours.named_modules() if isinstance(m, Lin))
    weight_only = int8[::2]  # every other layer W8A16
    cfg["quantization_config"] = build_quantization_config("int8", ignore=cfg["quantization_config"]["ignore"],
                                                           weight_only_modules=weight_only)
    (d / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hf = AutoModelForCausalLM.from_pretrained(d)
    assert not [w for w in caught if "Could not match" in str(w.message)]
    ours = llmpack.load(d)
    for name in int8:
        scheme = getattr(hf.get_submodule(name), "quantization_scheme", None)
        got = "float" if scheme is None else ("w8a8" if scheme.input_activations is not None else "w8a16")
        want = "w8a16" if name in weight_only else "w8a8"
        assert got == want, (name, got, want)
        assert ours.get_submodule(name).act_quant == (want == "w8a8")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma", "gpt-neox", "opt"])
def test_budget_keeps_fused_siblings_in_one_scheme(arch: str) -> None:
    """vLLM fuses q/k/v and gate/up into one layer and refuses mixed-precision shards: a budget that moves one
    of them to W8A16 or float moves its siblings too (and the plan it measured is that one)."""
    from llmpack.tune.budget import search_budget
    from llmpack.runtime.siblings import SIBLING_GROUPS
    from llmpack.testing import arch_configs

    torch.manual_seed(0)
    model = _causal_lm(arch_configs(300)[arch])
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 5] *= 40.0
    batches = [torch.randint(1, 250, (1, 96), generator=torch.Generator().manual_seed(0))]
    naive = search_budget(model, None, llmpack.Recipe(method="int8", smooth=0.0), batches=batches)
    d = search_budget(model, None, llmpack.Recipe(method="int8", max_kl=naive.summary["planned"]["kl"] / 4),
                      batches=batches, margin=0.5)  # (aiming lower: a mix of schemes, or the check says nothing)
    modes = {n: d.layer_mode(n) for n in d.params}
    assert len(set(modes.values())) > 1 or set(modes.values()) == {"float"}
    for parent in {n.rpartition(".")[0] for n in modes}:
        for names in SIBLING_GROUPS:
            got = {modes[f"{parent}.{x}"] for x in names if f"{parent}.{x}" in modes}
            assert len(got) <= 1, (parent, names, got)


def _causal_lm(cfg: object) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(cfg).eval()
