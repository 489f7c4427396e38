"""llmpack._dtypes (the one dtype-name table) and llmpack._nn (the one Conv1D test, the one hooks context)."""

from __future__ import annotations

import pytest
import torch

from llmpack import _dtypes
from llmpack._nn import forward_hooks, is_conv1d, is_conv1d_name
from llmpack.checkpoint.reader import DTYPE_FROM_ST, dtype_size
from llmpack.checkpoint.validate import DTYPE_SIZES


@pytest.mark.parametrize("long,short", [("float32", "fp32"), ("float", "fp32"), ("float16", "fp16"),
                                        ("half", "fp16"), ("bfloat16", "bf16"), ("float64", "fp64"),
                                        ("int8", "int8"), ("fp16", "fp16"), ("float8_e4m3fn", "float8_e4m3fn")])
def test_short_names(long: str, short: str) -> None:
    assert _dtypes.short_name(long) == short


def test_long_names_and_torch_dtypes_round_trip() -> None:
    for short in _dtypes.FLOAT_SHORT_NAMES:
        dt = _dtypes.torch_dtype(short)
        assert _dtypes.torch_name(dt) == _dtypes.long_name(short)
        assert _dtypes.short_name(_dtypes.torch_name(dt)) == short
    with pytest.raises(KeyError):
        _dtypes.long_name("int4")
    assert _dtypes.torch_dtype("nn") is None  # a torch attribute that is not a dtype


def test_safetensors_table_matches_torch() -> None:
    assert DTYPE_SIZES == _dtypes.ST_SIZES
    assert set(DTYPE_FROM_ST) <= set(DTYPE_SIZES)
    for code, dt in DTYPE_FROM_ST.items():
        assert DTYPE_SIZES[code] == dtype_size(dt), code


def test_every_reader_of_dtype_names_agrees() -> None:
    from llmpack.config import Method, Recipe
    from llmpack.measure.report import ModelInfo
    from llmpack.pack.modelpack import precision_of
    from llmpack.quant.floats import float_dtype

    for long, short in (("float16", "fp16"), ("bfloat16", "bf16"), ("half", "fp16")):
        assert Method.parse(long).value == short
        assert Recipe(method="int8", float_dtype=long).float_dtype == short
        assert float_dtype(long) == _dtypes.torch_dtype(short)
        assert precision_of({"torch_dtype": long}) == (short, "")
        assert ModelInfo(name="m", dtype=long).label == short


def test_is_conv1d() -> None:
    from transformers.pytorch_utils import Conv1D

    class Conv1DLookalike(torch.nn.Module):  # same class name, not transformers' layer (no nf)
        pass

    Conv1DLookalike.__name__ = "Conv1D"
    assert is_conv1d(Conv1D(4, 2)) and not is_conv1d(torch.nn.Linear(2, 2)) and not is_conv1d(Conv1DLookalike())
    assert is_conv1d_name("Conv1D") and not is_conv1d_name("Linear")


def test_forward_hooks_run_and_are_removed() -> None:
    lin = torch.nn.Linear(2, 2)
    seen: list[str] = []
    with forward_hooks([(lin, lambda m, a, o: seen.append("post"))]):
        with forward_hooks([(lin, lambda m, a: seen.append("pre"))], pre=True):
            lin(torch.ones(1, 2))
    lin(torch.ones(1, 2))
    assert seen == ["pre", "post"]
    assert not lin._forward_hooks and not lin._forward_pre_hooks


def test_forward_hooks_removed_on_error_and_when_registering_fails() -> None:
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match="boom"):
        with forward_hooks([(a, lambda *x: None), (b, lambda *x: None)]):
            raise RuntimeError("boom")
    assert not a._forward_hooks and not b._forward_hooks

    def pairs():
        yield a, (lambda *x: None)
        raise LookupError("no such module")

    with pytest.raises(LookupError):
        with forward_hooks(pairs()):
            pass  # pragma: no cover - never entered
    assert not a._forward_hooks
