"""A config.json that does not match its weights: one line naming the tensor and the config key, exit 2,
nothing left behind, the source unchanged — for every method and for measure."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llmpack.cli import main


def _sha(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}


def _bad(tok_dirs: dict[str, Path], tmp_path: Path, how: str) -> Path:
    d = tmp_path / f"src-{how}"
    shutil.copytree(tok_dirs["llama-untied"], d)
    cfg = json.loads((d / "config.json").read_text())
    if how == "shape":
        cfg["intermediate_size"] = 96  # the stored MLP weights are 176 wide
    elif how == "missing":
        cfg["num_hidden_layers"] = 3  # the checkpoint has 2 layers
    elif how == "unexpected":
        sd = load_file(d / "model.safetensors")
        sd["model.layers.0.mlp.extra.weight"] = torch.zeros(2, 2)
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(cfg))
    return d


CASES = {
    "shape": ("model.layers.0.mlp.gate_proj.weight", "intermediate_size=96"),
    "missing": ("model.layers.2.", "num_hidden_layers=3"),
    "unexpected": ("model.layers.0.mlp.extra.weight", "num_hidden_layers=2"),
}


@pytest.mark.parametrize("method", ["fp16", "bf16", "int8", "int8-weight-only"])
@pytest.mark.parametrize("how", sorted(CASES))
def test_quantize_refuses_mismatched_config(method: str, how: str, tok_dirs: dict[str, Path], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    src = _bad(tok_dirs, tmp_path, how)
    before = _sha(src)
    out = tmp_path / "out"
    capsys.readouterr()
    code = main(["quantize", str(src), "--method", method, "--out", str(out), "-q"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("llmpack: error: "), err
    tensor, key = CASES[how]
    assert tensor in err[0] and key in err[0] and "fix config.json" in err[0], err[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert _sha(src) == before


def test_measure_refuses_mismatched_config(tok_dirs: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = _bad(tok_dirs, tmp_path, "shape")
    capsys.readouterr()
    code = main(["measure", str(tok_dirs["llama-untied"]), str(src), "--quick", "--no-latency", "-q"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1, err
    assert "model.layers.0.mlp.gate_proj.weight" in err[0] and "intermediate_size=96" in err[0]


@pytest.mark.parametrize("cmd", ["quantize", "measure"])
def test_device_cuda_without_cuda_exits_2(cmd: str, tok_dirs: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here: the refusal cannot happen")
    src = str(tok_dirs["llama"])
    argv = (["quantize", src, "--method", "int8", "--out", str(tmp_path / "o")] if cmd == "quantize"
            else ["measure", src, src, "--quick"]) + ["--device", "cuda", "-q"]
    capsys.readouterr()
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "CUDA" in err[0], err
    assert not (tmp_path / "o").exists()


def test_token_ids_beyond_the_vocabulary_are_one_clear_error(tiny_dirs: dict[str, Path]) -> None:
    from llmpack.errors import ConfigMismatchError
    from llmpack.stream import open_streamer

    st = open_streamer(tiny_dirs["llama"])
    with pytest.raises(ConfigMismatchError, match=r"token id 300 .* 256 rows \(config.json vocab_size=256\)"):
        st.windows([{"input_ids": torch.tensor([[1, 300]])}])


def test_checkpoint_saved_without_the_base_model_prefix(tmp_path: Path) -> None:
    """GPT-2 checkpoints on the hub store "h.0..." / "wte.weight" (no "transformer."), the tied head not at all."""
    import torch

    from llmpack.stream import open_streamer
    from llmpack.testing import tiny_model

    m = tiny_model("gpt2")
    m.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    save_file({k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    got = next(open_streamer(tmp_path).logits([{"input_ids": ids}])[0])
    with torch.no_grad():
        torch.testing.assert_close(got, m(input_ids=ids).logits[0], atol=1e-5, rtol=1e-5)
