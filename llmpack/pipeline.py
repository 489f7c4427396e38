"""``llmpack.quantize``: source -> plan -> actions -> streaming shard writer -> atomic model dir.

One tensor is read, converted and written at a time, so peak memory is about one tensor whatever the
model size. FP16 outputs are then run on a short calibration text: non-finite activations either
refuse the output (default) or keep the offending modules in float32 (``fp16_overflow="keep"``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from llmpack.checkpoint.manifest import Manifest, write_manifest
from llmpack.checkpoint.sources import Source, copy_aux, open_source
from llmpack.checkpoint.writer import OutSpec, ShardWriter
from llmpack.config import Method, Recipe
from llmpack.constants import CONFIG_FILE
from llmpack.errors import BadInputError, ConfigError, Fp16OverflowError
from llmpack.plan import TensorDecision, _ignored_by, decisions_to_dict, module_of, plan
from llmpack.quant.registry import get_action

if TYPE_CHECKING:
    from llmpack.quant.budget import Int8Decisions

__all__ = ["quantize", "QuantizeResult", "make_recipe", "check_fp16_activations", "CALIB_TOKENS"]

CALIB_TOKENS = 256
CALIBRATION_KEY = "int8_calibration"
"""``llmpack.json`` ``extra`` key recording why an int8 model was not calibrated."""
_DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


@dataclasses.dataclass
class QuantizeResult:
    """What :func:`quantize` produced.

    Attributes:
        out_dir: the model directory (``None`` for an in-memory conversion).
        files: relpath -> ``{"sha256", "size"}`` of every file written (``llmpack.json`` excluded).
        recipe: the recipe used. manifest: the ``llmpack.json`` contents.
        decisions: per-tensor decisions. source: ``{"kind", "path", "fingerprint"}``.
        source_bytes / output_bytes: tensor bytes in, file bytes out. seconds: wall time.
        fp32_modules: modules kept in float32 because their FP16 activations overflowed.
        model: the converted model for in-memory conversions.
        budget: int8: what the accuracy calibration decided (see :func:`budget_summary`), or
            ``{"calibrated": False, "reason": ...}`` when it did not run; ``None`` for float methods.
        int8_decisions: int8: the :class:`~llmpack.quant.budget.Int8Decisions` applied (``None`` without calibration).
    """

    out_dir: Path | None
    files: dict[str, dict[str, Any]]
    recipe: Recipe
    manifest: Manifest | None
    decisions: list[TensorDecision]
    source: dict[str, Any]
    source_bytes: int
    output_bytes: int
    seconds: float
    fp32_modules: list[str] = dataclasses.field(default_factory=list)
    model: torch.nn.Module | None = None
    budget: dict[str, Any] | None = None
    int8_decisions: "Int8Decisions | None" = None

    @property
    def ratio(self) -> float:
        """Output bytes / source tensor bytes."""
        return self.output_bytes / self.source_bytes if self.source_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"out_dir": str(self.out_dir) if self.out_dir else None, "files": self.files,
                "recipe": self.recipe.to_dict(), "source": self.source, "source_bytes": self.source_bytes,
                "output_bytes": self.output_bytes, "ratio": round(self.ratio, 4), "seconds": round(self.seconds, 3),
                "fp32_modules": self.fp32_modules, "tensors": len(self.decisions), "budget": self.budget}

    def summary(self) -> str:
        """One human line."""
        where = self.out_dir if self.out_dir else "memory"
        extra = f", {len(self.fp32_modules)} module(s) kept in fp32" if self.fp32_modules else ""
        line = (f"{self.recipe.method.value}: {len(self.decisions)} tensors, {_mb(self.source_bytes)} -> "
                f"{_mb(self.output_bytes)} ({self.ratio:.2f}x) in {self.seconds:.1f}s -> {where}{extra}")
        if self.budget:
            line += f"; {budget_line(self.budget)}"
        return line


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def budget_summary(d: "Int8Decisions") -> dict[str, Any]:
    """Compact JSON-ready summary of an int8 calibration for :attr:`QuantizeResult.budget`.

    Example:
        >>> from llmpack.quant.budget import Int8Decisions
        >>> budget_summary(Int8Decisions(method="int8", weight_only={"b"}, params={"a": 4, "b": 4}))["layers"]
        {'w8a8': 1, 'w8a16': 1, 'float': 0}
    """
    counts = {"w8a8": 0, "w8a16": 0, "float": 0}
    for n in d.params:
        counts[d.layer_mode(n)] += 1
    s = d.summary or {}
    return {"calibrated": True, "budget": (s.get("budget") or {}), "met": s.get("met"), "layers": counts,
            "alpha": dict(d.alpha), "int8_share": round(d.int8_share(), 6),
            "calibration_tokens": s.get("calibration_tokens"), "float": s.get("float"), "planned": s.get("planned")}


def budget_line(b: Mapping[str, Any]) -> str:
    """One human phrase for :attr:`QuantizeResult.budget`.

    Example:
        >>> budget_line({"calibrated": False, "reason": "no tokenizer"})
        'no int8 calibration (no tokenizer)'
        >>> budget_line({"calibrated": True, "budget": {"max_ppl_increase": 2}, "layers": {"w8a8": 3, "w8a16": 1,
        ...              "float": 0}, "alpha": {"attn_in": 0.65}, "met": True})
        'budget 2%: 3 W8A8, 1 W8A16, 0 float, smoothing α=0.65'
    """
    if not b.get("calibrated"):
        return f"no int8 calibration ({b.get('reason', 'not run')})"
    bud = b.get("budget") or {}
    parts = []
    if bud.get("max_ppl_increase") is not None:
        parts.append(f"{float(bud['max_ppl_increase']):g}%")
    if bud.get("max_kl") is not None:
        parts.append(f"KL {float(bud['max_kl']):g}")
    head = f"budget {' / '.join(parts)}" if parts else "int8 defaults"
    c = b.get("layers") or {}
    alphas = sorted({float(a) for a in (b.get("alpha") or {}).values()})
    smooth = "smoothing off" if not alphas else "smoothing α=" + "/".join(f"{a:g}" for a in alphas)
    line = f"{head}: {c.get('w8a8', 0)} W8A8, {c.get('w8a16', 0)} W8A16, {c.get('float', 0)} float, {smooth}"
    planned = b.get("planned") or {}
    if planned.get("ppl_increase_pct") is not None:
        line += f", ppl {float(planned['ppl_increase_pct']):+.2f}% on calibration text"
    if b.get("met") is False:
        line += " (BUDGET NOT MET)"
    return line


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
    **recipe_kwargs: Any,
) -> QuantizeResult:
    """Quantize ``source`` into a sharded safetensors model directory ``out`` (or in memory).

    Args:
        source: HF directory, ``.safetensors`` / ``.gguf`` file, hub id, or a ``transformers`` model.
        method: ``"fp16"`` (default), ``"bf16"``, ``"int8"``, ``"int8-weight-only"``.
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
            see ``llmpack.runtime.modules.compile_int8``); the uncompiled model is ``result.model._orig_mod``.
        tokenizer: int8 with a model source: its tokenizer, needed to calibrate (directories load their own).
        calibration_text: int8: calibration text (default ``llmpack.measure.text.default_text("calib")``).
        **recipe_kwargs: other Recipe fields (``float_dtype``, ``quantize_embeddings``, ``max_ppl_increase``,
            ``max_kl``, ``smooth`` ...).

    Returns:
        :class:`QuantizeResult`.

    Raises:
        SourceNotFoundError, UnsupportedFormatError, OutputExistsError, OutputLockedError,
        Fp16OverflowError, Interrupted (all leave no output and no temp dir behind).

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
    if out is None:
        if isinstance(source, torch.nn.Module):
            res = _quantize_in_memory(source, rec, t0, tokenizer=tokenizer, calibration_text=calibration_text,
                                      calibrate=calibrate, quiet=quiet)
            if res.model is not None:
                from llmpack.runtime.modules import compile_int8, prepare_int8

                # Kernel caches built now, so a plain torch.compile(model) traces without graph breaks.
                res.model = compile_int8(res.model) if compile else prepare_int8(res.model)
            return res
        raise ConfigError("out= is required unless the source is an in-memory model: pass an output directory")
    src = open_source(source)
    if not src.infos:
        raise BadInputError(f"{src.path} holds no tensors: nothing to quantize; pass a model directory with weights")
    out_path = Path(out).absolute()
    _refuse_out_in_source(src, out_path)
    from llmpack._atomic import atomic_dir

    int8: Int8Decisions | None = None
    budget: dict[str, Any] | None = None
    if rec.method.is_int8:
        int8, budget = _calibrate_int8(src, source, rec, tokenizer=tokenizer, calibration_text=calibration_text,
                                       calibrate=calibrate, quiet=quiet)
    with atomic_dir(out_path, overwrite=overwrite) as tmp:
        result = _write(src, tmp, rec, {}, quiet, int8=int8, budget=budget)
        if rec.method == Method.FP16 and calibrate and src.config and src.config.get("architectures"):
            keep = _fp16_guard(src, tmp, rec, quiet)
            if keep:
                for child in list(tmp.iterdir()):
                    if child.is_dir():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
                result = _write(src, tmp, rec, keep, quiet)
                bad = check_fp16_activations(tmp)
                if bad is not None:
                    raise Fp16OverflowError(
                        f"FP16 activations still overflow in module {bad} after keeping {sorted(keep)} in float32: "
                        "use method='bf16'"
                    )
    result.out_dir = out_path
    result.seconds = time.perf_counter() - t0
    return result


