"""Load an llmpack (or any safetensors HF) model directory: lazily, shard by shard, from mmap.

``load`` builds the exact architecture of ``config.architectures`` with parameters on the meta device
(buffers stay real, so non-persistent buffers such as rotary ``inv_freq`` are computed as usual),
swaps in llmpack's quantized modules when ``config.json`` has a ``quantization_config``, then assigns
the stored tensors straight from each shard's mmap with ``load_state_dict(assign=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from llmpack.checkpoint.architecture import _config_dtype, build_meta_model, model_class, read_config
from llmpack.checkpoint.keys import model_key
from llmpack.checkpoint.reader import Checkpoint, find_weight_files
from llmpack.constants import MANIFEST_FILE
from llmpack.errors import BadInputError, ConfigError, IntegrityError, SourceNotFoundError

__all__ = ["open_checkpoint", "load", "build_meta_model", "model_class", "read_config", "apply_fp32_modules"]


def open_checkpoint(path: "str | os.PathLike[str]") -> Checkpoint:
    """A read-only, lazy mapping name -> tensor over a model directory; reads only the tensors you index.

    Example:
        >>> import llmpack
        >>> ckpt = llmpack.open("model-bf16")           # doctest: +SKIP
        >>> ckpt.info("lm_head.weight").dtype           # doctest: +SKIP
        torch.bfloat16
    """
    return Checkpoint(path)


def apply_fp32_modules(model: torch.nn.Module, names: "list[str] | tuple[str, ...]") -> None:
    """Run the named modules in float32: cast their inputs up and their outputs back to the input dtype.

    Used for modules kept in float32 by ``fp16_overflow="keep"``.
    """
    mods = dict(model.named_modules())
    for name in names:
        m = mods.get(name)
        if m is None:
            raise IntegrityError(f"{MANIFEST_FILE} keeps module {name} in float32 but the model has no such module")
        m.float()

        def pre(mod: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            dt = next((a.dtype for a in list(args) + list(kwargs.values())
                       if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
            mod._llmpack_in_dtype = dt  # type: ignore[attr-defined]
            up = lambda a: a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a  # noqa: E731
            return tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}

        def post(mod: torch.nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
            dt = getattr(mod, "_llmpack_in_dtype", None)
            if dt is None or dt == torch.float32:
                return out
            if isinstance(out, torch.Tensor):
                return out.to(dt) if out.is_floating_point() else out
            if isinstance(out, tuple):
                return tuple(o.to(dt) if isinstance(o, torch.Tensor) and o.is_floating_point() else o for o in out)
            return out

        m.register_forward_pre_hook(pre, with_kwargs=True)
        m.register_forward_hook(post, with_kwargs=True)


def load(path: "str | os.PathLike[str]", device: "str | torch.device" = "cpu", dtype: "torch.dtype | str | None" = None,
         lazy: bool = True, compile: "bool | str" = False) -> torch.nn.Module:
    """Build the model of a directory on meta and assign its tensors from mmap, shard by shard.

    Args:
        path: a model directory (llmpack output or any HF safetensors dir).
        device: ``"cpu"`` or ``"cuda"`` (tensors are placed there as they are assigned).
        dtype: cast float tensors to this dtype (default: ``config.json``'s dtype, as ``from_pretrained`` does;
            int8 / FP8 weights and modules kept in float32 by ``fp16_overflow="keep"`` are never cast).
        lazy: keep CPU tensors backed by the file mmap (pages read on first use); ``False`` copies them.
        compile: ``True`` returns ``torch.compile(model)`` (int8 kernels prepared first, see
            ``llmpack.runtime.prepare.compile_int8``); the first call compiles (tens of seconds on CPU).
            ``"decode"`` returns the model with ``generate`` set to decode through a static KV cache and a
            compiled forward (:mod:`llmpack.runtime.decode`): the fast way to generate tokens on CPU.

    Returns:
        The model in eval mode. Its outputs equal ``AutoModel*.from_pretrained(path)`` on the same dir.

    Raises:
        IntegrityError: a parameter is missing from the checkpoint (named in the message).

    Example:
        >>> import llmpack
        >>> model = llmpack.load("model-bf16")                 # doctest: +SKIP
        >>> model = llmpack.load("model-int8", device="cuda")  # doctest: +SKIP
    """
    from safetensors import safe_open

    from llmpack.quant.floats import float_dtype

    if compile not in (False, True, "decode"):
        raise ConfigError(f"compile={compile!r}: pass False, True or 'decode'")
    d = Path(path)
    if not d.is_dir():
        raise SourceNotFoundError(f"{d} is not a directory: pass a model directory")
    config = read_config(d)
    if isinstance(dtype, str):
        try:
            dtype = float_dtype(dtype)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError("device='cuda' was asked for but no CUDA device is available; use device='cpu'")
    files = find_weight_files(d)
    model = build_meta_model(config, dtype)
    keys: list[str] = []
    for f in files:
        with safe_open(f, "pt") as so:
            keys.extend(model_key(model, k) for k in so.keys())
    qcfg = config.get("quantization_config")
    if qcfg:
        from llmpack.runtime.swap import swap_quantized_modules

        swap_quantized_modules(model, qcfg, keys)
    expected = dict(model.state_dict(keep_vars=True))
    fp32: list[str] = []
    if (d / MANIFEST_FILE).is_file():
        from llmpack.checkpoint.manifest import read_manifest

        fp32 = list(read_manifest(d).extra.get("fp32_modules") or [])
    target = dtype if dtype is not None else _config_dtype(config)

    def in_fp32(name: str) -> bool:
        return any(name.startswith(m + ".") for m in fp32)

    for f in files:
        sd: dict[str, torch.Tensor] = {}
        with safe_open(f, "pt", device="cpu") as so:
            for stored in so.keys():
                t = so.get_tensor(stored)
                # transformers' load-time key renamings (GPT-NeoX: embed_out -> lm_head in 5.x)
                k = stored if stored in expected else model_key(model, stored)
                if target is not None and t.is_floating_point() and t.dtype != target and not in_fp32(k) \
                        and t.element_size() > 1:  # (FP8 weights stay FP8)
                    t = t.to(target)  # as from_pretrained does: float tensors follow the model dtype
                elif not lazy and dev.type == "cpu":
                    t = t.clone()
                ref = expected.get(k)
                if ref is not None and ref.dtype != t.dtype and t.is_floating_point() and ref.is_floating_point() \
                        and ref.device.type != "meta":
                    t = t.to(ref.dtype)  # a real buffer keeps its dtype, as from_pretrained does
                if dev.type != "cpu":
                    t = t.to(dev)
                sd[k] = t
        model.load_state_dict(sd, strict=False, assign=True)
        del sd
    if dev.type != "cpu":
        model.to(dev)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.device.type == "meta":
            raise IntegrityError(
                f"tensor {name} is missing from {d} (still on the meta device); the checkpoint is incomplete or "
                "was written for another architecture"
            )
    if fp32:
        apply_fp32_modules(model, fp32)
    model.eval()
    if compile == "decode":
        from llmpack.runtime.decode import enable_compiled_decode

        return enable_compiled_decode(model)
    if qcfg or compile:
        from llmpack.runtime.prepare import compile_int8, prepare_int8

        # Kernel caches built now, so a plain torch.compile(model) traces without graph breaks.
        return compile_int8(model) if compile else prepare_int8(model)
    return model
