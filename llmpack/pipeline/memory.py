"""In-memory conversion: ``llmpack.quantize(model)`` without ``out=`` returns the converted model."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from llmpack.config import Method, Recipe
from llmpack.errors import Fp16OverflowError
from llmpack.pipeline.calibration import calibrate_int8
from llmpack.pipeline.result import QuantizeResult

__all__ = ["quantize_in_memory"]


def quantize_in_memory(model: torch.nn.Module, recipe: Recipe, t0: float, *, tokenizer: Any = None,
                        calibration_text: str | None = None, calibrate: bool = True,
                        quiet: bool = False) -> QuantizeResult:
    from llmpack.checkpoint.sources import dedupe_state_dict
    from llmpack.quant.floats import check_finite, fp16_overflows

    sd, _ = dedupe_state_dict(model)
    src_bytes = sum(t.numel() * t.element_size() for t in sd.values())
    if recipe.method.is_quantized:
        from llmpack.runtime.convert import quantize_module

        int8, budget = calibrate_int8(model, recipe, tokenizer=tokenizer, calibration_text=calibration_text,
                                      calibrate=calibrate, quiet=quiet, warn=True)
        if int8 is not None:
            from llmpack.tune.budget import apply_decisions

            new = apply_decisions(model, int8, recipe)
        else:
            new = quantize_module(model, recipe)
    else:
        int8, budget = None, None
        dtype = torch.float16 if recipe.method == Method.FP16 else torch.bfloat16
        for name, t in sd.items():
            if t.is_floating_point():
                check_finite(t, name)
                if dtype == torch.float16 and fp16_overflows(t):
                    raise Fp16OverflowError(f"tensor {name} has values beyond FP16's +-65504: use method='bf16'")
        new = copy.deepcopy(model).to(dtype)
        if hasattr(new, "config"):
            new.config.dtype = dtype
    out_sd, _ = dedupe_state_dict(new)
    out_bytes = sum(t.numel() * t.element_size() for t in out_sd.values())
    return QuantizeResult(out_dir=None, files={}, recipe=recipe, manifest=None, decisions=[],
                          source={"kind": "module", "path": f"<memory>:{type(model).__name__}", "fingerprint": ""},
                          source_bytes=src_bytes, output_bytes=out_bytes, seconds=time.perf_counter() - t0, model=new,
                          budget=budget, int8_decisions=int8)


