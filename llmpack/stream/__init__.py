"""Layer-streamed execution: every step that runs a model at quantize or measure time goes through here.

* :mod:`llmpack.stream.blocks` — :class:`BlockStreamer`: skeleton on meta, one block materialised at a
  time, inputs captured from the model's own forward, logits in token chunks.
* :mod:`llmpack.stream.weights` — the checkpoint matched against the model ``config.json`` describes.
* :mod:`llmpack.stream.memory` — what the machine has, and handing freed memory back between steps.
* :mod:`llmpack.stream.evaluate` / :mod:`llmpack.measure.streamed` — calibration passes and ``measure``'s accuracy.
* :mod:`llmpack.stream.whole` — the fallback for a model without blocks to stream.

Example:
    >>> import tempfile, pathlib, torch
    >>> from llmpack.testing import tiny_model
    >>> d = pathlib.Path(tempfile.mkdtemp()); m = tiny_model("gpt2"); m.save_pretrained(d)
    >>> st = open_streamer(d)
    >>> ids = torch.tensor([[5, 6, 7]])
    >>> got = next(st.logits([{"input_ids": ids}])[0])
    >>> bool(torch.allclose(got, m(input_ids=ids).logits[0], atol=1e-5))
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from llmpack.stream.blocks import LOGIT_CHUNK, BlockStreamer, StreamUnsupported, Window, find_blocks
from llmpack.stream.memory import available_bytes, free_memory
from llmpack.stream.whole import WholeModel
from llmpack.stream.weights import ConfigMismatchError, match_weights

__all__ = ["BlockStreamer", "WholeModel", "Window", "StreamUnsupported", "ConfigMismatchError", "open_streamer",
           "find_blocks", "match_weights", "skeleton", "available_bytes", "free_memory", "LOGIT_CHUNK"]


def skeleton(path: "str | os.PathLike[str]", ckpt: Any = None) -> tuple[torch.nn.Module, dict]:
    """The model a directory's ``config.json`` describes, parameters on meta (int8 layers swapped in when
    the config has a ``quantization_config``; ``ckpt``: the directory's already opened
    :class:`~llmpack.checkpoint.reader.Checkpoint`), and the config."""
    from llmpack.checkpoint.reader import Checkpoint
    from llmpack.checkpoint.architecture import build_meta_model, read_config

    d = Path(path)
    config = read_config(d)
    model = build_meta_model(config)
    qcfg = config.get("quantization_config")
    if qcfg:
        from llmpack.runtime.swap import swap_quantized_modules

        swap_quantized_modules(model, qcfg, list(ckpt if ckpt is not None else Checkpoint(d)))
    return model, config


def _prepare_int8_block(block: torch.nn.Module) -> None:
    from llmpack.runtime.prepare import prepare_int8

    prepare_int8(block)  # the same kernels, sibling groups and float swaps llmpack.load gives the whole model


def _prepare_int8_rest(st: BlockStreamer) -> Any:
    def prepare(model: torch.nn.Module) -> None:
        from llmpack.runtime.embedding import TiedInt8Head
        from llmpack.runtime.linear import Int8Linear
        from llmpack.runtime.swap import retie_int8_heads

        retie_int8_heads(model)
        in_blocks = {id(m) for m in st.blocks.modules()}
        for m in model.modules():
            if id(m) not in in_blocks and isinstance(m, (Int8Linear, TiedInt8Head)):
                m.prepare()
    return prepare


def _whole(model: torch.nn.Module, get: Any, config: dict, device: "str | torch.device", dtype: torch.dtype | None,
           why: Exception) -> BlockStreamer:
    """An architecture without blocks to stream: load it whole when it fits (a :class:`WholeModel`), else say so."""
    from llmpack.stream.skeleton import set_tensor as _set_tensor
    from llmpack.stream.weights import expected_tensors

    want = expected_tensors(model)
    stored_as = getattr(get, "stored_as", lambda n: n)
    sizes: dict[str, int] = {}
    for name, (shape, dt) in want.items():
        item = (dtype or dt).itemsize if dt.is_floating_point else dt.itemsize
        sizes[str(stored_as(name))] = int(torch.Size(shape).numel()) * item
    need, avail = sum(sizes.values()), available_bytes(device)
    arch = (config.get("architectures") or [type(model).__name__])[0]
    if need > 0.8 * avail:
        raise StreamUnsupported(f"{arch} cannot be run block by block ({why}) and does not fit in memory whole: needs "
                                f"{need / 1e9:.1f} GB, {avail / 1e9:.1f} GB available; use a machine with more memory")
    dev = torch.device(device)
    seen: dict[str, torch.Tensor] = {}
    for name in want:
        key = str(stored_as(name))
        if key not in seen:
            t = get(name)
            if t.is_floating_point() and dtype is not None:
                t = t.to(dtype)
            seen[key] = t.to(dev)
        _set_tensor(model, name, seen[key])
    if config.get("quantization_config"):
        from llmpack.runtime.prepare import prepare_int8
        from llmpack.runtime.swap import retie_int8_heads

        retie_int8_heads(model)
        prepare_int8(model)
    return WholeModel(model)


def open_streamer(path: "str | os.PathLike[str]", *, device: "str | torch.device" = "cpu",
                  dtype: torch.dtype | None = torch.float32) -> BlockStreamer:
    """A :class:`BlockStreamer` over a model directory: config checked against the weights, nothing read yet.

    Args:
        path: an HF model directory (an llmpack output or any safetensors checkpoint).
        device: where blocks run (``"cuda"``: blocks are moved to the GPU one at a time).
        dtype: float dtype blocks are materialised in (``None``: as stored). Modules ``llmpack.json`` keeps in
            float32 (FP16 overflow remedies) stay float32.

    Returns:
        A :class:`BlockStreamer`; for an architecture without a list of identical blocks that fits in memory,
        a :class:`WholeModel` over the loaded model (the same interface).

    Raises:
        ConfigMismatchError: ``config.json`` does not match the stored tensors. StreamUnsupported: no block
            list and the model does not fit in memory whole (names the architecture, needed and available).
    """
    from llmpack.checkpoint.reader import Checkpoint
    from llmpack.constants import MANIFEST_FILE

    d = Path(path)
    ckpt = Checkpoint(d)
    model, config = skeleton(d, ckpt)
    get = match_weights(model, ckpt, config, check_dtypes=bool(config.get("quantization_config")))
    try:
        st = BlockStreamer(model, get, device=device, dtype=dtype)
    except StreamUnsupported as e:
        return _whole(model, get, config, device, dtype, e)
    if config.get("quantization_config"):
        st.on_block.append(_prepare_int8_block)
        st.on_rest.append(_prepare_int8_rest(st))
    if (d / MANIFEST_FILE).is_file():
        from llmpack.checkpoint.manifest import read_manifest

        for m in read_manifest(d).extra.get("fp32_modules") or []:
            st.keep_dtype[str(m)] = torch.float32
    return st
