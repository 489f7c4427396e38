"""Layer-streamed execution equals the whole-model forward on every decoder-only architecture we can build."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmpack.stream import BlockStreamer, StreamUnsupported, find_blocks, open_streamer
from llmpack.stream.evaluate import StreamedEvaluator, logit_chunk

V = 300


def _configs() -> dict[str, object]:
    from llmpack.testing import arch_configs

    return arch_configs(V)


ARCHS = sorted(_configs())


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module]]:
    from transformers import AutoModelForCausalLM

    out = {}
    for name, cfg in _configs().items():
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(cfg).eval()
        d = tmp_path_factory.mktemp(name)
        m.save_pretrained(d)
        out[name] = (d, m)
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_streamed_forward_equals_whole_model(arch: str, arch_dirs: dict) -> None:
    d, model = arch_dirs[arch]
    ids = torch.randint(0, V, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids).logits[0]
    for st in (open_streamer(d), BlockStreamer.resident(model)):
        got = torch.cat(list(st.logits([{"input_ids": ids}], chunk_tokens=16)[0]))
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_streamed_blocks_are_dropped(arch_dirs: dict) -> None:
    d, _ = arch_dirs["llama"]
    st = open_streamer(d)
    st.logits([{"input_ids": torch.tensor([[1, 2, 3]])}])
    assert all(p.device.type == "meta" for p in st.blocks.parameters())
    assert st.model.model.embed_tokens.weight.device.type == "cpu"


def test_streamed_evaluator_matches_whole_model(arch_dirs: dict) -> None:
    from llmpack.tune.calibrate import Evaluator

    d, model = arch_dirs["gemma2"]
    batches = [torch.randint(0, V, (1, 33), generator=torch.Generator().manual_seed(s)) for s in (2, 3)]
    ev = StreamedEvaluator(open_streamer(d), batches)
    ev.chunk = 8  # several chunks per window
    base = ev.reference()
    whole = Evaluator(model, batches)
    assert base == pytest.approx(whole.base_ppl, rel=1e-6)
    assert ev.candidate(lambda i, blk: None).kl == 0.0


def test_encoder_streams(tmp_path: Path) -> None:
    from llmpack.testing import tiny_model

    m = tiny_model("bert")
    m.save_pretrained(tmp_path)
    st = open_streamer(tmp_path)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding reaches the blocks through the captured mask
    ws = st.windows([{"input_ids": ids, "attention_mask": mask}])
    st.forward_blocks(ws)
    got = st.tail(ws[0]).last_hidden_state
    with torch.no_grad():
        ref = m(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_no_block_list_is_one_clear_error() -> None:
    with pytest.raises(StreamUnsupported, match="Sequential"):
        find_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))


def test_cuda_without_cuda_refused(arch_dirs: dict) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here: the refusal cannot happen")
    from llmpack.errors import BadInputError

    with pytest.raises(BadInputError, match="CUDA is not available"):
        open_streamer(arch_dirs["llama"][0], device="cuda")


def test_logit_chunk_bounds_memory() -> None:
    assert logit_chunk(262144) * 262144 <= 1 << 22
    assert 16 <= logit_chunk(10 ** 7) <= 128


def test_unstreamable_architecture_runs_whole_when_it_fits(arch_dirs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import llmpack.stream as S
    import llmpack.stream.blocks as B
    from llmpack.config import Recipe
    from llmpack.tune.budget import search_budget

    d, model = arch_dirs["qwen2"]
    batches = [torch.randint(0, V, (1, 24), generator=torch.Generator().manual_seed(4))]
    streamed = search_budget(d, None, Recipe(method="int8", max_kl=1e-5), batches=batches)

    def no_blocks(m: torch.nn.Module) -> None:
        raise StreamUnsupported(f"{type(m).__name__} has no list of identical blocks: it cannot be streamed")

    monkeypatch.setattr(B, "find_blocks", no_blocks)
    st = open_streamer(d)
    assert isinstance(st, S.WholeModel)
    ids = torch.randint(0, V, (1, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(torch.cat(list(st.logits([{"input_ids": ids}], chunk_tokens=8)[0])),
                                   model(input_ids=ids).logits[0], atol=1e-5, rtol=1e-5)
    whole = search_budget(d, None, Recipe(method="int8", max_kl=1e-5), batches=batches)
    assert (whole.weight_only, whole.keep_float) == (streamed.weight_only, streamed.keep_float)
    assert whole.summary["planned"]["kl"] == pytest.approx(streamed.summary["planned"]["kl"], rel=1e-4)
    monkeypatch.setattr(S, "available_bytes", lambda device="cpu": 1000)
    with pytest.raises(StreamUnsupported, match=r"Qwen2ForCausalLM cannot be run block by block .* GB available"):
        open_streamer(d)
