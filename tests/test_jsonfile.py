"""llmpack._jsonfile: one JSON reader; the caller passes the error class and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmpack._jsonfile import read_json, read_json_object
from llmpack.errors import ConfigError, IntegrityError, SourceNotFoundError


def test_reads_an_object(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text('{"a": [1, 2]}', encoding="utf-8")
    assert read_json(p, error=ConfigError, fix="fix it") == {"a": [1, 2]}


def test_missing_file_uses_the_missing_class_and_fix(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    with pytest.raises(SourceNotFoundError) as info:
        read_json(p, error=ConfigError, fix="fix it", missing=SourceNotFoundError, missing_fix="pass a model dir")
    assert str(info.value) == f"{p} is missing: pass a model dir"
    with pytest.raises(IntegrityError, match=r"index\.json is missing: re-run `llmpack pack`$"):
        read_json(tmp_path / "index.json", error=IntegrityError, fix="re-run `llmpack pack`")


@pytest.mark.parametrize("text", ["{not json", '{"a": 1,}', "\ufeff{}"])
def test_invalid_json_raises_the_passed_class_with_the_fix(tmp_path: Path, text: str) -> None:
    p = tmp_path / "config.json"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON \(.+\); fix or re-create config\.json$"):
        read_json(p, error=ConfigError, fix="fix or re-create config.json")


def test_not_utf8_is_invalid_json(tmp_path: Path) -> None:
    p = tmp_path / "llmpack.json"
    p.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(IntegrityError, match=r"llmpack\.json is not valid JSON .*; re-create the model$"):
        read_json(p, error=IntegrityError, fix="re-create the model")


def test_not_an_object(tmp_path: Path) -> None:
    p = tmp_path / "config.json"
    p.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_json(p, error=ConfigError, fix="fix it")
    assert str(info.value) == f"{p} is not a JSON object (got list); fix it"
    assert read_json(p, error=ConfigError, fix="fix it", want_object=False) == [1, 2]


def test_unreadable_file(tmp_path: Path) -> None:
    d = tmp_path / "config.json"
    d.mkdir()  # a directory where the file should be
    with pytest.raises(ConfigError, match=r"cannot read .*config\.json: Is a directory; fix it$"):
        read_json(d, error=ConfigError, fix="fix it")


def test_read_json_object_is_lenient(tmp_path: Path) -> None:
    p = tmp_path / "cache.json"
    assert read_json_object(p) is None
    p.write_text("[1]")
    assert read_json_object(p) is None
    p.write_text("{broken")
    assert read_json_object(p) is None
    p.write_text('{"v": 1}')
    assert read_json_object(p) == {"v": 1}