# --- INT8 accuracy calibration ------------------------------------------------------------------
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")


def _has_budget(recipe: Recipe) -> bool:
    return recipe.max_ppl_increase is not None or recipe.max_kl is not None


def _is_causal_lm_config(config: Mapping[str, Any] | None) -> bool:
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
    return callable(head) and head() is not None and _is_causal_lm_config(
        {"architectures": [type(model).__name__]})


def _ignored_modules(names: Any, recipe: Recipe) -> set[str]:
    """Modules with a tensor matched by the recipe's ignore patterns (kept exactly as in the source)."""
    out: set[str] = set()
    for name in names:
        module = module_of(name)
        if _ignored_by(recipe, name, module) is not None:
            out.add(module)
    return out


def _no_calibration(recipe: Recipe, reason: str) -> tuple[None, dict[str, Any]]:
    if _has_budget(recipe):
        raise BadInputError(f"the int8 accuracy budget (max_ppl_increase / max_kl) cannot be used: {reason}")
    return None, {"calibrated": False, "reason": reason}


def _say(quiet: bool) -> Any:
    import sys

    if quiet:
        return None
    return lambda msg: print(f"llmpack: {msg}", file=sys.stderr, flush=True)


def _calibrate_int8(src: Source, source: Any, recipe: Recipe, *, tokenizer: Any, calibration_text: str | None,
                    calibrate: bool, quiet: bool) -> "tuple[Int8Decisions | None, dict[str, Any]]":
    """Run the int8 accuracy calibration for a streamed source (W8A8 always; weight-only with a budget).

    A directory is loaded once in float32 inside :func:`~llmpack.quant.budget.plan_int8` and freed when
    it returns, before streaming starts: never two full float copies. Returns the decisions (``None``
    when not calibrated) and the :attr:`QuantizeResult.budget` record.
    """
    if recipe.method is not Method.INT8 and not _has_budget(recipe):
        return None, {"calibrated": False, "reason": "weight-only int8 without a budget needs no calibration"}
    if not calibrate:
        return _no_calibration(recipe, "calibrate=False: plain int8 without smoothing")
    from llmpack.measure.text import default_text
    from llmpack.quant.budget import plan_int8

    text = calibration_text if calibration_text is not None else default_text("calib")
    skip = _ignored_modules((i.name for i in src.infos), recipe)
    if src.kind == "module" and isinstance(source, torch.nn.Module):
        if not _is_causal_lm_model(source):
            return _no_calibration(recipe, f"{type(source).__name__} is not a causal LM: plain W8A8 without smoothing")
        if tokenizer is None:
            return _no_calibration(recipe, "no tokenizer= given for the in-memory model: plain W8A8 without smoothing")
        d = plan_int8(source, tokenizer, recipe, text, skip=skip, progress=_say(quiet))
        return d, budget_summary(d)
    if src.kind not in ("dir", "hub") or src.checkpoint is None:
        return _no_calibration(recipe, f"{src.kind} source: plain W8A8 without smoothing (calibration needs an HF directory)")
    local = Path(src.checkpoint.dir)
    if not _is_causal_lm_config(src.config):
        return _no_calibration(recipe, "not a causal LM (config.json architectures): plain W8A8 without smoothing")
    if tokenizer is None and not any((local / f).is_file() for f in _TOKENIZER_FILES):
        return _no_calibration(recipe, f"no tokenizer files in {local}: plain W8A8 without smoothing")
    d = plan_int8(local, tokenizer, recipe, text, skip=skip, progress=_say(quiet))
    import gc

    gc.collect()  # the float32 calibration copy is gone before the first tensor is streamed
    return d, budget_summary(d)


