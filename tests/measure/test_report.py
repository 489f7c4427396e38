"""Report: schema round-trip, rendering (Markdown, HTML, PNG), summary line, gates."""

from __future__ import annotations

import json
import math

import pytest

from llmpack.constants import REPORT_SCHEMA_VERSION
from llmpack.errors import BadInputError, ConfigError
from llmpack.measure.report import GATES, Report, evaluate_gates, validate_gates


def test_schema_roundtrip(tmp_path) -> None:
    r = Report.example()
    d = r.to_dict()
    assert d["schema"] == "llmpack.measure.report" and d["schema_version"] == REPORT_SCHEMA_VERSION
    back = Report.from_dict(json.loads(json.dumps(d)))
    assert back == r
    assert back.to_dict() == d
    p = tmp_path / "r.json"
    r.to_json(p)
    assert Report.from_json(p) == r
    assert Report.from_json(p.read_text()) == r


def test_schema_documented_keys() -> None:
    """Every top-level key of the JSON is documented in docs/report-schema.md."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "report-schema.md").read_text()
    for key in Report.example().to_dict():
        assert f"`{key}`" in doc, key
    for gate in GATES:
        assert f"`{gate}`" in doc, gate


def test_rejects_newer_schema_and_non_reports() -> None:
    d = Report.example().to_dict()
    d["schema_version"] = REPORT_SCHEMA_VERSION + 1
    with pytest.raises(BadInputError, match="newer"):
        Report.from_dict(d)
    with pytest.raises(BadInputError, match="not an llmpack report"):
        Report.from_dict({"hello": 1})
    with pytest.raises(BadInputError):
        Report.from_json("{not json")


def test_non_finite_becomes_null() -> None:
    r = Report.example()
    r.accuracy.ppl_candidate = math.inf
    r.accuracy.ppl_delta_pct = math.inf
    text = r.to_json()  # strict JSON: no Infinity / NaN tokens
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["accuracy"]["ppl_candidate"] is None
    assert "ppl inf" in r.summary()


def test_summary_line() -> None:
    r = Report.example()
    assert r.summary() == "bf16: 0.50× size, 2.0× faster (b1), +0.3% ppl"
    r.latency[0].speedup = 0.25
    assert "4.0× slower (b1)" in r.summary()


def test_markdown_html_png(tmp_path) -> None:
    r = Report.example()
    md = r.to_markdown(tmp_path / "r.md")
    for section in ("### Size", "### Latency", "### Accuracy", "### Gates: passed", "### Environment"):
        assert section in md
    assert (tmp_path / "r.md").read_text() == md
    html = r._repr_html_()
    assert html.startswith("<div") and "<table>" in html and "bf16" in html
    png = r.plot(tmp_path / "sub" / "r.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_gates_pass_fail_and_skip() -> None:
    r = Report.example()
    res = {g.name: g for g in evaluate_gates(r, {"max_ppl_increase_pct": 0.1, "min_top1": 0.9, "min_speedup": 1.0,
                                                 "max_size_ratio": 0.6, "max_kl": 0.001, "min_cosine": 0.99})}
    assert not res["max_ppl_increase_pct"].passed  # +0.3% > 0.1%
    assert res["min_top1"].passed and res["min_speedup"].passed and res["max_size_ratio"].passed
    assert not res["max_kl"].passed
    assert not res["min_cosine"].applicable and res["min_cosine"].passed  # causal LM: no embedding cosine
    r.gate_results = list(res.values())
    assert not r.passed
    assert r.failed_gates == ["max_ppl_increase_pct", "max_kl"]
    assert "FAILED max_ppl_increase_pct, max_kl" in r.summary()
    assert "### Gates: FAILED" in r.to_markdown()


def test_unknown_gate_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        validate_gates({"max_ppl": 2})
    for name in GATES:
        assert name in str(e.value)
    with pytest.raises(ConfigError, match="needs a number"):
        validate_gates({"min_top1": "high"})
    assert validate_gates({"min_top1": None}) == {}
