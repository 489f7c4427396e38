"""The compressed-tensors ``quantization_config`` that llmpack writes into ``config.json``, and
its parser: ``int-quantized`` for int8 methods, ``float-quantized`` for fp8 (FP8 E4M3 weights per channel,
dynamic per-token FP8 activations: what llm-compressor's ``FP8_DYNAMIC`` writes and vLLM reads).

The config is built through the ``compressed-tensors`` package's own pydantic models
(``QuantizationConfig`` / ``QuantizationScheme`` / ``QuantizationArgs``) when that package is
installed, so it is valid by the library's own rules; otherwise an identical plain dict is written.

Example:
    >>> cfg = build_quantization_config("int8", ignore=["lm_head"])
    >>> cfg["format"], cfg["config_groups"]["group_0"]["input_activations"]["strategy"]
    ('int-quantized', 'token')
    >>> parse_quantization_config(cfg).weight_only
    False
    >>> parse_quantization_config(build_quantization_config("fp8")).scheme
    'fp8'
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping

from llmpack._nn import is_conv1d_name
from llmpack.config import Method
from llmpack.constants import CT_FORMAT_FLOAT, CT_FORMAT_INT, CT_QUANT_METHOD, CT_STATUS_COMPRESSED
from llmpack.errors import ConfigError
from llmpack.quant.schemes import SCHEMES, Scheme, get_scheme

__all__ = [
    "WEIGHT_ARGS",
    "ACT_ARGS",
    "build_quantization_config",
    "parse_quantization_config",
    "ParsedQuantConfig",
    "scheme_for",
    "is_compressed_tensors",
]

WEIGHT_ARGS: dict[str, Any] = {
    "num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "dynamic": False,
}
ACT_ARGS: dict[str, Any] = {
    "num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True,
}


def _clean(d: Any) -> Any:
    """Drop ``None``-valued keys below config groups' argument dicts (compressed-tensors' dumps include them)."""
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_clean(v) for v in d]
    return d


def _group(targets: list[str], act: bool, scheme: Scheme = SCHEMES["int8"]) -> dict[str, Any]:
    # "format" per group, as compressed-tensors itself writes it: without it the library infers
    # "pack-quantized" for weight-only groups and looks for weight_packed tensors.
    return {"targets": list(targets), "weights": dict(WEIGHT_ARGS, type=scheme.ct_type),
            "input_activations": dict(ACT_ARGS, type=scheme.ct_type) if act else None,
            "format": scheme.ct_format}


def build_quantization_config(
    method: "str | Method",
    *,
    ignore: Iterable[str] = (),
    weight_only_modules: Iterable[str] = (),
    embeddings: Iterable[str] = (),
) -> dict[str, Any]:
    """The ``quantization_config`` dict for an int8 or fp8 method.

    Args:
        method: ``int8`` (W8A8), ``int8-weight-only`` (W8A16), ``fp8`` (FP8 weights and per-token activations)
            or ``fp8-weight-only``.
        ignore: ``nn.Linear`` (and ``Conv1D``) modules kept in float (the compressed-tensors ``ignore`` list).
        weight_only_modules: layers stored weight-only inside a W8A8 model (an extra config group
            targeting them by exact name).
        embeddings: ``nn.Embedding`` modules stored int8 weight-only (``--quantize-embeddings``).

    Returns:
        A JSON-ready dict, exactly the layout of DESIGN.md ("On-disk format").

    Raises:
        ConfigError: ``method`` is not an int8 / fp8 method, or embeddings are asked for with fp8.

    Example:
        >>> build_quantization_config("int8-weight-only")["config_groups"]["group_0"]["input_activations"] is None
        True
        >>> build_quantization_config("fp8")["config_groups"]["group_0"]["weights"]["type"]
        'float'
    """
    m = Method.parse(method)
    if m.scheme is None:
        raise ConfigError(f"method {m.value!r} has no compressed-tensors config: use int8, int8-weight-only, fp8 or "
                          "fp8-weight-only")
    scheme = get_scheme(m.scheme)
    groups: dict[str, dict[str, Any]] = {"group_0": _group(["Linear"], m.act_quant, scheme)}
    wo = sorted(set(weight_only_modules))
    if wo and m.act_quant:
        groups["group_1"] = _group([f"re:^{re.escape(n)}$" for n in wo], False, scheme)
    emb = sorted(set(embeddings))
    if emb and scheme.name != "int8":
        raise ConfigError("int8 embedding tables are written by int8 methods only: drop quantize_embeddings for fp8")
    if emb:
        groups[f"group_{len(groups)}"] = _group([f"re:^{re.escape(n)}$" for n in emb], act=False)
    ign = sorted(set(ignore))
    plain: dict[str, Any] = {
        "quant_method": CT_QUANT_METHOD,
        "format": scheme.ct_format,
        "quantization_status": CT_STATUS_COMPRESSED,
        "config_groups": groups,
        "ignore": ign,
    }
    try:
        from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme
    except ImportError:  # pragma: no cover - compressed-tensors is a dev dependency
        return plain
    schemes = {
        name: QuantizationScheme(
            targets=g["targets"],
            weights=QuantizationArgs(**g["weights"]),
            input_activations=QuantizationArgs(**g["input_activations"]) if g["input_activations"] else None,
            format=g["format"],
        )
        for name, g in groups.items()
    }
    qc = QuantizationConfig(
        config_groups=schemes, format=scheme.ct_format, quantization_status=CT_STATUS_COMPRESSED, ignore=ign,
        quant_method=CT_QUANT_METHOD,
    )
    dumped = qc.model_dump(mode="json", exclude_none=True)
    out: dict[str, Any] = {
        "quant_method": dumped["quant_method"],
        "format": dumped["format"],
        "quantization_status": dumped["quantization_status"],
        "config_groups": {},
        "ignore": dumped.get("ignore", []),
    }
    for name, g in dumped["config_groups"].items():
        out["config_groups"][name] = {
            "targets": g["targets"],
            "weights": {k: g["weights"][k] for k in WEIGHT_ARGS},
            "input_activations": (
                {k: g["input_activations"][k] for k in ACT_ARGS} if g.get("input_activations") else None
            ),
            "format": g.get("format", scheme.ct_format),
        }
    return _clean(out)


@dataclasses.dataclass(frozen=True)
class ParsedQuantConfig:
    """What llmpack needs from a compressed-tensors config.

    Attributes:
        groups: ``(targets, act_quant)`` per config group, in order.
        ignore: module names / patterns kept in float.
        scheme: ``"int8"`` (``int-quantized``) or ``"fp8"`` (``float-quantized``): one per checkpoint.
        weight_only: every group is weight-only.
    """

    groups: tuple[tuple[tuple[str, ...], bool], ...]
    ignore: tuple[str, ...]
    scheme: str = "int8"

    @property
    def weight_only(self) -> bool:
        return all(not act for _, act in self.groups)


def is_compressed_tensors(qcfg: Mapping[str, Any] | None) -> bool:
    """True when ``qcfg`` is a compressed-tensors quantization config."""
    return bool(qcfg) and str(qcfg.get("quant_method", "")).replace("_", "-") == CT_QUANT_METHOD  # type: ignore[union-attr]


def parse_quantization_config(qcfg: Mapping[str, Any]) -> ParsedQuantConfig:
    """Validate a compressed-tensors config for llmpack's runtime and summarise it.

    Accepts configs written by llmpack and by the compressed-tensors library: ``int-quantized`` with 8-bit
    symmetric int weights, or ``float-quantized`` with 8-bit float (E4M3) weights, per channel (or per tensor);
    activations per-token dynamic of the same type, or none.

    Raises:
        ConfigError: another quantization method, format or scheme llmpack cannot run.

    Example:
        >>> parse_quantization_config(build_quantization_config("int8", ignore=["lm_head"])).ignore
        ('lm_head',)
    """
    if not is_compressed_tensors(qcfg):
        raise ConfigError(f"quantization_config quant_method {qcfg.get('quant_method')!r} is not compressed-tensors")
    fmt = qcfg.get("format")
    by_format = {s.ct_format: s for s in SCHEMES.values()}
    if fmt not in by_format:
        raise ConfigError(
            f"compressed-tensors format {fmt!r} is not supported by llmpack's runtime: only {CT_FORMAT_INT!r} "
            f"and {CT_FORMAT_FLOAT!r}"
        )
    scheme = by_format[fmt]
    wtype = scheme.ct_type
    status = qcfg.get("quantization_status", CT_STATUS_COMPRESSED)
    if status != CT_STATUS_COMPRESSED:
        raise ConfigError(f"compressed-tensors quantization_status {status!r}: llmpack loads 'compressed' checkpoints only")
    groups = []
    for gname, g in (qcfg.get("config_groups") or {}).items():
        if not isinstance(g, Mapping):
            raise ConfigError(f"quantization_config group {gname!r} is not a scheme")
        w = g.get("weights") or {}
        if not (w.get("num_bits") == 8 and w.get("type", "int") == wtype and w.get("symmetric", True)
                and w.get("strategy") in ("channel", "tensor") and not w.get("dynamic", False)
                and w.get("group_size") in (None, -1)):
            raise ConfigError(
                f"quantization_config group {gname!r} weights {dict(w)} are not 8-bit symmetric {wtype} per-channel: "
                f"llmpack cannot run this scheme"
            )
        a = g.get("input_activations")
        gfmt = g.get("format")
        if gfmt not in (None, fmt):
            raise ConfigError(f"quantization_config group {gname!r} has format {gfmt!r} inside a {fmt!r} config: "
                              "llmpack runs one format per checkpoint")
        if a:
            if not (a.get("num_bits") == 8 and a.get("type", "int") == wtype and a.get("dynamic", False)):
                raise ConfigError(
                    f"quantization_config group {gname!r} activations {dict(a)} are not dynamic 8-bit {wtype}: "
                    f"llmpack runs per-token dynamic activations only"
                )
        groups.append((tuple(str(t) for t in g.get("targets", ())), bool(a)))
    return ParsedQuantConfig(groups=tuple(groups), ignore=tuple(str(i) for i in qcfg.get("ignore") or ()),
                             scheme=scheme.name)


def _matches(target: str, name: str, class_name: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == class_name or target == name


def scheme_for(name: str, class_name: str, qcfg: Mapping[str, Any] | None) -> str | None:
    """``"w8a8"``, ``"w8a16"`` or ``None`` (not targeted / ignored) for module ``name`` of class ``class_name``.

    Name-specific targets (``re:`` patterns or exact names) win over class targets, as in
    compressed-tensors. ``Conv1D`` is treated like ``Linear`` (llmpack's own extension, see
    ``docs/int8-format.md``). A ``None`` config means W8A8.

    Example:
        >>> scheme_for("lm_head", "Linear", build_quantization_config("int8", ignore=["lm_head"])) is None
        True
    """
    if not qcfg:
        return "w8a8"
    parsed = parse_quantization_config(qcfg)
    for pat in parsed.ignore:
        if _matches(pat, name, class_name):
            return None
    cls = "Linear" if is_conv1d_name(class_name) else class_name
    by_name = [act for targets, act in parsed.groups if any(t.startswith("re:") or t == name for t in targets)
               and any(_matches(t, name, cls) for t in targets)]
    if by_name:
        return "w8a8" if by_name[-1] else "w8a16"
    by_class = [act for targets, act in parsed.groups if any(_matches(t, name, cls) for t in targets)]
    if by_class:
        return "w8a8" if by_class[-1] else "w8a16"
    return None
