"""Size figures: disk usage, parameter bytes by dtype (tied once, int8 + scales), peak memory."""

from __future__ import annotations

import torch

from llmpack.measure.size import PeakMemory, SizeStats, current_rss, disk_usage, memory_method, param_bytes
from llmpack.testing import tiny_model


def test_param_bytes_linear() -> None:
    by, p, b, n = param_bytes(torch.nn.Linear(4, 3))
    assert by == {"float32": (12 + 3) * 4}
    assert (p, b, n) == (60, 0, 15)


def test_tied_embeddings_counted_once() -> None:
    tied = param_bytes(tiny_model("llama"))
    untied = param_bytes(tiny_model("llama-untied"))
    emb = 256 * 64 * 4
    assert untied[1] - tied[1] == emb  # lm_head shares the embedding in the tied model


class _Int8Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(8, 16, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(8, 1, dtype=torch.bfloat16))
        self.bias = torch.nn.Parameter(torch.zeros(8))


def test_int8_weight_and_scale_counted() -> None:
    by, p, b, n = param_bytes(_Int8Linear())
    assert by == {"bfloat16": 16, "float32": 32, "int8": 128}
    assert p == 32 and b == 144 and n == 8


def test_param_bytes_bf16_halves() -> None:
    m = tiny_model("gpt2")
    f32 = param_bytes(m)[0]
    bf = param_bytes(m.to(torch.bfloat16))[0]
    assert bf["bfloat16"] * 2 == f32["float32"]


def test_disk_usage(tmp_path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_bytes(b"{}")
    assert disk_usage(tmp_path) == {"a.safetensors": 10, "sub/b.json": 2}
    assert disk_usage(tmp_path / "a.safetensors") == {"a.safetensors": 10}


def test_peak_memory_sees_allocation() -> None:
    with PeakMemory("cpu") as pm:
        x = torch.ones(25_000_000)  # 100 MB
        del x
    assert 80_000_000 < pm.peak_bytes < 400_000_000
    assert pm.method == memory_method("cpu")
    assert current_rss() > 0


def test_peak_memory_cuda(device: str) -> None:
    with PeakMemory(device) as pm:
        x = torch.ones(2_500_000, device=device)
        del x
    assert pm.peak_bytes >= 9_000_000


def test_sizestats_roundtrip() -> None:
    s = SizeStats(files={"m.safetensors": 3}, disk_bytes=3, param_bytes_by_dtype={"int8": 3}, load_peak_bytes=7)
    assert SizeStats.from_dict(s.to_dict()) == s
    assert s.total_param_bytes == 3


def test_touch_weights_makes_mapped_weights_resident(tmp_path) -> None:
    from llmpack.measure.size import touch_weights

    f = tmp_path / "w.bin"
    f.write_bytes(b"\x01" * 40_000_000)
    m = torch.nn.Module()
    m.register_buffer("w", torch.from_file(str(f), shared=True, size=40_000_000, dtype=torch.uint8))
    with PeakMemory("cpu") as untouched:
        pass
    with PeakMemory("cpu") as pm:
        touch_weights(m)
    assert pm.peak_bytes > 30_000_000 > untouched.peak_bytes
