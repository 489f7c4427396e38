"""Weights for the streamer: a checkpoint matched against the model its ``config.json`` describes.

:func:`match_weights` checks every tensor of the model skeleton against the checkpoint headers before
a byte is read (missing, unexpected or mis-shaped tensors → one :class:`~llmpack.errors.BadInputError`
naming the tensor and the ``config.json`` key that most likely disagrees), and returns the getter the
streamer reads tensors through (tied and prefixed names resolved once).

Example:
    >>> import tempfile, pathlib
    >>> from llmpack.testing import tiny_model
    >>> d = pathlib.Path(tempfile.mkdtemp()); tiny_model("llama").save_pretrained(d)
    >>> from llmpack.checkpoint.reader import Checkpoint
    >>> from llmpack.checkpoint.architecture import build_meta_model, read_config
    >>> get = match_weights(build_meta_model(read_config(d)), Checkpoint(d), read_config(d))
    >>> get("lm_head.weight").shape          # tied: read from model.embed_tokens.weight
    torch.Size([256, 64])
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import torch

from llmpack.checkpoint.keys import model_key as _rename
from llmpack.checkpoint.reader import Checkpoint
from llmpack.errors import ConfigMismatchError

__all__ = ["match_weights", "ConfigMismatchError", "expected_tensors"]


def expected_tensors(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every parameter and persistent buffer of ``model`` (meta or real): name → (shape, dtype)."""
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = (tuple(p.shape), p.dtype)
    for mname, mod in model.named_modules():
        for b, t in mod._buffers.items():
            if t is not None and b not in mod._non_persistent_buffers_set:
                out[f"{mname}.{b}" if mname else b] = (tuple(t.shape), t.dtype)
    return out


def _tied_sources(model: torch.nn.Module) -> dict[str, list[str]]:
    """name → other names of the same Parameter object (tied weights)."""
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    out: dict[str, list[str]] = {}
    for names in by_id.values():
        for n in names:
            out[n] = [m for m in names if m != n]
    declared = getattr(model, "all_tied_weights_keys", None) or {}
    if isinstance(declared, Mapping):
        for tgt, src in declared.items():
            if isinstance(src, str):
                out.setdefault(str(tgt), []).append(src)
    return out


def _config_keys(config: Mapping[str, Any], value: int) -> list[str]:
    keys = []
    for k, v in config.items():
        if isinstance(v, int) and not isinstance(v, bool) and v == value:
            keys.append(k)
    for sub in ("text_config",):
        if isinstance(config.get(sub), Mapping):
            keys += [f"{sub}.{k}" for k in _config_keys(config[sub], value)]
    return keys


def _layer_key(config: Mapping[str, Any]) -> str:
    for k in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if k in config:
            return f"{k}={config[k]}"
    return "the number of layers"


def _shape_hint(config: Mapping[str, Any], want: tuple[int, ...], got: tuple[int, ...]) -> str:
    keys: list[str] = []
    for w, g in zip(want, got):
        if w != g:
            keys += [f"{k}={w}" for k in _config_keys(config, w)]
    if len(want) != len(got) or not keys:
        return "the config.json sizes"
    return ", ".join(dict.fromkeys(keys))


def match_weights(model: torch.nn.Module, ckpt: Checkpoint, config: Mapping[str, Any] | None = None,
                  *, check_dtypes: bool = False) -> Callable[[str], torch.Tensor]:
    """Check ``ckpt`` against the tensors of ``model`` (built from ``config``); return a name → tensor getter.

    Raises:
        ConfigMismatchError: a tensor the model needs is missing, the checkpoint holds a tensor the model
            does not have, or a shape differs — the message names the tensor and the config key.
    """
    cfg = dict(config or {})
    want = expected_tensors(model)
    have = {i.name: i for i in ckpt.infos()}
    renamed = {_rename(model, n): n for n in have}
    have_model = {r: have[n] for r, n in renamed.items()}
    tied = _tied_sources(model)
    prefix = str(getattr(model, "base_model_prefix", "") or "")
    where: dict[str, str] = {}
    for name in want:
        cands = [name] + tied.get(name, [])
        if prefix:  # checkpoints saved from the base model (e.g. GPT-2's "h.0..." for "transformer.h.0...")
            cands += [c[len(prefix) + 1:] for c in cands if c.startswith(prefix + ".")]
        hit = next((c for c in cands if c in have), None)
        if hit is None:
            hit = next((renamed[c] for c in cands if c in renamed), None)
        if hit is None:
            m = re.search(r"\.(\d+)\.", name)
            hint = (f"config.json ({_layer_key(cfg)}) expects it" if m else
                    "config.json's architectures / options expect it")
            raise ConfigMismatchError(f"tensor {name} is missing from {ckpt.dir}: {hint}; fix config.json or pass "
                                      "the checkpoint it was written for")
        where[name] = hit
    del have_model
    used = set(where.values())
    ignored = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_unexpected", None) or [])]
    nonpersistent = {f"{m}.{b}" if m else b for m, mod in model.named_modules() for b in mod._non_persistent_buffers_set}
    for name, info in have.items():
        if name not in used and name not in nonpersistent and not any(p.search(name) for p in ignored):
            m = re.search(r"\.(\d+)\.", name)
            hint = (f"config.json ({_layer_key(cfg)}) has no such layer" if m else
                    "the model config.json describes has no such tensor")
            raise ConfigMismatchError(f"checkpoint tensor {name} in {info.file.name} is not used: {hint}; fix "
                                      "config.json or pass the checkpoint it was written for")
    for name, (shape, dtype) in want.items():
        info = have[where[name]]
        if tuple(info.shape) != shape:
            raise ConfigMismatchError(
                f"tensor {where[name]} has shape {list(info.shape)} in {info.file.name} but config.json implies "
                f"{list(shape)} ({_shape_hint(cfg, shape, tuple(info.shape))}): fix config.json or pass the "
                "checkpoint it was written for")
        if check_dtypes and not dtype.is_floating_point and info.dtype != dtype:
            raise ConfigMismatchError(f"tensor {where[name]} is {info.dtype} in {info.file.name} but the model "
                                      f"expects {dtype}: the checkpoint does not match its quantization_config")

    def get(name: str) -> torch.Tensor:
        try:
            return ckpt[where[name]]
        except KeyError:
            raise ConfigMismatchError(f"tensor {name} is not part of the model config.json describes") from None

    get.stored_as = where.get  # type: ignore[attr-defined]  # model name -> checkpoint name (tied names share one)
    return get
