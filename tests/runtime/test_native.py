"""llmpack.runtime.native: the compiled AVX2 helper gives the PyTorch path's results bit for bit."""

from __future__ import annotations

import platform

import pytest
import torch
from torch import nn

from llmpack.runtime import modules as M
from llmpack.runtime import native

X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.fixture
def ops() -> object:
    """The native ops; on an x86 machine with AVX2 (CI's kind) they must build."""
    if not X86 or not M._onednn_available():
        pytest.skip("the native helper serves x86 CPUs with oneDNN (not this machine)")
    got = M._native_ops()
    if got is None:
        pytest.fail(f"native helper unavailable: {native.native_status()}")
    return got


@pytest.fixture
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget the process's build result (restored afterwards)."""
    monkeypatch.setattr(native, "_state", {})
    M._native_ops.cache_clear()
    yield
    M._native_ops.cache_clear()


def _layer(k: int, n: int, seed: int, bias: bool) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=g)
    scale = torch.rand(n, generator=g) / 50 + 1e-4
    return M._onednn_args(w, scale), (torch.randn(n, generator=g) if bias else None)


def _call(ops: object, x: torch.Tensor, layers: list) -> list[torch.Tensor]:
    return ops.onednn_w8a8(x, [a[0] for a, _ in layers], [a[1] for a, _ in layers], [a[2] for a, _ in layers],
                           [a[3] for a, _ in layers], [b for _, b in layers])


@pytest.mark.parametrize("m,k,n", [(1, 64, 32), (3, 13, 5), (17, 45, 24), (128, 576, 192), (9, 100, 70), (64, 768, 40)])
def test_onednn_w8a8_is_the_torch_path_bit_for_bit(ops: object, m: int, k: int, n: int) -> None:
    g = torch.Generator().manual_seed(m * 1000 + k)
    x = torch.randn(m, k, generator=g) * torch.logspace(-3, 3, m).reshape(m, 1)  # tokens of very different size
    x[0, k // 2] = 0.5
    if m > 2:
        x[1] = 0.0  # an all-zero token: scale clamps to eps, output is the bias
    layers = [_layer(k, n, 1, True), _layer(k, n + 3, 2, False)]
    want = M._onednn_w8a8_torch(x, layers)
    got = _call(ops, x, layers)
    assert len(got) == 2
    for a, b in zip(want, got):
        assert a.shape == b.shape and torch.equal(a, b)


def test_nan_token_gives_nan_output_others_unchanged(ops: object) -> None:
    x = torch.randn(4, 40)
    x[2, 7] = float("nan")
    layers = [_layer(40, 16, 3, True)]
    got = _call(ops, x, layers)[0]
    assert torch.isnan(got[2]).all()
    rows = [0, 1, 3]
    torch.testing.assert_close(got[rows], _call(ops, x[rows].contiguous(), layers)[0], rtol=0, atol=0)


def test_bad_arguments_are_refused(ops: object) -> None:
    layers = [_layer(8, 4, 4, True)]
    with pytest.raises(RuntimeError, match="contiguous float32"):
        _call(ops, torch.randn(3, 8, dtype=torch.float64), layers)
    with pytest.raises(RuntimeError, match="bias"):
        _call(ops, torch.randn(3, 8), [(layers[0][0], torch.randn(5))])


def test_model_outputs_identical_with_and_without_native(ops: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quantized Llama (sibling groups included) gives the same logits either way; the native op is called."""
    import llmpack
    from llmpack.testing import tiny_model

    monkeypatch.setenv(M.ENV_KERNEL, "onednn")
    monkeypatch.setattr(M, "FBGEMM_MAX_TOKENS", 0)  # oneDNN at every size
    M.cpu_int8_kernel.cache_clear()
    try:
        with pytest.warns(UserWarning, match="no calibration"):
            model = llmpack.quantize(tiny_model("llama"), "int8", quiet=True).model
        ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(5))
        calls = []
        real = ops.onednn_w8a8

        class Spy:
            def onednn_w8a8(self, *args: object) -> object:
                calls.append(1)
                return real(*args)

        with torch.inference_mode():
            monkeypatch.setattr(M, "_native_ops", lambda: Spy())
            fast = model(ids).logits
            monkeypatch.setattr(M, "_native_ops", lambda: None)
            slow = model(ids).logits
    finally:
        M.cpu_int8_kernel.cache_clear()
    assert calls and torch.equal(fast, slow)


def test_env_turns_it_off(fresh_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(native.ENV_NATIVE, "0")
    assert native.avx2_ops() is None
    assert native.native_status() == f"off ({native.ENV_NATIVE}=0)"
    assert M._native_ops() is None


def test_build_failure_warns_once_and_falls_back(fresh_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no AVX2: the build is never attempted here")
    monkeypatch.delenv(native.ENV_NATIVE, raising=False)

    def broken() -> None:
        raise RuntimeError("Error building extension 'x'\nlong compiler output")

    monkeypatch.setattr(native, "_build", broken)
    with pytest.warns(RuntimeWarning, match=r"could not be built \(Error building extension 'x'\)"):
        assert native.avx2_ops() is None
    assert native.native_status() == "not built: Error building extension 'x'"
    assert native.avx2_ops() is None  # remembered: no second warning, no second build
    lin = M.Int8Linear.from_float(nn.Linear(16, 8))
    assert lin(torch.randn(3, 16)).shape == (3, 8)  # the PyTorch path serves


def test_missing_compiler_is_named(fresh_state: None, monkeypatch: pytest.MonkeyPatch) -> None:
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no AVX2: the build is never attempted here")
    monkeypatch.delenv(native.ENV_NATIVE, raising=False)
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        assert native.avx2_ops() is None
    assert "no-such-compiler-xyz" in native.native_status()