def _refuse_out_in_source(src: Source, out: Path) -> None:
    if src.kind in ("dir", "file"):
        root = Path(src.path if src.kind == "dir" else Path(src.path).parent).resolve()
        o = out.resolve()
        if o == root or root in o.parents:
            raise ConfigError(f"output {out} lies inside the source {root}: the source is never modified, choose another path")


def _output_dtype_name(src: Source, recipe: Recipe) -> str | None:
    if recipe.method in (Method.FP16, Method.BF16):
        return _DTYPE_NAMES[recipe.method.value]
    if recipe.float_dtype:
        return _DTYPE_NAMES[recipe.float_dtype]
    return (src.config or {}).get("dtype") or (src.config or {}).get("torch_dtype")


def _write(src: Source, tmp: Path, recipe: Recipe, keep_float: Mapping[str, str], quiet: bool, *,
           int8: "Int8Decisions | None" = None, budget: dict[str, Any] | None = None) -> QuantizeResult:
    from llmpack._output import progress

    if int8 is not None:
        decisions = plan(src.infos, src.module_types, recipe, src.config, keep_float=keep_float,
                         weight_only=sorted(int8.weight_only), skip=sorted(int8.keep_float))
        missing = sorted(int8.smoothed_tensors() - {i.name for i in src.infos})
        if missing:
            raise BadInputError(
                f"int8 smoothing must change tensor {missing[0]} but {src.path} does not store it under that name: "
                "quantize with smooth=0 (--smooth 0)"
            )
        ops = int8.tensor_ops()
    else:
        decisions = plan(src.infos, src.module_types, recipe, src.config, keep_float=keep_float)
        ops = {}
    by_name = {d.name: d for d in decisions}
    outputs: dict[str, list[tuple[str, tuple[int, ...], torch.dtype]]] = {}
    specs: list[OutSpec] = []
    for d in decisions:
        outs = [(n, tuple(int(x) for x in s), dt) for n, s, dt in get_action(d.action).out_specs(d)]
        outputs[d.name] = outs
        specs.extend(OutSpec(n, s, dt) for n, s, dt in outs)
    writer = ShardWriter(tmp, specs, recipe.max_shard_size)
    sizes = {i.name: i.nbytes for i in src.infos}
    try:
        with progress(src.total_bytes, f"{recipe.method.value}", quiet=quiet) as bar:
            for name, tensor in src.stream():
                d = by_name.get(name)
                if d is None:
                    raise BadInputError(f"tensor {name} was not planned (the source changed while reading?)")
                if int8 is not None and name in ops:
                    shape, dtype = tuple(tensor.shape), tensor.dtype
                    tensor = int8.transform(name, tensor, ops)
                    if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                        raise BadInputError(f"int8 smoothing changed the shape/dtype of tensor {name}: "
                                            "quantize with smooth=0 (--smooth 0)")
                produced = get_action(d.action)(name, tensor, d, recipe)
                for oname, _, _ in outputs[name]:
                    if oname not in produced:
                        raise BadInputError(f"action {d.action} did not produce {oname} for tensor {name}")
                    writer.write(oname, produced.pop(oname))
                if produced:
                    raise BadInputError(f"action {d.action} produced unplanned tensors {sorted(produced)} for {name}")
                del tensor, produced
                bar.update(sizes[name])
        records = writer.close()
    except BaseException:
        writer.abort()
        raise
    known = {r.name: {"sha256": r.sha256, "size": r.size} for r in records}
    if src.config is not None:
        cfg = dict(src.config)
        dt = _output_dtype_name(src, recipe)
        if dt:
            cfg["dtype"] = dt
            cfg["torch_dtype"] = dt
        if recipe.method.is_int8:
            cfg = _int8_config(cfg, decisions, recipe)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    copy_aux(src, tmp)
    fp32 = sorted(keep_float)
    extra: dict[str, Any] = {"fp32_modules": fp32} if fp32 else {}
    if src.dropped_tied:
        extra["tied"] = dict(sorted(src.dropped_tied.items()))
    if budget is not None and not budget.get("calibrated"):
        extra[CALIBRATION_KEY] = dict(budget)
    manifest = Manifest(source=src.describe(), recipe=recipe.to_dict(), decisions=decisions_to_dict(decisions),
                        extra=extra)
    if int8 is not None:
        int8.annotate_manifest(manifest)
    write_manifest(tmp, manifest, known=known)
    files = dict(manifest.files)
    return QuantizeResult(out_dir=tmp, files=files, recipe=recipe, manifest=manifest, decisions=decisions,
                          source=manifest.source, source_bytes=src.total_bytes,
                          output_bytes=sum(int(f["size"]) for f in files.values()), seconds=0.0, fp32_modules=fp32,
                          budget=budget, int8_decisions=int8)


