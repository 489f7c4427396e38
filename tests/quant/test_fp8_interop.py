"""FP8 interop: transformers + compressed-tensors loads llmpack's ``float-quantized`` output and computes what
``llmpack.load`` computes (its CPU path is compressed-tensors' reference arithmetic), on tiny configs of several
architectures and on SmolLM2, whose held-out perplexity stays within +1 % of float."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

import llmpack
from llmpack.runtime.linear import Fp8Linear

pytest.importorskip("compressed_tensors")


def _hf_vs_llmpack(d: Path, ids: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(d)
    ours = llmpack.load(d)
    with torch.no_grad():
        return ours, hf(ids).logits, ours(ids).logits


ARCHS = ["llama", "llama-tied", "qwen2", "gemma2", "gpt-neox", "opt", "mistral", "phi3"]
CASES = [(a, m) for a in ARCHS for m in ("fp8", "fp8-weight-only") if (a, m) != ("opt", "fp8")]  # opt: see below


@pytest.mark.parametrize("arch,method", CASES)
def test_transformers_and_llmpack_agree_on_fp8_files(arch: str, method: str, tmp_path: Path) -> None:
    """Random-init models of several architectures round-trip: streamed write -> ``llmpack.load`` and
    transformers + compressed-tensors give the same logits, every targeted layer is FP8 in both."""
    from transformers import AutoModelForCausalLM

    from llmpack.testing import arch_configs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(arch_configs(300)[arch]).eval()
    d = tmp_path / "q"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no tokenizer, no calibration: the format is what is tested
        llmpack.quantize(model, method, out=d, quiet=True)
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "float-quantized"
    ids = torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours, a, b = _hf_vs_llmpack(d, ids)
    assert not [w for w in caught if "Could not match" in str(w.message)]
    fp8 = [n for n, m in ours.named_modules() if isinstance(m, Fp8Linear)]
    assert fp8 and all(ours.get_submodule(n).act_quant == (method == "fp8") for n in fp8)
    assert all(llmpack.open(d)[f"{n}.weight"].dtype == torch.float8_e4m3fn for n in fp8)
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)  # (a float-rounding flip of one FP8 token value)


def test_opt_fc_layers_are_where_compressed_tensors_skips_token_quantization(tmp_path: Path) -> None:
    """OPT reshapes its hidden states to 2-D before ``fc1``; compressed-tensors' ``token`` strategy reduces over the
    dimensions after the first two, so on a 2-D input it takes one scale per *element* and FP8 activations become
    lossless there, while llmpack (and vLLM) quantize per token as the file declares. Every other layer computes
    the same function in both runtimes; ``fc1`` / ``fc2`` differ by exactly the activation quantization noise."""
    from transformers import AutoModelForCausalLM

    from llmpack.quant.int8 import sqnr_db
    from llmpack.testing import arch_configs

    torch.manual_seed(0)
    d = tmp_path / "q"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        llmpack.quantize(AutoModelForCausalLM.from_config(arch_configs(300)["opt"]).eval(), "fp8", out=d, quiet=True)
    hf, ours = AutoModelForCausalLM.from_pretrained(d), llmpack.load(d)
    inputs: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: inputs.__setitem__(n, a[0].detach()))
             for n, m in hf.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    with torch.no_grad():
        hf(torch.randint(1, 300, (2, 16), generator=torch.Generator().manual_seed(0)))
        for h in hooks:
            h.remove()
        for n, x in inputs.items():
            q = sqnr_db(hf.get_submodule(n)(x), ours.get_submodule(n)(x))
            if x.dim() == 2:
                assert n.endswith((".fc1", ".fc2")) and 20 < q < 45, (n, q)
            else:
                assert q > 100, (n, q)
    assert sum(x.dim() == 2 for x in inputs.values()) == 6


def test_fp8_on_cpu_says_once_that_it_runs_the_reference(tmp_path: Path) -> None:
    from llmpack.runtime.kernels import select
    from llmpack.testing import tiny_model

    d = llmpack.quantize(tiny_model("llama"), "fp8", out=tmp_path / "q", quiet=True).out_dir
    select._warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = llmpack.load(d)
        with torch.no_grad():
            m(torch.tensor([[1, 2, 3]]))
            m(torch.tensor([[1, 2, 3, 4]]))
    said = [w for w in caught if "fp8 on CPU runs the reference" in str(w.message)]
    assert len(said) == 1


@pytest.fixture(scope="module")
def smollm2_fp8(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 FP8, defaults (calibrated smoothing, every linear layer W8A8)."""
    d = tmp_path_factory.mktemp("fp8") / "smollm2-fp8"
    llmpack.quantize(smollm2_dir, "fp8", out=d, quiet=True)
    return d


@pytest.fixture(scope="module")
def smollm2_fp8_budget(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 FP8 with a 1 % perplexity budget, decided on the calibration slice (the held-out check is below)."""
    d = tmp_path_factory.mktemp("fp8b") / "smollm2-fp8-budget"
    llmpack.quantize(smollm2_dir, "fp8", out=d, quiet=True, max_ppl_increase=1)
    return d


@pytest.mark.slow
def test_transformers_agrees_with_llmpack_on_smollm2_fp8(smollm2_fp8: Path, smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    from llmpack.measure.text import default_text

    tok = AutoTokenizer.from_pretrained(smollm2_fp8)
    ids = tok(default_text("eval", nbytes=2000), return_tensors="pt").input_ids[:, :192]
    _, a, b = _hf_vs_llmpack(smollm2_fp8, ids)
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agree >= 0.99, agree
    src = sum(p.stat().st_size for p in smollm2_dir.glob("*.safetensors"))
    out = sum(p.stat().st_size for p in smollm2_fp8.glob("*.safetensors"))
    assert out < 0.5 * src  # fp32 source: FP8 linears, float embeddings (tied head) and norms


@pytest.mark.slow
def test_smollm2_fp8_held_out_perplexity_within_one_percent(smollm2_fp8_budget: Path, smollm2_dir: Path) -> None:
    """The budget's decisions (made on the calibration slice) hold on the evaluation slice, at a size near FP8's."""
    d = smollm2_fp8_budget
    report = llmpack.measure(smollm2_dir, d, latency=False, quiet=True)
    acc = report.accuracy
    assert acc.ppl_delta_pct is not None and acc.ppl_delta_pct <= 1.0, acc
    assert acc.top1 >= 0.9 and report.candidate.method == "fp8"
    assert "fp8_runtime" in report.settings
    budget = json.loads((d / "llmpack.json").read_text())["extra"]["int8_budget"]
    summary = budget["summary"]
    assert summary["met"] and summary["sensitivity"] == "role" and summary["float_fallback_dtype"] == "bf16"
    assert "model.layers.*.mlp.down_proj" in summary["role_kl"]
    layers = [r for r in budget["records"] if r.get("kind") == "layer"]
    assert {r["int8"] for r in layers} <= {"w8a8", "w8a16", "float"} and any(r["int8"] != "float" for r in layers)
    assert all(r.get("stored") == "bf16" for r in layers if r["int8"] == "float")
    assert all(llmpack.open(d)[f"{r['module']}.weight"].dtype == torch.bfloat16 for r in layers if r["int8"] == "float")
    assert report.size_ratio <= 0.55, report.size_ratio  # (measured 0.48x: 9 W8A8, 82 weight-only, 119 bf16; docs/fp8.md)
