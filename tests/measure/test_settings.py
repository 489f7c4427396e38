"""MeasureSettings: validated like Recipe, one clear ConfigError line per bad value, and the same report as the
keyword arguments it stands for."""

from __future__ import annotations

import dataclasses

import pytest

from llmpack.errors import ConfigError, LlmpackError
from llmpack.measure.api import measure
from llmpack.measure.settings import MEASURE_SETTINGS_VERSION, MeasureSettings
from llmpack.testing import byte_tokenizer, tiny_model


@pytest.mark.parametrize("kwargs, message", [
    ({"seq_len": 1}, "seq_len must be an integer >= 2, got 1"),
    ({"seq_len": True}, "seq_len must be an integer >= 2, got True"),
    ({"batch_sizes": ()}, "batch_sizes is empty: pass e.g. (1, 8)"),
    ({"batch_sizes": (1, 0)}, "batch size must be an integer >= 1, got 0"),
    ({"batch_sizes": "1,8"}, "batch_sizes must be a sequence of integers such as (1, 8), got '1,8'"),
    ({"new_tokens": -1}, "new_tokens must be an integer >= 0, got -1"),
    ({"warmup": 1.5}, "warmup must be an integer >= 0, got 1.5"),
    ({"runs": 0}, "runs must be an integer >= 1, got 0"),
    ({"quick": "yes"}, "quick must be True or False, got 'yes'"),
    ({"runtime": "fast"}, "runtime 'fast' is not one of default, reference"),
    ({"gates": {"min_speed": 1}}, "unknown gate 'min_speed'"),
    ({"gates": {"min_top1": "high"}}, "gate min_top1 needs a number, got 'high'"),
    ({"latency": False, "gates": {"min_speedup": 1.0}}, "the min_speedup gate needs latency"),
    ({"version": 99}, "measure settings version 99 is not supported"),
])
def test_invalid_settings_raise_one_config_error_line(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        MeasureSettings(**kwargs)
    assert isinstance(e.value, LlmpackError)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_settings_are_frozen_normalised_and_round_trip() -> None:
    s = MeasureSettings(batch_sizes=[1, 4], gates={"max_ppl_increase_pct": "2"}, text=["a", "b"], quick=True)
    assert s.batch_sizes == (1, 4) and s.gates == {"max_ppl_increase_pct": 2.0} and s.text == ("a", "b")
    assert s.version == MEASURE_SETTINGS_VERSION
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seq_len = 64  # type: ignore[misc]
    assert MeasureSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ConfigError, match=r"unknown measure settings \['speed'\]"):
        MeasureSettings.from_dict({"speed": 2})


def test_measure_takes_settings_and_refuses_settings_with_keywords(fast: dict) -> None:
    m = tiny_model("llama")
    tok = byte_tokenizer()
    text = "hello world, " * 40
    by_keywords = measure(m, m, tokenizer=tok, text=text, device="cpu", **fast)
    by_settings = measure(m, m, settings=MeasureSettings(tokenizer=tok, text=text, device="cpu", **fast))
    assert by_settings.settings == by_keywords.settings
    assert by_settings.accuracy.top1 == by_keywords.accuracy.top1 == 1.0
    with pytest.raises(ConfigError, match="pass settings= or the keyword arguments, not both: quick, seq_len given"):
        measure(m, m, settings=MeasureSettings(), quick=True, seq_len=16)
    with pytest.raises(ConfigError, match="seq_len must be an integer >= 2"):
        measure(m, m, tokenizer=tok, seq_len=1)
