"""llmpack.load equals from_pretrained; llmpack.open is lazy; missing tensors are named."""

from __future__ import annotations

import pytest
import torch

import llmpack
from llmpack.errors import IntegrityError
from llmpack.pipeline import quantize
from llmpack.runtime.load import load, open_checkpoint


@pytest.mark.parametrize("kind", ["gpt2", "llama", "llama-untied", "bert"])
def test_load_equals_from_pretrained(tiny_dirs, tmp_path, kind, device) -> None:
    from transformers import AutoModel, AutoModelForCausalLM

    out = quantize(tiny_dirs[kind], "bf16", out=tmp_path / "o", max_shard_size="80KB", quiet=True).out_dir
    cls = AutoModel if kind == "bert" else AutoModelForCausalLM
    ids = torch.randint(0, 256, (2, 12), device=device)
    for d in (tiny_dirs[kind], out):
        ours = load(d, device=device)
        ref = cls.from_pretrained(d).to(device).eval()
        assert type(ours) is type(ref)
        assert all(p.device.type == device for p in ours.parameters())
        with torch.no_grad():
            assert torch.equal(ours(ids)[0], ref(ids)[0])
        for n, b in ref.named_buffers():
            assert torch.equal(dict(ours.named_buffers())[n], b), n
    if kind == "llama":
        m = load(out)
        assert m.lm_head.weight is m.model.embed_tokens.weight
    assert next(load(out, dtype=torch.float32).parameters()).dtype == torch.float32


@pytest.mark.parametrize("method", [None, "bf16", "int8"])
def test_gpt_neox_saved_by_transformers_loads_its_renamed_head(tmp_path, method) -> None:
    """transformers 5.x builds GPT-NeoX's head as ``lm_head`` but saves (and reads) it as ``embed_out``:
    ``llmpack.load`` applies the same load-time renaming, on the source and on llmpack's outputs."""
    from transformers import AutoModelForCausalLM

    from llmpack.checkpoint.keys import model_key
    from llmpack.testing import arch_configs

    torch.manual_seed(0)
    src = AutoModelForCausalLM.from_config(arch_configs(300)["gpt-neox"]).eval()
    src.save_pretrained(tmp_path / "src")
    d = tmp_path / "src"
    if method is not None:
        pytest.importorskip("compressed_tensors")  # transformers reads the quantized file through it
        d = quantize(d, method, out=tmp_path / "o", quiet=True).out_dir
    stored = set(llmpack.open(d).keys())
    if hasattr(src, "lm_head"):  # (a transformers that renames: the file holds embed_out, the model lm_head)
        assert model_key(src, "embed_out.weight") == "lm_head.weight" and "lm_head.weight" not in stored
    ours = load(d)
    ids = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(d).eval()(ids).logits
        tol = 1e-3 if method == "int8" else 0.0  # (int8: llmpack's kernels vs compressed-tensors' arithmetic)
        torch.testing.assert_close(ours(ids).logits.float(), want.float(), rtol=tol, atol=tol)


def test_open_is_lazy(tiny_dirs) -> None:
    ck = llmpack.open(tiny_dirs["llama-untied"])
    assert ck.reads == 0 and len(ck) > 5
    _ = ck.info("lm_head.weight")
    w = ck["lm_head.weight"]
    assert ck.reads == 1 and w.shape == (256, 64)
    with pytest.raises(TypeError):
        ck["x"] = w  # read-only mapping


def test_missing_tensor_named(tiny_dirs, tmp_path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    shutil.copytree(tiny_dirs["llama-untied"], d)
    sd = load_file(d / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(IntegrityError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        load(d)
    assert open_checkpoint(d).info("lm_head.weight").dtype == torch.float32


@pytest.mark.slow
def test_smollm2_bf16_load_and_generate(smollm2_dir, tmp_path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = quantize(smollm2_dir, "bf16", out=tmp_path / "s", max_shard_size="100MB", quiet=True)
    assert len([f for f in res.files if f.endswith(".safetensors")]) >= 3
    ours = load(res.out_dir)
    tok = AutoTokenizer.from_pretrained(res.out_dir)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(res.out_dir)(ids).logits
        assert torch.equal(ours(ids).logits, ref)
        gen = ours.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(gen[0, ids.shape[1]:])


@pytest.mark.parametrize("in_memory", [False, True])
def test_int8_model_traces_without_graph_breaks(tmp_path, in_memory: bool) -> None:
    """``llmpack.load`` and in-memory ``llmpack.quantize`` return int8 models whose kernel caches are
    built, so a user's plain ``torch.compile(model)`` traces each forward as one graph."""
    from llmpack.testing import tiny_model

    if in_memory:
        model = llmpack.quantize(tiny_model("llama"), "int8", quiet=True).model
    else:
        quantize(tiny_model("llama"), "int8", out=tmp_path / "q", quiet=True)
        model = load(tmp_path / "q")
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(input_ids=ids, use_cache=False).logits
        explained = torch._dynamo.explain(model)(input_ids=ids, use_cache=False)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, use_cache=False).logits, eager)
