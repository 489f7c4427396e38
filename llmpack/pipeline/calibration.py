"""INT8 accuracy calibration for :func:`llmpack.quantize`: one path for directories and in-memory models.

Directories are streamed one decoder block at a time (:mod:`llmpack.stream`), so the float model is never
loaded whole; in-memory models run through the same code with their blocks resident.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch

from llmpack.checkpoint.sources import Source
from llmpack.config import Recipe
from llmpack.errors import BadInputError
from llmpack.pipeline.result import budget_summary
from llmpack.quant.plan import ignored_by, module_of

if TYPE_CHECKING:
    from llmpack.tune.budget import Int8Decisions

__all__ = ["calibrate_int8", "is_causal_lm_config"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def has_budget(recipe: Recipe) -> bool:
    """True when the recipe sets an accuracy budget (``max_ppl_increase`` or ``max_kl``)."""
    return recipe.max_ppl_increase is not None or recipe.max_kl is not None


def is_causal_lm_config(config: Mapping[str, Any] | None) -> bool:
    """True when ``config.architectures`` names a causal LM.

    Example:
        >>> is_causal_lm_config({"architectures": ["LlamaForCausalLM"]}), is_causal_lm_config({})
        (True, False)
    """
    archs = list((config or {}).get("architectures") or [])
    if not archs:
        return False
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - very old/new transformers
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES = {}
    known: set[str] = set()
    for v in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        known.update((v,) if isinstance(v, str) else v)
    return any(a in known or a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs)


def _is_causal_lm_model(model: torch.nn.Module) -> bool:
    head = getattr(model, "get_output_embeddings", None)
    return callable(head) and head() is not None and is_causal_lm_config({"architectures": [type(model).__name__]})


def _ignored_modules(names: Iterable[str], recipe: Recipe) -> set[str]:
    """Modules with a tensor matched by the recipe's ignore patterns (kept exactly as in the source)."""
    out: set[str] = set()
    for name in names:
        module = module_of(name)
        if ignored_by(recipe, name, module) is not None:
            out.add(module)
    return out


def _no_calibration(recipe: Recipe, reason: str) -> tuple[None, dict[str, Any]]:
    if has_budget(recipe):
        raise BadInputError(f"the int8 accuracy budget (max_ppl_increase / max_kl) cannot be used: {reason}")
    return None, {"calibrated": False, "reason": reason}


def say(quiet: bool) -> Callable[[str], None] | None:
    """A progress printer to stderr (``None`` when quiet)."""
    if quiet:
        return None
    return lambda msg: print(f"llmpack: {msg}", file=sys.stderr, flush=True)


def calibrate_int8(source: "torch.nn.Module | Source", recipe: Recipe, *, tokenizer: Any, calibration_text: str | None,
                   calibrate: bool, quiet: bool, device: "str | torch.device" = "cpu",
                   warn: bool = False) -> "tuple[Int8Decisions | None, dict[str, Any]]":
    """Run the int8 accuracy calibration (W8A8 always; weight-only with a budget).

    Args:
        source: an in-memory model, or an opened directory :class:`~llmpack.checkpoint.sources.Source`
            (streamed block by block; other source kinds are not calibrated).
        warn: warn when an in-memory model comes without a tokenizer.

    Returns:
        The decisions (``None`` when not calibrated) and the :attr:`QuantizeResult.budget` record.
    """
    from llmpack.measure.text import default_text
    from llmpack.tune.budget import search_budget

    if not recipe.method.act_quant and not has_budget(recipe):
        return None, {"calibrated": False, "reason": f"{recipe.method.value} without a budget needs no calibration"}
    if not calibrate:
        return _no_calibration(recipe, "calibrate=False: plain int8 without smoothing")
    target: "torch.nn.Module | Path"
    model = source if isinstance(source, torch.nn.Module) else (
        source.model if source.kind == "module" and source.checkpoint is None else None)
    if model is not None:
        if not _is_causal_lm_model(model):
            return _no_calibration(recipe, f"{type(model).__name__} is not a causal LM: plain W8A8 without smoothing")
        if tokenizer is None:
            d, b = _no_calibration(recipe, "no tokenizer: plain W8A8 without smoothing" if warn else
                                   "no tokenizer= given for the in-memory model: plain W8A8 without smoothing")
            if warn:
                warnings.warn("llmpack.quantize(model, method='int8') without tokenizer=: no calibration, so no "
                              "SmoothQuant smoothing (plain W8A8 loses accuracy on LLMs); pass tokenizer=",
                              UserWarning, stacklevel=4)
            return d, b
        target, names = model, list(model.state_dict().keys())
    else:
        if source.kind not in ("dir", "hub") or source.checkpoint is None:
            return _no_calibration(recipe, f"{source.kind} source: plain W8A8 without smoothing "
                                           "(calibration needs an HF directory)")
        target = Path(source.checkpoint.dir)
        if not is_causal_lm_config(source.config):
            return _no_calibration(recipe, "not a causal LM (config.json architectures): plain W8A8 without smoothing")
        if tokenizer is None and not any((target / f).is_file() for f in _TOKENIZER_FILES):
            return _no_calibration(recipe, f"no tokenizer files in {target}: plain W8A8 without smoothing")
        names = [i.name for i in source.infos]
    text = calibration_text if calibration_text is not None else default_text("calib")
    d = search_budget(target, tokenizer, recipe, text, skip=_ignored_modules(names, recipe), progress=say(quiet),
                  device=device)
    from llmpack.stream.memory import free_memory

    free_memory()  # the calibration's embeddings, head and windows are gone before the first tensor is written
    return d, budget_summary(d)
