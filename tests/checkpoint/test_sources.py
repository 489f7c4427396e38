"""Sources: in-memory models (tied tensors once), pickles refused, hub unreachable, fingerprints."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from llmpack.checkpoint.sources import dedupe_state_dict, open_source
from llmpack.errors import HubUnavailableError, SourceNotFoundError, UnsupportedFormatError
from llmpack.testing import tiny_model


def test_module_source_dedupes_tied() -> None:
    m = tiny_model("llama")
    sd, dropped = dedupe_state_dict(m)
    assert dropped == {"lm_head.weight": "model.embed_tokens.weight"} and "lm_head.weight" not in sd
    sd2, dropped2 = dedupe_state_dict(tiny_model("llama-untied"))
    assert dropped2 == {} and "lm_head.weight" in sd2
    src = open_source(m)
    assert src.kind == "module" and src.config["architectures"] == ["LlamaForCausalLM"]
    assert src.module_types["model.layers.0.mlp.down_proj"] == "Linear"
    fp = src.fingerprint()
    assert fp == open_source(tiny_model("llama")).fingerprint()
    assert fp != open_source(tiny_model("llama", seed=1)).fingerprint()


def test_dir_fingerprint_stable_and_sensitive(tiny_dirs, tmp_path) -> None:
    a = open_source(tiny_dirs["gpt2"])
    for _ in a.stream():
        pass
    streamed = a.fingerprint()
    assert streamed == open_source(tiny_dirs["gpt2"]).fingerprint()  # one-pass hash == separate hash
    assert a.module_types["transformer.h.0.attn.c_attn"] == "Conv1D"
    import shutil

    copy = tmp_path / "g"
    shutil.copytree(tiny_dirs["gpt2"], copy)
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"n_head": 4', '"n_head": 2'))
    assert open_source(copy).fingerprint() != streamed


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "w.pth"])
def test_pickles_refused(tmp_path, name) -> None:
    p = tmp_path / name
    p.write_bytes(b"\x80\x04garbage")
    with pytest.raises(UnsupportedFormatError, match="never unpickles.*save_pretrained"):
        open_source(p)


def test_missing_and_hub_unavailable(tmp_path, monkeypatch) -> None:
    with pytest.raises(SourceNotFoundError):
        open_source(tmp_path / "nope")
    import huggingface_hub

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(HubUnavailableError, match="cannot be reached") as ei:
        open_source("some-org/some-model")
    assert "\n" not in str(ei.value)


def test_gguf_source_glue(tmp_path, monkeypatch) -> None:
    """The GGUF path: transformers' reader (patched here to a tiny model; the real 98 MB SmolLM2 GGUF goes
    through the same calls in llmpack.testing.smollm2_dir) -> plain model without quantization_config."""
    import transformers

    seen = {}

    def fake_from_pretrained(path, gguf_file=None, **kw):
        seen["args"] = (path, gguf_file)
        m = tiny_model("llama")
        m.config.quantization_config = {"quant_method": "gguf"}
        return m

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF fake")
    src = open_source(g)
    assert seen["args"] == (tmp_path, "m.gguf")
    assert src.kind == "gguf" and "lm_head.weight" in src.dropped_tied
    assert src.config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in src.config
    ref = hashlib.sha256(json.dumps([["m.gguf", g.stat().st_size, hashlib.sha256(g.read_bytes()).hexdigest()]],
                                    separators=(",", ":")).encode()).hexdigest()
    assert src.fingerprint() == ref
