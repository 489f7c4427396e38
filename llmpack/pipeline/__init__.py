"""``llmpack.quantize``: source -> plan -> actions -> streaming shard writer -> atomic model dir.

* :mod:`~llmpack.pipeline.write` — the streaming write (one tensor at a time);
* :mod:`~llmpack.pipeline.calibration` — int8 calibration (streamed block by block for directories);
* :mod:`~llmpack.tune.fp16` — the FP16 activation check on the written output (streamed);
* :mod:`~llmpack.pipeline.memory` — in-memory conversion of an ``nn.Module``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llmpack.checkpoint.sources import open_source
from llmpack.config import Method, Recipe
from llmpack.errors import BadInputError, ConfigError, Fp16OverflowError
from llmpack.pipeline.calibration import calibrate_int8
from llmpack.tune.fp16 import CALIB_TOKENS, check_fp16_activations, fp16_guard
from llmpack.pipeline.memory import quantize_in_memory
from llmpack.pipeline.result import QuantizeResult, budget_line, budget_summary
from llmpack.pipeline.write import check_against_config, refuse_out_in_source, write_output

if TYPE_CHECKING:
    from llmpack.tune.budget import Int8Decisions

__all__ = ["quantize", "QuantizeResult", "make_recipe", "check_fp16_activations", "CALIB_TOKENS", "budget_line",
           "budget_summary", "check_device"]


def check_device(device: "str | torch.device | None") -> torch.device:
    """A compute device llmpack can use here (``cpu``, or ``cuda`` when CUDA is available).

    Raises:
        BadInputError: ``cuda`` without CUDA, or an unknown device (CLI exit 2).

    Example:
        >>> check_device("cpu").type
        'cpu'
    """
    try:
        dev = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError) as e:
        raise BadInputError(f"unknown device {device!r} ({e}): use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("device 'cuda' was asked for but CUDA is not available here: use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise BadInputError(f"unsupported device {device!r}: use 'cpu' or 'cuda'")
    return dev


def make_recipe(recipe: Recipe | None = None, **overrides: Any) -> Recipe:
    """A recipe from ``recipe`` (default ``Recipe()``) with the non-``None`` overrides applied.

    Example:
        >>> make_recipe(method="bf16", ignore=None).method.value
        'bf16'
    """
    base = recipe if recipe is not None else Recipe()
    changes = {k: v for k, v in overrides.items() if v is not None}
    names = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(changes) - names
    if unknown:
        raise ConfigError(f"unknown quantize options {sorted(unknown)}: valid recipe fields are {sorted(names)}")
    if "ignore" in changes and isinstance(changes["ignore"], str):
        changes["ignore"] = (changes["ignore"],)
    return dataclasses.replace(base, **changes) if changes else base


def quantize(
    source: "str | os.PathLike[str] | torch.nn.Module",
    method: "str | Method | None" = None,
    *,
    out: "str | os.PathLike[str] | None" = None,
    max_shard_size: "int | str | None" = None,
    ignore: "list[str] | tuple[str, ...] | None" = None,
    overwrite: bool = False,
    fp16_overflow: str | None = None,
    quiet: bool = False,
    recipe: Recipe | None = None,
    calibrate: bool = True,
    compile: bool = False,
    tokenizer: Any = None,
    calibration_text: str | None = None,
    device: "str | torch.device" = "cpu",
    **recipe_kwargs: Any,
) -> QuantizeResult:
    """Quantize ``source`` into a sharded safetensors model directory ``out`` (or in memory).

    Args:
        source: HF directory, ``.safetensors`` / ``.gguf`` file, hub id, or a ``transformers`` model.
        method: ``"fp16"`` (default), ``"bf16"``, ``"int8"``, ``"int8-weight-only"``, ``"fp8"`` (alias
            ``"fp8-dynamic"``), ``"fp8-weight-only"``.
        out: output directory; built beside itself in a temp dir and renamed into place at the end.
            ``None`` with a model source returns the converted model in memory (``result.model``).
        max_shard_size: largest shard (``"2GB"`` default).
        ignore: glob / ``re:`` patterns of tensor or module names kept exactly as in the source.
        overwrite: replace an existing ``out`` (only once the new output is complete).
        fp16_overflow: ``"error"`` (default) refuses FP16 overflow; ``"keep"`` keeps offending modules in float32.
        quiet: no progress bar.
        recipe: a full :class:`~llmpack.config.Recipe`; the other options override its fields.
        calibrate: run the FP16 activation check, and for int8 the accuracy calibration (SmoothQuant
            scales, ``max_ppl_increase`` / ``max_kl`` search; see ``docs/accuracy-budget.md``), on
            calibration text (default on; int8 without it is plain W8A8, and a budget is refused).
        compile: in-memory only: ``result.model`` is ``torch.compile``d (int8 kernels prepared first,
            see ``llmpack.runtime.prepare.compile_int8``); the uncompiled model is ``result.model._orig_mod``.
        tokenizer: int8 with a model source: its tokenizer, needed to calibrate (directories load their own).
        calibration_text: int8: calibration text (default ``llmpack.measure.text.default_text("calib")``).
        device: where the FP16 check and the int8 calibration run a directory's blocks, one at a time
            (``"cuda"``: a model larger than GPU memory calibrates on one GPU), and where int8 / fp8 weights are
            quantized, one tensor at a time; outputs are the same.
        **recipe_kwargs: other Recipe fields (``float_dtype``, ``quantize_embeddings``, ``max_ppl_increase``,
            ``max_kl``, ``smooth`` ...).

    Returns:
        :class:`QuantizeResult`.

    Raises:
        SourceNotFoundError, UnsupportedFormatError, OutputExistsError, OutputLockedError,
        Fp16OverflowError, ConfigMismatchError (config.json does not describe the weights), Interrupted
        (all leave no output and no temp dir behind).

    Example:
        >>> import llmpack
        >>> res = llmpack.quantize("smollm2", method="bf16", out="smollm2-bf16")  # doctest: +SKIP
        >>> res.summary()                                                        # doctest: +SKIP
        'bf16: 272 tensors, 538.1 MB -> 269.1 MB (0.50x) in 3.1s -> smollm2-bf16'
    """
    rec = make_recipe(recipe, method=method, max_shard_size=max_shard_size,
                      ignore=tuple(ignore) if ignore is not None and not isinstance(ignore, str) else ignore,
                      fp16_overflow=fp16_overflow, **recipe_kwargs)
    t0 = time.perf_counter()
    dev = check_device(device)
    if out is None:
        if isinstance(source, torch.nn.Module):
            res = quantize_in_memory(source, rec, t0, tokenizer=tokenizer, calibration_text=calibration_text,
                                      calibrate=calibrate, quiet=quiet)
            if res.model is not None:
                from llmpack.runtime.prepare import compile_int8, prepare_int8

                # Kernel caches built now, so a plain torch.compile(model) traces without graph breaks.
                res.model = compile_int8(res.model) if compile else prepare_int8(res.model)
            return res
        raise ConfigError("out= is required unless the source is an in-memory model: pass an output directory")
    src = open_source(source)
    if not src.infos:
        raise BadInputError(f"{src.path} holds no tensors: nothing to quantize; pass a model directory with weights")
    out_path = Path(out).absolute()
    refuse_out_in_source(src, out_path)
    check_against_config(src)
    from llmpack._atomic import atomic_dir

    int8: Int8Decisions | None = None
    budget: dict[str, Any] | None = None
    if rec.method.is_quantized:
        int8, budget = calibrate_int8(source if isinstance(source, torch.nn.Module) else src, rec,
                                      tokenizer=tokenizer, calibration_text=calibration_text, calibrate=calibrate,
                                      quiet=quiet, device=dev)
    with atomic_dir(out_path, overwrite=overwrite) as tmp:
        result = write_output(src, tmp, rec, {}, quiet, int8=int8, budget=budget, device=dev)
        if rec.method == Method.FP16 and calibrate and src.config and src.config.get("architectures"):
            keep = fp16_guard(src, tmp, rec, device=dev)
            if keep:
                for child in list(tmp.iterdir()):
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                result = write_output(src, tmp, rec, keep, quiet)
                bad = check_fp16_activations(tmp, device=dev)
                if bad is not None:
                    raise Fp16OverflowError(
                        f"FP16 activations still overflow in module {bad} after keeping {sorted(keep)} in float32: "
                        "use method='bf16'"
                    )
    result.out_dir = out_path
    result.seconds = time.perf_counter() - t0
    return result