def _int8_config(cfg: dict[str, Any], decisions: list[TensorDecision], recipe: Recipe) -> dict[str, Any]:
    try:
        from llmpack.quant import int8_plan
    except ModuleNotFoundError as e:
        if e.name != "llmpack.quant.int8_plan":
            raise
        raise ConfigError(f"method {recipe.method.value} is not available in this build") from None
    update = getattr(int8_plan, "update_config", None)
    if update is None:
        raise ConfigError("llmpack.quant.int8_plan.update_config is missing: cannot write the int8 quantization_config")
    return update(cfg, decisions, recipe)


# --- FP16 activation guard ------------------------------------------------------------------------
def _max_tokens(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    limit = CALIB_TOKENS
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            limit = min(limit, v)
    return limit


def _calib_ids(model_dir: Path, vocab_size: int, n_tokens: int = CALIB_TOKENS) -> torch.Tensor:
    from llmpack.measure.text import default_text

    text = default_text("calib")
    ids: list[int] | None = None
    if any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")):
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model_dir)
            ids = list(tok(text)["input_ids"])[:n_tokens]
        except Exception:  # noqa: BLE001 - fall back to byte ids
            ids = None
    if not ids:
        ids = [b % max(vocab_size, 1) for b in text.encode("utf-8")[:n_tokens]]
    return torch.tensor([ids], dtype=torch.long)


