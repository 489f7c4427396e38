"""llmpack.runtime.kernels.select: the kernel ladder by CPU flags and the one option."""

from __future__ import annotations

import pytest

from llmpack.errors import ConfigError
from llmpack._env import ENV_KERNEL
from llmpack.runtime.kernels import cpu, native, onednn, select


@pytest.mark.parametrize("flags, built, want", [
    ({"avx2", "avx512bw", "avx512_vnni"}, True, "vnni"),  # AVX512-VNNI: llmpack's vpdpbusd kernel
    ({"avx2", "avx512bw", "avx512_vnni"}, False, "int_mm"),  # ... where it cannot be built, torch._int_mm
    ({"avx2", "avx512_vnni"}, True, "int_mm"),   # VNNI without AVX512BW: torch._int_mm
    ({"avx2", "amx_int8"}, True, "int_mm"),
    ({"avx2", "avx_vnni"}, True, "int_mm"),
    (set(), True, "int_mm"),                     # non-x86 (no /proc/cpuinfo flags line): _int_mm too
    ({"avx2", "fma"}, True, "avx2"),             # AVX2 only: llmpack's exact native kernels
    ({"avx2", "fma"}, False, "dequant"),         # ... and where they cannot be built, the reference
])
def test_auto_ladder(flags: set, built: bool, want: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_KERNEL, raising=False)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    monkeypatch.setattr(native, "checked_ops", lambda: object() if built else None)
    select.reset()
    assert select.cpu_kernel() == want
    assert select.is_exact(want)


@pytest.mark.parametrize("forced, built, has_onednn, want", [
    ("avx2-7bit", True, True, "avx2-7bit"),
    ("avx2-7bit", False, True, "onednn-7bit"),
    ("avx2-7bit", False, False, "dequant"),
    ("onednn-7bit", False, True, "onednn-7bit"),
    ("onednn-7bit", False, False, "dequant"),
    ("dequant", True, True, "dequant"),
    ("int_mm", True, True, "int_mm"),
    ("avx2", True, True, "avx2"),
])
def test_forced_kernels(forced: str, built: bool, has_onednn: bool, want: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KERNEL, forced.upper())  # case-insensitive
    monkeypatch.setattr(native, "checked_ops", lambda: object() if built else None)
    monkeypatch.setattr(onednn, "onednn_available", lambda: has_onednn)
    select.reset()
    assert select.cpu_kernel() == want
    assert select.is_exact(want) == (want not in ("avx2-7bit", "onednn-7bit"))


def test_bad_option_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KERNEL, "fast")
    select.reset()
    with pytest.raises(ConfigError, match=r"LLMPACK_INT8_KERNEL='fast' is not a kernel: choose one of auto, vnni, avx2"):
        select.cpu_kernel()


def test_cuda_and_the_reference_override() -> None:
    assert select.kernel_for("cuda", 64, 32) == "int_mm"
    assert select.kernel_for("cuda", 60, 32) == "dequant"  # _int_mm wants multiples of 8
    with select.use("dequant"):
        assert select.kernel_for("cuda", 64, 32) == "dequant" and select.cpu_kernel() == "dequant"
        with select.use("avx2"):
            assert select.cpu_kernel() == "avx2"
        assert select.cpu_kernel() == "dequant"


def test_decode_steps_take_the_native_kernel_where_it_measures_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the int_mm rung, inputs of at most FEW_TOKENS tokens run the native kernel when few_token_kernel()
    measured it faster (both exact); longer inputs, forced kernels and use() blocks are left alone."""
    monkeypatch.delenv(ENV_KERNEL, raising=False)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    select.reset()
    monkeypatch.setattr(select, "few_token_kernel", lambda: "avx2")
    assert select.kernel_for("cpu", 64, 64, tokens=1) == "avx2"
    assert select.kernel_for("cpu", 64, 64, tokens=select.FEW_TOKENS + 1) == "int_mm"
    assert select.kernel_for("cpu", 64, 64) == "int_mm"
    assert select.native_float_ops_on()
    with select.use("int_mm"):
        assert select.kernel_for("cpu", 64, 64, tokens=1) == "int_mm" and not select.native_float_ops_on()


def test_few_token_kernel_only_on_the_int_mm_rung(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KERNEL, "int_mm")
    select.reset()
    assert select.few_token_kernel() is None
    monkeypatch.delenv(ENV_KERNEL)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: {"avx2", "fma"})  # AVX2 only: avx2 already
    monkeypatch.setattr(native, "checked_ops", lambda: object())
    select.reset()
    assert select.cpu_kernel() == "avx2" and select.few_token_kernel() is None


def test_long_inputs_take_int_mm_where_it_measures_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the vnni rung (CPUs with AMX have AVX512-VNNI too), inputs longer than FEW_TOKENS run torch._int_mm
    when many_token_kernel() measured it faster (both exact); decode steps, forced kernels and use() blocks
    are left alone."""
    monkeypatch.delenv(ENV_KERNEL, raising=False)
    monkeypatch.setattr(select, "_chosen", lambda: "vnni")
    monkeypatch.setattr(select, "few_token_kernel", lambda: None)
    monkeypatch.setattr(select, "many_token_kernel", lambda: "int_mm")
    assert select.kernel_for("cpu", 64, 64, tokens=select.FEW_TOKENS + 1) == "int_mm"
    assert select.kernel_for("cpu", 64, 64) == "int_mm"
    assert select.kernel_for("cpu", 64, 64, tokens=1) == "vnni"
    with select.use("vnni"):
        assert select.kernel_for("cpu", 64, 64, tokens=512) == "vnni"


def test_many_token_kernel_only_on_the_vnni_rung_of_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_KERNEL, "vnni")
    select.reset()
    assert select.many_token_kernel() is None  # forced: never second-guessed
    monkeypatch.delenv(ENV_KERNEL)
    monkeypatch.setattr(select, "_chosen", lambda: "avx2")
    select.many_token_kernel.cache_clear()
    assert select.many_token_kernel() is None  # AVX2-only rung: nothing to compare
