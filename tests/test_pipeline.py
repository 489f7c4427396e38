"""quantize(): round trip, from_pretrained compatibility, sharding, determinism, ignore patterns,
atomicity (failures leave nothing), overwrite/lock, FP16 overflow guard for weights and activations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from llmpack.checkpoint.manifest import hash_file, read_manifest
from llmpack.checkpoint.reader import Checkpoint
from llmpack.config import Recipe
from llmpack.constants import TEMP_PREFIX
from llmpack.errors import ConfigError, Fp16OverflowError, Interrupted, OutputExistsError, OutputLockedError
from llmpack.pipeline import quantize
from llmpack.quant.plan import TensorDecision, match_pattern, plan
from llmpack.testing import tiny_model


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(TEMP_PREFIX) or p.name.endswith(".lock"))


class _I:
    def __init__(self, name: str, shape=(4, 4), dtype=torch.float32) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


def test_plan_pure_ignore_and_types() -> None:
    infos = [_I("model.layers.0.mlp.down_proj.weight"), _I("lm_head.weight"), _I("pos", (3,), torch.int64),
             _I("model.norm.weight", (4,))]
    ds = plan(infos, {}, Recipe(method="fp16", ignore=("lm_head*", "re:^model\\.layers\\.0\\.mlp$")))
    got = {d.name: (d.action, d.out_dtype) for d in ds}
    assert got == {"model.layers.0.mlp.down_proj.weight": ("cast", "fp16"), "lm_head.weight": ("keep", None),
                   "pos": ("keep", None), "model.norm.weight": ("cast", "fp16")}
    ds2 = plan(infos, {}, Recipe(method="bf16", ignore=("re:layers\\.0\\.mlp",)))
    assert ds2[0].action == "keep" and "ignored" in ds2[0].reason and ds2[0].module == "model.layers.0.mlp.down_proj"
    kept = plan(infos, {}, Recipe(method="fp16"), keep_float={"model.layers.0": "overflow"})
    assert kept[0].out_dtype == "fp32" and kept[0].reason == "overflow" and kept[3].out_dtype == "fp16"
    assert match_pattern("*.mlp.*", "a.mlp.b") and not match_pattern("mlp", "a.mlp.b")
    with pytest.raises(ConfigError):
        match_pattern("re:(", "x")
    assert isinstance(ds[0], TensorDecision) and ds[0].shape == (4, 4)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-untied", "bert"])
def test_roundtrip_and_from_pretrained(tiny_dirs, tmp_path, kind) -> None:
    from transformers import AutoModel, AutoModelForCausalLM

    src = tiny_dirs[kind]
    before = {p.name: hash_file(p) for p in src.iterdir()}
    res = quantize(src, "bf16", out=tmp_path / "o", max_shard_size="60KB", quiet=True)
    assert {p.name: hash_file(p) for p in src.iterdir()} == before  # source untouched
    files = sorted(res.files)
    assert "model.safetensors.index.json" in files and any(f.startswith("model-00001-of-") for f in files)
    ck, out = Checkpoint(src), Checkpoint(res.out_dir)
    assert set(out) == set(ck)
    for name in ck:
        assert torch.equal(out[name], ck[name].to(torch.bfloat16)), name
    cfg = json.loads((res.out_dir / "config.json").read_text())
    assert cfg["dtype"] == "bfloat16" and cfg["torch_dtype"] == "bfloat16"
    man = read_manifest(res.out_dir)
    assert man.recipe["method"] == "bf16" and man.source["kind"] == "dir" and len(man.source["fingerprint"]) == 64
    for rel, e in man.files.items():
        assert hash_file(res.out_dir / rel) == e["sha256"] and (res.out_dir / rel).stat().st_size == e["size"]
    cls = AutoModel if kind == "bert" else AutoModelForCausalLM
    stock = cls.from_pretrained(res.out_dir)
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        ref = cls.from_pretrained(src).to(torch.bfloat16)(ids)[0]
        assert torch.allclose(stock(ids)[0].float(), ref.float(), atol=1e-2, rtol=1e-2)
    assert _leftovers(tmp_path) == []


def test_deterministic_and_single_shard(tiny_dirs, tmp_path) -> None:
    a = quantize(tiny_dirs["llama"], "fp16", out=tmp_path / "a", quiet=True)
    b = quantize(tiny_dirs["llama"], "fp16", out=tmp_path / "b", quiet=True)
    assert "model.safetensors" in a.files and "model.safetensors.index.json" not in a.files
    for rel in a.files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a/llmpack.json").read_bytes() == (tmp_path / "b/llmpack.json").read_bytes()
    with safe_open(tmp_path / "a/model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_module_source_tied_written_once(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    m = tiny_model("llama")
    res = quantize(m, "bf16", out=tmp_path / "o", quiet=True)
    ck = Checkpoint(res.out_dir)
    assert "lm_head.weight" not in ck and "model.embed_tokens.weight" in ck
    assert read_manifest(res.out_dir).extra["tied"] == {"lm_head.weight": "model.embed_tokens.weight"}
    stock = AutoModelForCausalLM.from_pretrained(res.out_dir)
    assert stock.lm_head.weight.data_ptr() == stock.model.embed_tokens.weight.data_ptr()
    mem = quantize(m, "bf16")  # out=None: in-memory conversion
    assert mem.out_dir is None and next(mem.model.parameters()).dtype == torch.bfloat16
    assert next(m.parameters()).dtype == torch.float32


def test_ignore_keeps_source_dtype(tiny_dirs, tmp_path) -> None:
    res = quantize(tiny_dirs["llama-untied"], "fp16", out=tmp_path / "o", ignore=["lm_head*", "re:norm"], quiet=True)
    ck = Checkpoint(res.out_dir)
    assert ck.info("lm_head.weight").dtype == torch.float32 and ck.info("model.norm.weight").dtype == torch.float32
    assert ck.info("model.layers.0.mlp.up_proj.weight").dtype == torch.float16


@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_nothing(tiny_dirs, tmp_path, monkeypatch, exc) -> None:
    from llmpack.checkpoint import writer

    calls = {"n": 0}
    orig = writer.ShardWriter.write

    def flaky(self, name, t):
        calls["n"] += 1
        if calls["n"] == 5:
            raise exc
        return orig(self, name, t)

    monkeypatch.setattr(writer.ShardWriter, "write", flaky)
    with pytest.raises((RuntimeError, Interrupted)):
        quantize(tiny_dirs["gpt2"], "bf16", out=tmp_path / "o", max_shard_size="50KB", quiet=True)
    assert not (tmp_path / "o").exists() and _leftovers(tmp_path) == []


def test_overwrite_and_lock(tiny_dirs, tmp_path) -> None:
    out = tmp_path / "o"
    quantize(tiny_dirs["llama"], "bf16", out=out, quiet=True)
    with pytest.raises(OutputExistsError):
        quantize(tiny_dirs["llama"], "fp16", out=out, quiet=True)
    quantize(tiny_dirs["llama"], "fp16", out=out, overwrite=True, quiet=True)
    assert read_manifest(out).recipe["method"] == "fp16" and _leftovers(tmp_path) == []
    lock = tmp_path / "p.llmpack.lock"
    lock.write_text(f"{os.getpid()}\n")  # a live process holds it
    with pytest.raises(OutputLockedError, match="another llmpack process"):
        quantize(tiny_dirs["llama"], "bf16", out=tmp_path / "p", quiet=True)
    lock.write_text("999999999\n")  # stale lock of a dead process is taken over
    quantize(tiny_dirs["llama"], "bf16", out=tmp_path / "p", quiet=True)
    with pytest.raises(ConfigError, match="inside the source"):
        quantize(tiny_dirs["llama"], "bf16", out=tiny_dirs["llama"] / "sub", quiet=True)


def test_fp16_weight_overflow_refused(tmp_path) -> None:
    m = tiny_model("llama-untied")
    with torch.no_grad():
        m.model.layers[1].mlp.up_proj.weight[0, 0] = 70000.0
    with pytest.raises(Fp16OverflowError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*bf16"):
        quantize(m, "fp16", out=tmp_path / "o", quiet=True)
    assert list(tmp_path.iterdir()) == []
    quantize(m, "bf16", out=tmp_path / "b", quiet=True)


def _activation_overflow_model() -> torch.nn.Module:
    """Weights all within FP16 range, but layer 0's MLP intermediate (act(gate) * up) exceeds 65504."""
    m = tiny_model("llama-untied")
    with torch.no_grad():
        mlp = m.model.layers[0].mlp
        m.model.layers[0].post_attention_layernorm.weight.fill_(1000.0)
        mlp.gate_proj.weight.mul_(100.0)
        mlp.up_proj.weight.mul_(100.0)
        mlp.down_proj.weight.mul_(1e-4)
    return m


