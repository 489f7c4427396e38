"""Swapping a model's layers for llmpack's int8 modules where a compressed-tensors checkpoint stores them int8.

Example:
    >>> from llmpack.testing import tiny_model
    >>> quantized_module_names(tiny_model("llama"))
    []
"""

from __future__ import annotations

from typing import Any, Collection, Iterable, Mapping

import torch
from torch import nn

from llmpack.errors import ConfigError
from llmpack.runtime.embedding import Int8Embedding, TiedInt8Head
from llmpack.runtime.linear import Int8Linear, is_conv1d, linear_class

__all__ = ["swap_quantized_modules", "retie_int8_heads", "quantized_module_names", "iter_int8_linears",
           "set_module"]


def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    if "." in name:
        parent_name, child = name.rsplit(".", 1)
        return model.get_submodule(parent_name), child
    return model, name


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule ``name`` of ``model`` by ``new``."""
    parent, child = _get_parent(model, name)
    setattr(parent, child, new)


def _float_dtype_of(module: nn.Module, default: torch.dtype) -> torch.dtype:
    w = getattr(module, "weight", None)
    if isinstance(w, torch.Tensor) and w.is_floating_point():
        return w.dtype
    return default


def swap_quantized_modules(
    model: nn.Module,
    qcfg: Mapping[str, Any] | None,
    state_keys: Collection[str],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "meta",
) -> list[str]:
    """Replace the layers that a compressed-tensors checkpoint stores in int8 / FP8 by llmpack modules.

    A module ``P`` is swapped when ``P.weight_scale`` is among ``state_keys``: ``nn.Linear`` and
    ``Conv1D`` become :class:`Int8Linear` (``int-quantized``) or :class:`~llmpack.runtime.linear.Fp8Linear`
    (``float-quantized``), W8A8 or weight-only per the config group that targets it,
    ``nn.Embedding`` becomes :class:`Int8Embedding`. A tied output head whose embedding became int8
    (and that has no tensors of its own in the file) becomes a :class:`TiedInt8Head`. New modules are
    allocated on ``device`` (``"meta"`` for ``load_state_dict(assign=True)``); call
    :func:`retie_int8_heads` after assigning tensors.

    Args:
        model: the model, usually built on the meta device.
        qcfg: ``config.json``'s ``quantization_config`` (dict), or ``None``.
        state_keys: the tensor names stored in the checkpoint.
        dtype: float dtype of scales/biases (default: the replaced module's dtype).
        device: where new module tensors are allocated.

    Returns:
        The names of the swapped modules.

    Raises:
        ConfigError: the quantization config is not one llmpack can run.

    Example:
        >>> from llmpack.testing import tiny_model
        >>> from llmpack.quant.ct_config import build_quantization_config
        >>> m = tiny_model("llama")
        >>> keys = {"model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight_scale"}
        >>> swap_quantized_modules(m, build_quantization_config("int8"), keys, device="cpu")
        ['model.layers.0.mlp.up_proj']
    """
    from llmpack.quant.ct_config import parse_quantization_config, scheme_for

    cls = linear_class(parse_quantization_config(qcfg).scheme if qcfg else "int8")
    keys = set(state_keys)
    suffix = ".weight_scale"
    targets = sorted(k[: -len(suffix)] for k in keys if k.endswith(suffix))
    swapped: list[str] = []
    embeddings: dict[str, Int8Embedding] = {}
    for name in targets:
        try:
            mod = model.get_submodule(name)
        except AttributeError:
            raise ConfigError(
                f"checkpoint tensor {name}.weight_scale names a module the model does not have: "
                f"config.json does not match the weights"
            ) from None
        fdt = dtype or _float_dtype_of(mod, torch.float32)
        if isinstance(mod, nn.Embedding):
            new_e = Int8Embedding(mod.num_embeddings, mod.embedding_dim, mod.padding_idx, dtype=fdt, device=device)
            set_module(model, name, new_e)
            embeddings[name] = new_e
            swapped.append(name)
            continue
        if isinstance(mod, (Int8Linear, Int8Embedding)):
            continue
        conv = is_conv1d(mod)
        if not (conv or isinstance(mod, nn.Linear)):
            raise ConfigError(
                f"checkpoint stores {name} in int8 but the model's {name} is a {type(mod).__name__}: "
                f"llmpack runs int8 Linear, Conv1D and Embedding layers only"
            )
        scheme = scheme_for(name, type(mod).__name__, qcfg)
        act_quant = scheme != "w8a16"
        if conv:
            in_f, out_f = mod.weight.shape
        else:
            in_f, out_f = mod.in_features, mod.out_features
        new = cls(
            in_f, out_f, getattr(mod, "bias", None) is not None,
            act_quant=act_quant, conv1d_layout=conv, dtype=fdt, device=device,
        )
        set_module(model, name, new)
        swapped.append(name)
    if embeddings:
        _swap_tied_heads(model, embeddings, keys)
    return swapped


def _swap_tied_heads(model: nn.Module, embeddings: Mapping[str, Int8Embedding], keys: set[str]) -> None:
    """Tied output head of an int8 input embedding -> :class:`TiedInt8Head` (when it has no own tensor)."""
    get_out = getattr(model, "get_output_embeddings", None)
    get_in = getattr(model, "get_input_embeddings", None)
    if get_out is None or get_in is None:
        return
    head = get_out()
    emb = get_in()
    if head is None or not isinstance(emb, Int8Embedding):
        return
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    if head_name is None or f"{head_name}.weight" in keys or isinstance(head, (Int8Linear, TiedInt8Head)):
        return
    set_module(model, head_name, TiedInt8Head(emb))


def retie_int8_heads(model: nn.Module) -> None:
    """Point every :class:`TiedInt8Head` at the model's current input embedding (after tensors were assigned)."""
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if get_in is not None else None
    for mod in model.modules():
        if isinstance(mod, TiedInt8Head) and isinstance(emb, Int8Embedding):
            object.__setattr__(mod, "_embedding", emb)


def quantized_module_names(model: nn.Module) -> list[str]:
    """Names of the int8 modules in ``model``.

    Example:
        >>> quantized_module_names(torch.nn.Sequential(torch.nn.Linear(2, 2)))
        []
    """
    return [n for n, m in model.named_modules() if isinstance(m, (Int8Linear, Int8Embedding))]


def iter_int8_linears(model: nn.Module) -> Iterable[tuple[str, Int8Linear]]:
    """``(name, module)`` for every :class:`Int8Linear` in ``model``."""
    for n, m in model.named_modules():
        if isinstance(m, Int8Linear):
            yield n, m

