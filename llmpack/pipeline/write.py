"""The streaming write: source tensors -> actions -> shard writer -> config, side files, ``llmpack.json``.

One tensor is read, converted and written at a time, so peak memory is about one tensor whatever the
model size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from llmpack._dtypes import long_name
from llmpack.checkpoint.manifest import Manifest, write_manifest
from llmpack.checkpoint.sources import Source, copy_aux
from llmpack.checkpoint.writer import OutSpec, ShardWriter
from llmpack.config import Method, Recipe
from llmpack.constants import CONFIG_FILE
from llmpack.errors import BadInputError, ConfigError
from llmpack.pipeline.result import CALIBRATION_KEY, QuantizeResult
from llmpack.quant.actions import get_action, scheme_of_action
from llmpack.quant.plan import TensorDecision, decisions_to_dict, plan, quantization_config

if TYPE_CHECKING:
    from llmpack.tune.budget import Int8Decisions

__all__ = ["write_output", "refuse_out_in_source", "check_against_config"]

def refuse_out_in_source(src: Source, out: Path) -> None:
    if src.kind in ("dir", "file"):
        root = Path(src.path if src.kind == "dir" else Path(src.path).parent).resolve()
        o = out.resolve()
        if o == root or root in o.parents:
            raise ConfigError(f"output {out} lies inside the source {root}: the source is never modified, choose another path")


def _output_dtype_name(src: Source, recipe: Recipe) -> str | None:
    if recipe.method in (Method.FP16, Method.BF16):
        return long_name(recipe.method.value)
    if recipe.float_dtype:
        return long_name(recipe.float_dtype)
    return (src.config or {}).get("dtype") or (src.config or {}).get("torch_dtype")


def write_output(src: Source, tmp: Path, recipe: Recipe, keep_float: Mapping[str, str], quiet: bool, *,
           int8: "Int8Decisions | None" = None, budget: dict[str, Any] | None = None,
           device: "torch.device | None" = None) -> QuantizeResult:
    """Stream ``src`` through the planned actions into ``tmp``. With a CUDA ``device`` the 8-bit actions run there
    one tensor at a time (the same IEEE arithmetic, so the same bytes as on CPU, measured faster on big models)."""
    from llmpack._output import progress

    on_device = device is not None and device.type == "cuda"

    if int8 is not None:
        decisions = plan(src.infos, src.module_types, recipe, src.config, keep_float=keep_float,
                         weight_only=sorted(int8.weight_only), skip=sorted(int8.keep_float),
                         float_storage=int8.float_storage)
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
                if on_device and scheme_of_action(d.action) is not None:
                    produced = {k: v.cpu() for k, v in
                                get_action(d.action)(name, tensor.to(device), d, recipe).items()}
                else:
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
        if recipe.method.is_quantized:
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
    """``cfg`` with the compressed-tensors ``quantization_config``; the Linear layers are listed from the
    architecture built on the meta device."""
    from llmpack.checkpoint.sources import module_types_of
    from llmpack.checkpoint.architecture import build_meta_model

    c = dict(cfg)
    c.pop("quantization_config", None)
    if not c.get("architectures"):
        raise ConfigError("config.json has no 'architectures': cannot list the float Linear layers for int8")
    return quantization_config(cfg, decisions, recipe, module_types_of(build_meta_model(c)))




def check_against_config(src: Source) -> None:
    """Refuse a directory whose ``config.json`` does not describe its tensors, before anything is written.

    Raises:
        ConfigMismatchError: a tensor is missing, unexpected or mis-shaped (named, with the config key).
    """
    if src.kind not in ("dir", "hub") or src.checkpoint is None or not (src.config or {}).get("architectures"):
        return
    from llmpack.stream import match_weights, skeleton

    try:
        model, config = skeleton(src.checkpoint.dir, src.checkpoint)
    except Exception:  # noqa: BLE001 - an architecture this transformers cannot build is converted tensor by tensor
        return
    match_weights(model, src.checkpoint, config)