def test_fp16_activation_overflow_error_and_keep(tmp_path) -> None:
    from llmpack.runtime.load import load

    m = _activation_overflow_model()
    assert max(float(p.detach().abs().max()) for p in m.parameters()) < 65504
    with pytest.raises(Fp16OverflowError, match=r"first in module model\.layers\.0\.mlp.*bf16"):
        quantize(m, "fp16", out=tmp_path / "o", quiet=True)
    assert list(tmp_path.iterdir()) == []
    res = quantize(m, "fp16", out=tmp_path / "k", fp16_overflow="keep", quiet=True)
    assert res.fp32_modules == ["model.layers.0.mlp"]
    ck = Checkpoint(res.out_dir)
    assert ck.info("model.layers.0.mlp.up_proj.weight").dtype == torch.float32
    assert ck.info("model.layers.1.mlp.up_proj.weight").dtype == torch.float16
    d = read_manifest(res.out_dir).decisions["model.layers.0.mlp.up_proj.weight"]
    assert d["out_dtype"] == "fp32" and "overflow" in d["reason"]
    ids = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        out = load(res.out_dir)(ids).logits
        ref = m(ids).logits
    assert torch.isfinite(out).all()
    assert (out.float().softmax(-1) - ref.softmax(-1)).abs().max() < 0.05