def _run_with_hooks(model: torch.nn.Module, ids: torch.Tensor) -> str | None:
    """Forward ``ids``; return the first module (in completion order) whose output is non-finite."""
    first: list[str] = []

    def hook(name: str) -> Any:
        def fn(mod: torch.nn.Module, args: Any, out: Any) -> None:
            if first:
                return
            outs = out if isinstance(out, (tuple, list)) else (out,)
            if hasattr(out, "to_tuple"):
                outs = out.to_tuple()
            for o in outs:
                if isinstance(o, torch.Tensor) and o.is_floating_point() and not bool(torch.isfinite(o).all()):
                    first.append(name or type(mod).__name__)
                    return
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return first[0] if first else None


def check_fp16_activations(model_dir: "str | os.PathLike[str]", model: torch.nn.Module | None = None) -> str | None:
    """Run the calibration text through an FP16 model dir; return the first module with non-finite output, or None.

    Example:
        >>> check_fp16_activations("model-fp16")  # doctest: +SKIP
        None
    """
    from llmpack.runtime.load import load

    d = Path(model_dir)
    m = model if model is not None else load(d)
    vocab = int(getattr(getattr(m, "config", None), "vocab_size", 256) or 256)
    return _run_with_hooks(m, _calib_ids(d, vocab, _max_tokens(m)))


