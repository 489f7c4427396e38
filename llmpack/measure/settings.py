"""How ``llmpack.measure`` measures: :class:`MeasureSettings` (frozen, validated, versioned like
:class:`llmpack.Recipe`), the default and quick budgets, and the CLI's spellings of them.

``measure(baseline, candidate, settings=MeasureSettings(quick=True))`` is the same call as
``measure(baseline, candidate, quick=True)``; the settings object can be built once, checked early, stored
and compared.

Example:
    >>> s = MeasureSettings(batch_sizes=[1, 4], quick=True, gates={"min_top1": "0.9"})
    >>> s.batch_sizes, s.gates
    ((1, 4), {'min_top1': 0.9})
    >>> MeasureSettings.from_dict(s.to_dict()) == s
    True
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Mapping

from llmpack.config import settings_from_keywords
from llmpack.errors import ConfigError
from llmpack.measure.gates import validate_gates

__all__ = ["MeasureSettings", "MEASURE_SETTINGS_VERSION", "DEFAULTS", "QUICK", "FP16_CPU_CAP", "DEFAULT_WINDOW",
           "RUNTIMES", "parse_batch_sizes", "gates_from_args"]

MEASURE_SETTINGS_VERSION = 1

# Budgets: timed run pairs per batch size are chosen as budget_s / (time of one warm-up pair),
# clamped to [min_runs, max_runs], unless runs= is given.
DEFAULTS: dict[str, Any] = {"batch_sizes": (1, 8), "new_tokens": 32, "warmup": 1, "budget_s": 20.0, "min_runs": 3,
                            "max_runs": 30, "max_tokens": None, "max_sentences": 64}
QUICK: dict[str, Any] = {"batch_sizes": (1,), "new_tokens": 8, "warmup": 1, "budget_s": 3.0, "min_runs": 2,
                         "max_runs": 10, "max_tokens": 1024, "max_sentences": 16}
# FP16 on CPU has no fast kernels (40-60x slower than FP32): cap the work.
FP16_CPU_CAP: dict[str, Any] = {"batch_sizes": (1,), "seq_len": 32, "new_tokens": 4, "warmup": 1, "runs": 1,
                                "max_tokens": 256}
DEFAULT_WINDOW = 512

RUNTIMES = ("default", "reference")
"""Values of :func:`llmpack.measure`'s ``runtime`` (``--runtime``)."""


def check_int(name: str, v: Any, low: int) -> int:
    """``v`` when it is an integer >= ``low``.

    Raises:
        ConfigError: otherwise (a bool is not an integer here).

    Example:
        >>> check_int("seq_len", 16, 2)
        16
    """
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
    return v


