"""Planning and the action table on fake shapes: pure functions, no model, no tensor data (plans) or tiny tensors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmpack.config import Recipe
from llmpack.errors import ConfigError, NonFiniteWeightError
from llmpack.quant.actions import ACTIONS, QUANT_ACTIONS, ActionName, get_action, scheme_of_action
from llmpack.quant.plan import (
    TensorDecision, decisions_to_dict, ignored_by, module_of, plan, quantization_config, quantized_modules,
)


@dataclasses.dataclass
class Info:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32


LAYER = [
    Info("model.embed_tokens.weight", (100, 8)),
    Info("model.layers.0.self_attn.q_proj.weight", (8, 8)),
    Info("model.layers.0.self_attn.q_proj.bias", (8,)),
    Info("model.layers.0.mlp.c_fc.weight", (8, 32)),  # a GPT-2 Conv1D: [in, out]
    Info("model.layers.0.mlp.down_proj.weight", (8, 32)),
    Info("model.norm.weight", (8,)),
    Info("model.rotary.inv_freq", (4,), torch.int64),
    Info("lm_head.weight", (100, 8)),
]
TYPES = {
    "model.embed_tokens": "Embedding", "model.layers.0.self_attn.q_proj": "Linear", "model.layers.0.mlp.c_fc": "Conv1D",
    "model.layers.0.mlp.down_proj": "Linear", "model.norm": "LlamaRMSNorm", "lm_head": "Linear",
}


def _actions(decisions: list[TensorDecision]) -> dict[str, str]:
    return {d.name: d.action for d in decisions}


def test_every_decision_names_an_action_of_the_table() -> None:
    for method in ("fp16", "bf16", "int8", "int8-weight-only", "fp8", "fp8-weight-only"):
        for d in plan(LAYER, TYPES, Recipe(method=method, quantize_embeddings=method == "int8")):
            assert ActionName(d.action) in ACTIONS
            assert d.shape == next(i.shape for i in LAYER if i.name == d.name)


@pytest.mark.parametrize("method,linear", [("int8", "int8"), ("int8-weight-only", "int8-weight-only"),
                                           ("fp8", "fp8"), ("fp8-weight-only", "fp8-weight-only")])
def test_8bit_plan_on_fake_shapes(method: str, linear: str) -> None:
    a = _actions(plan(LAYER, TYPES, Recipe(method=method)))
    assert a["model.layers.0.self_attn.q_proj.weight"] == linear
    assert a["model.layers.0.mlp.c_fc.weight"] == linear
    assert a["model.layers.0.mlp.down_proj.weight"] == linear
    assert a["lm_head.weight"] == "keep"  # the output head stays float
    assert a["model.embed_tokens.weight"] == "keep"  # embeddings only with quantize_embeddings
    assert a["model.layers.0.self_attn.q_proj.bias"] == "keep" and a["model.rotary.inv_freq"] == "keep"


def test_conv1d_layout_and_transposed_specs() -> None:
    d = next(d for d in plan(LAYER, TYPES, Recipe(method="int8")) if d.module.endswith("c_fc"))
    assert d.extra["layout"] == "conv1d"
    assert get_action(d.action).out_specs(d) == [(d.name, (32, 8), torch.int8), (d.name + "_scale", (32, 1), torch.float32)]


def test_skip_weight_only_and_embeddings() -> None:
    r = Recipe(method="int8", quantize_embeddings=True)
    a = _actions(plan(LAYER, TYPES, r, skip=["model.layers.0.mlp.down_proj"],
                      weight_only=["model.layers.0.self_attn.q_proj"]))
    assert a["model.layers.0.mlp.down_proj.weight"] == "keep"
    assert a["model.layers.0.self_attn.q_proj.weight"] == "int8-weight-only"
    assert a["model.embed_tokens.weight"] == "int8-embedding"


def test_ignore_keep_float_and_float_dtype() -> None:
    r = Recipe(method="int8", ignore=("re:q_proj",), float_dtype="bf16")
    ds = {d.name: d for d in plan(LAYER, TYPES, r, keep_float={"model.layers.0.mlp": "FP16 overflow"})}
    assert ds["model.layers.0.self_attn.q_proj.weight"].action == "keep"
    assert ds["model.layers.0.self_attn.q_proj.weight"].reason.startswith("ignored by pattern")
    assert ds["model.layers.0.mlp.down_proj.weight"].out_dtype == "fp32"  # the FP16 fallback wins over int8
    assert (ds["lm_head.weight"].action, ds["lm_head.weight"].out_dtype) == ("cast", "bf16")
    assert ignored_by(r, "x.q_proj.weight", "x.q_proj") == "re:q_proj" and ignored_by(r, "x.k.weight", "x.k") is None


def test_plan_errors() -> None:
    with pytest.raises(ConfigError, match="architecture"):
        plan(LAYER, {}, Recipe(method="fp8"))
    with pytest.raises(ConfigError, match="weight_only / skip"):
        plan(LAYER, TYPES, Recipe(method="bf16"), skip=["lm_head"])
    with pytest.raises(ConfigError, match="invalid ignore regex"):
        plan(LAYER, TYPES, Recipe(method="bf16", ignore=("re:(",)))


def test_quantization_config_lists_float_linears() -> None:
    r = Recipe(method="int8")
    ds = plan(LAYER, TYPES, r, weight_only=["model.layers.0.mlp.down_proj"])
    assert quantized_modules(ds) == {"model.layers.0.self_attn.q_proj": "int8", "model.layers.0.mlp.c_fc": "int8",
                                     "model.layers.0.mlp.down_proj": "int8-weight-only"}
    qc = quantization_config({"a": 1}, ds, r, TYPES)["quantization_config"]
    assert qc["ignore"] == ["lm_head"]
    assert len(qc["config_groups"]) == 2 and "down_proj" in str(qc["config_groups"])  # the W8A16 group
    assert decisions_to_dict(ds)["lm_head.weight"]["action"] == "keep"


def test_action_table_is_explicit_and_complete() -> None:
    assert set(ACTIONS) == set(ActionName)
    assert QUANT_ACTIONS == {"int8", "int8-weight-only", "int8-embedding", "fp8", "fp8-weight-only"}
    assert scheme_of_action("keep") is None and scheme_of_action("fp8").name == "fp8"
    with pytest.raises(ConfigError, match="unknown action 'int4'"):
        get_action("int4")


def test_actions_on_tiny_tensors() -> None:
    w = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    d = TensorDecision("fc.weight", "int8", "int8", "fc", "r", {"scale_dtype": "fp32"}, shape=(2, 2), in_dtype=torch.float32)
    out = get_action("int8")("fc.weight", w, d, Recipe(method="int8"))
    assert out["fc.weight"].dtype == torch.int8 and out["fc.weight"].abs().max() == 127
    torch.testing.assert_close(out["fc.weight"].float() * out["fc.weight_scale"], w, atol=0.02, rtol=0)
    c = TensorDecision("n.weight", "cast", "fp16", "n", "r", shape=(2,), in_dtype=torch.float32)
    assert get_action("cast")("n.weight", torch.ones(2), c, Recipe(method="fp16"))["n.weight"].dtype == torch.float16
    k = TensorDecision("i", "keep", None, "", "r", shape=(2,), in_dtype=torch.int64)
    t = torch.arange(2)
    assert get_action("keep")("i", t, k, Recipe(method="fp16"))["i"] is t
    with pytest.raises(NonFiniteWeightError, match="fc.weight"):
        get_action("int8")("fc.weight", torch.tensor([[float("nan"), 1.0]]), d, Recipe(method="int8"))


def test_module_of() -> None:
    assert module_of("a.b.weight") == "a.b" and module_of("weight") == ""


def test_float_storage_narrows_skipped_weights_wider_than_it() -> None:
    infos = LAYER + [Info("model.layers.0.mlp.up_proj.weight", (32, 8), torch.bfloat16)]
    types = dict(TYPES, **{"model.layers.0.mlp.up_proj": "Linear"})
    skip = ["model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj"]
    ds = {d.name: d for d in plan(infos, types, Recipe(method="fp8"), skip=skip,
                                  float_storage={m: "bf16" for m in skip})}
    down = ds["model.layers.0.mlp.down_proj.weight"]
    assert (down.action, down.out_dtype) == ("cast", "bf16") and down.reason.endswith("stored bf16 (budget fallback)")
    assert ds["model.layers.0.mlp.up_proj.weight"].action == "keep"  # already 2 bytes: stays as in the source
    with pytest.raises(ConfigError, match="float_storage"):
        plan(LAYER, TYPES, Recipe(method="bf16"), float_storage={"lm_head": "bf16"})
