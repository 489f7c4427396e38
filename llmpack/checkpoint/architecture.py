"""The architecture a checkpoint describes: its ``config.json``, the transformers class it names, and that class
built with parameters on the meta device (no memory, no init; buffers real). Building a skeleton is not running
a model: the file layer uses it to list module types and expected tensors.

Example:
    >>> from llmpack.testing import tiny_config
    >>> cfg = tiny_config("llama").to_dict(); cfg["architectures"] = ["LlamaForCausalLM"]
    >>> type(build_meta_model(cfg)).__name__
    'LlamaForCausalLM'
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from llmpack._dtypes import torch_dtype
from llmpack._jsonfile import read_json
from llmpack.constants import CONFIG_FILE
from llmpack.errors import ConfigError, SourceNotFoundError

__all__ = ["read_config", "model_class", "build_meta_model"]


def read_config(path: "str | os.PathLike[str]") -> dict[str, Any]:
    """``config.json`` of a model directory as a dict."""
    return read_json(Path(path) / CONFIG_FILE, error=ConfigError, fix="fix or re-create config.json",
                     missing=SourceNotFoundError, missing_fix="pass an HF model directory with a config.json")


def model_class(config: Mapping[str, Any]) -> type:
    """The transformers class named by ``config["architectures"][0]``.

    Example:
        >>> model_class({"architectures": ["LlamaForCausalLM"]}).__name__
        'LlamaForCausalLM'
    """
    import transformers

    archs = config.get("architectures") or []
    if not archs:
        raise ConfigError("config.json has no 'architectures' entry: cannot tell which model class to build")
    cls = getattr(transformers, archs[0], None)
    if cls is None:
        raise ConfigError(f"architecture {archs[0]!r} of config.json is not in this transformers version; upgrade it")
    return cls


def _hf_config(config: Mapping[str, Any]) -> Any:
    from transformers import AutoConfig

    cfg = dict(config)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ConfigError("config.json has no 'model_type'")
    return AutoConfig.for_model(model_type, **cfg)


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Parameters created in the block live on the meta device; buffers stay real."""
    orig = torch.nn.Module.register_parameter

    def register_parameter(self: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        orig(self, name, param)
        if param is not None and param.device.type != "meta":
            p = self._parameters[name]
            self._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    torch.nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = orig  # type: ignore[method-assign]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    if dtype is None or not dtype.is_floating_point:
        yield
        return
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _config_dtype(config: Mapping[str, Any]) -> torch.dtype | None:
    name = config.get("dtype") or config.get("torch_dtype")
    return torch_dtype(name) if isinstance(name, str) else None


def build_meta_model(config: Mapping[str, Any], dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Instantiate ``config``'s architecture with parameters on meta (no memory, no init), buffers real.

    Example:
        >>> from llmpack.testing import tiny_config
        >>> cfg = tiny_config("llama").to_dict(); cfg["architectures"] = ["LlamaForCausalLM"]
        >>> build_meta_model(cfg).model.embed_tokens.weight.device.type
        'meta'
    """
    from transformers.initialization import no_init_weights

    cls = model_class(config)
    hf_cfg = _hf_config(config)
    with _default_dtype(dtype or _config_dtype(config)), _params_on_meta(), no_init_weights():
        model = cls(hf_cfg)
    return model