@dataclasses.dataclass(frozen=True)
class MeasureSettings:
    """Everything :func:`llmpack.measure` takes besides the two models (see its docstring for each field).

    Args:
        text: evaluation text: ``None`` (built-in slice), a file path, a string or an iterable of strings
            (kept as a tuple).
        device: ``"cpu"`` / ``"cuda"`` (``None``: CUDA when available; availability is checked when measuring).
        batch_sizes: batch sizes timed (``None``: ``(1, 8)``, ``(1,)`` with ``quick``).
        seq_len: prompt tokens per row when timing (>= 2).
        new_tokens, warmup, runs: decode steps, untimed and timed run pairs (``None``: from the budget).
        quick: the short budget. gates: gate name -> threshold (validated like ``--max-ppl-increase`` ...).
        tokenizer: a tokenizer or a directory with one, used for both models.
        quiet: no progress bars. window, stride: perplexity windows (``None``: from the context length).
        latency: time the models. runtime: int8 kernels, ``"default"`` or ``"reference"``.
        version: the settings schema version.

    Raises:
        ConfigError: an invalid value, in one line naming the setting.

    Example:
        >>> MeasureSettings(seq_len=1)
        Traceback (most recent call last):
        ...
        llmpack.errors.ConfigError: seq_len must be an integer >= 2, got 1
    """

    text: Any = None
    device: Any = None
    batch_sizes: tuple[int, ...] | None = None
    seq_len: int = 128
    new_tokens: int | None = None
    warmup: int | None = None
    runs: int | None = None
    quick: bool = False
    gates: Mapping[str, float] = dataclasses.field(default_factory=dict)
    tokenizer: Any = None
    quiet: bool = False
    window: int | None = None
    stride: int | None = None
    latency: bool = True
    runtime: str = "default"
    version: int = MEASURE_SETTINGS_VERSION

    def __post_init__(self) -> None:
        if self.version != MEASURE_SETTINGS_VERSION:
            raise ConfigError(f"measure settings version {self.version!r} is not supported: this llmpack reads "
                              f"version {MEASURE_SETTINGS_VERSION}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime {self.runtime!r} is not one of {', '.join(RUNTIMES)}")
        object.__setattr__(self, "gates", validate_gates(self.gates))
        check_int("seq_len", self.seq_len, 2)
        if self.batch_sizes is not None:
            if isinstance(self.batch_sizes, (str, bytes)) or not isinstance(self.batch_sizes, Iterable):
                raise ConfigError("batch_sizes must be a sequence of integers such as (1, 8), "
                                  f"got {self.batch_sizes!r}")
            object.__setattr__(self, "batch_sizes", tuple(self.batch_sizes))
            if not self.batch_sizes:
                raise ConfigError("batch_sizes is empty: pass e.g. (1, 8)")
            for b in self.batch_sizes:
                check_int("batch size", b, 1)
        for name, low in (("new_tokens", 0), ("warmup", 0), ("runs", 1)):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), low)
        for name in ("quick", "quiet", "latency"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if not self.latency and "min_speedup" in self.gates:
            raise ConfigError("the min_speedup gate needs latency: drop latency=False (--no-latency) or the gate")
        if self.text is not None and not isinstance(self.text, (str, os.PathLike)):
            object.__setattr__(self, "text", tuple(self.text))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; inverse of :meth:`from_dict` (a tokenizer object is recorded by its class name).

        Example:
            >>> MeasureSettings(quick=True).to_dict()["quick"]
            True
        """
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["gates"] = dict(self.gates)
        for key in ("text", "tokenizer", "device"):
            v = d[key]
            if isinstance(v, os.PathLike) or (v is not None and type(v).__module__ == "torch"):
                d[key] = str(v)
            elif isinstance(v, tuple):
                d[key] = list(v)
            elif v is not None and not isinstance(v, str):
                d[key] = f"<{type(v).__name__}>"
        if self.batch_sizes is not None:
            d["batch_sizes"] = list(self.batch_sizes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MeasureSettings":
        """Rebuild settings from :meth:`to_dict` output; unknown keys are refused.

        Example:
            >>> MeasureSettings.from_dict({"speed": 1})
            Traceback (most recent call last):
            ...
            llmpack.errors.ConfigError: unknown measure settings ['speed']: valid keys are ['batch_sizes', \
'device', 'gates', 'latency', 'new_tokens', 'quick', 'quiet', 'runs', 'runtime', 'seq_len', 'stride', 'text', \
'tokenizer', 'version', 'warmup', 'window']
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown measure settings {sorted(unknown)}: valid keys are {sorted(names)}")
        return cls(**dict(d))

    @classmethod
    def from_keywords(cls, settings: "MeasureSettings | None", **keywords: Any) -> "MeasureSettings":
        """``settings``, or the settings the keyword arguments of :func:`llmpack.measure` spell
        (:func:`llmpack.config.settings_from_keywords`).

        Raises:
            ConfigError: ``settings`` together with a keyword that differs from its default.

        Example:
            >>> MeasureSettings.from_keywords(None, seq_len=64).seq_len
            64
        """
        return settings_from_keywords(cls, settings, keywords)


def gates_from_args(args: Any) -> dict[str, float]:
    """Gate dict from CLI arguments (``--max-ppl-increase``, ``--min-top1``, ``--min-speedup``,
    ``--max-size-ratio``, ``--max-kl``, ``--min-cosine``; missing attributes are ignored).

    Example:
        >>> import argparse
        >>> gates_from_args(argparse.Namespace(max_ppl_increase=2.0, min_top1=None))
        {'max_ppl_increase_pct': 2.0}
    """
    from llmpack.measure.gates import gates_from_options

    return gates_from_options(lambda option: getattr(args, option, None))


def parse_batch_sizes(value: str) -> tuple[int, ...]:
    """``"1,8"`` -> ``(1, 8)``.

    Example:
        >>> parse_batch_sizes("1, 8")
        (1, 8)
    """
    try:
        out = tuple(int(x) for x in str(value).split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"invalid batch sizes {value!r}: use comma-separated integers such as 1,8") from None
    if not out or any(x < 1 for x in out):
        raise ConfigError(f"invalid batch sizes {value!r}: use comma-separated integers >= 1 such as 1,8")
    return out