def _fp16_guard(src: Source, tmp: Path, recipe: Recipe, quiet: bool) -> dict[str, str]:
    """Check the written FP16 output; return modules to keep in float32 (raise in ``error`` mode)."""
    from llmpack.runtime.load import apply_fp32_modules, load

    model = load(tmp)
    ids = _calib_ids(tmp, int(getattr(model.config, "vocab_size", 256) or 256), _max_tokens(model))
    bad = _run_with_hooks(model, ids)
    if bad is None:
        return {}
    if recipe.fp16_overflow != "keep":
        raise Fp16OverflowError(
            f"FP16 activations overflow (inf/NaN) on calibration text, first in module {bad}: use method='bf16', "
            "or fp16_overflow='keep' (--fp16-overflow keep) to keep offending modules in float32"
        )
    reason = "FP16 activation overflow on calibration text: kept in float32"
    keep: list[str] = []
    mods = dict(model.named_modules())
    dropped = src.dropped_tied
    for _ in range(16):
        cand = bad.rsplit(".", 1)[0] if "." in bad else bad
        for k in list(keep):
            if bad == k or bad.startswith(k + "."):  # a kept module's own output overflows: widen to its parent
                keep.remove(k)
                cand = k.rsplit(".", 1)[0] if "." in k else ""
        while cand and isinstance(mods.get(cand), (torch.nn.ModuleList, torch.nn.ModuleDict)):
            cand = cand.rsplit(".", 1)[0] if "." in cand else ""  # containers are never called: go up
        if cand == "":
            raise Fp16OverflowError(f"FP16 activations overflow at the model output ({bad}): use method='bf16'")
        keep = [k for k in keep if not k.startswith(cand + ".")] + [cand]
        # reload the kept module's source tensors in float32 and run it in float32
        m = mods[cand]
        names = {i.name for i in src.infos}
        for pname, p in list(m.named_parameters()) + list(m.named_buffers()):
            full = f"{cand}.{pname}"
            full = full if full in names else dropped.get(full, full)
            if full in names:
                p.data = src.get(full).to(torch.float32)
        apply_fp32_modules(model, [cand])
        bad = _run_with_hooks(model, ids)
        if bad is None:
            return {k: reason for k in keep}
    raise Fp16OverflowError(f"FP16 activations keep overflowing (last in {bad}) after keeping 16 modules: use method='bf16'")


def _quantize_in_memory(model: torch.nn.Module, recipe: Recipe, t0: float, *, tokenizer: Any = None,
                        calibration_text: str | None = None, calibrate: bool = True,
                        quiet: bool = False) -> QuantizeResult:
    from llmpack.checkpoint.sources import dedupe_state_dict
    from llmpack.quant.floats import check_finite, fp16_overflows

    sd, _ = dedupe_state_dict(model)
    src_bytes = sum(t.numel() * t.element_size() for t in sd.values())
    if recipe.method.is_int8:
        try:
            from llmpack.quant.apply import quantize_module
        except ModuleNotFoundError as e:
            if e.name != "llmpack.quant.apply":
                raise
            raise ConfigError(f"method {recipe.method.value} is not available in this build") from None
        int8, budget = _calibrate_in_memory(model, recipe, tokenizer, calibration_text, calibrate, quiet)
        if int8 is not None:
            from llmpack.quant.budget import apply_decisions

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


def _calibrate_in_memory(model: torch.nn.Module, recipe: Recipe, tokenizer: Any, calibration_text: str | None,
                         calibrate: bool, quiet: bool) -> "tuple[Int8Decisions | None, dict[str, Any]]":
    if recipe.method is not Method.INT8 and not _has_budget(recipe):
        return None, {"calibrated": False, "reason": "weight-only int8 without a budget needs no calibration"}
    if not calibrate:
        return _no_calibration(recipe, "calibrate=False: plain int8 without smoothing")
    if not _is_causal_lm_model(model):
        return _no_calibration(recipe, f"{type(model).__name__} is not a causal LM: plain W8A8 without smoothing")
    if tokenizer is None:
        d, b = _no_calibration(recipe, "no tokenizer: plain W8A8 without smoothing")
        warnings.warn("llmpack.quantize(model, method='int8') without tokenizer=: no calibration, so no SmoothQuant "
                      "smoothing (plain W8A8 loses accuracy on LLMs); pass tokenizer=", UserWarning, stacklevel=4)
        return d, b
    from llmpack.measure.text import default_text
    from llmpack.quant.budget import plan_int8

    text = calibration_text if calibration_text is not None else default_text("calib")
    skip = _ignored_modules(model.state_dict().keys(), recipe)
    d = plan_int8(model, tokenizer, recipe, text, skip=skip, progress=_say(quiet))
    return d, budget_summary(d)
