"""llmpack._env: every variable is read there, with one parser of yes/no values."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmpack import _env
from llmpack.errors import BadInputError, ConfigError


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "True", "yes", "Yes", "on", "ON", " on "])
def test_flag_accepts_yes_values_in_any_case(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LLMPACK_X", value)
    assert _env.env_flag("LLMPACK_X") is True
    assert _env.env_flag("LLMPACK_X", default=True) is True


@pytest.mark.parametrize("value", ["0", "false", "False", "no", "NO", "off", "Off"])
def test_flag_accepts_no_values_in_any_case(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LLMPACK_X", value)
    assert _env.env_flag("LLMPACK_X", default=True) is False


@pytest.mark.parametrize("value", [None, "", "   "])
def test_flag_unset_or_empty_is_the_default(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("LLMPACK_X", raising=False)
    else:
        monkeypatch.setenv("LLMPACK_X", value)
    assert _env.env_flag("LLMPACK_X") is False
    assert _env.env_flag("LLMPACK_X", default=True) is True


@pytest.mark.parametrize("value", ["2", "maybe", "y", "enable", "truee"])
def test_flag_rejects_garbage_with_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LLMPACK_X", value)
    with pytest.raises(ConfigError) as info:
        _env.env_flag("LLMPACK_X")
    assert str(info.value) == (f"LLMPACK_X={value!r} is not a yes/no value: set it to 1, true, yes or on, "
                               "to 0, false, no or off, or unset it")
    assert info.value.exit_code == 2


def test_progress_and_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_env.ENV_PROGRESS, raising=False)
    monkeypatch.delenv(_env.ENV_DEBUG, raising=False)
    assert _env.progress_enabled() is True and _env.debug() is False
    monkeypatch.setenv(_env.ENV_PROGRESS, "0")
    monkeypatch.setenv(_env.ENV_DEBUG, "1")
    assert _env.progress_enabled() is False and _env.debug() is True
    monkeypatch.setenv(_env.ENV_PROGRESS, "sometimes")
    with pytest.raises(ConfigError, match="LLMPACK_PROGRESS='sometimes'"):
        _env.progress_enabled()
    monkeypatch.setenv(_env.ENV_DEBUG, "verbose")  # read while an error is reported: a typo still means yes
    assert _env.debug() is True


def test_kernel_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_env.ENV_KERNEL, raising=False)
    assert _env.kernel_option() == "auto"
    monkeypatch.setenv(_env.ENV_KERNEL, " Dequant ")
    assert _env.kernel_option() == "dequant"
    monkeypatch.setenv(_env.ENV_KERNEL, "fast")
    with pytest.raises(ConfigError, match="LLMPACK_INT8_KERNEL='fast' is not a kernel: choose one of auto, vnni"):
        _env.kernel_option()


def test_cuda_fuse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_env.ENV_CUDA_FUSE, raising=False)
    assert _env.cuda_fuse_enabled() is True
    monkeypatch.setenv(_env.ENV_CUDA_FUSE, "off")
    assert _env.cuda_fuse_enabled() is False
    monkeypatch.setenv(_env.ENV_CUDA_FUSE, "later")
    with pytest.raises(ConfigError, match="LLMPACK_CUDA_FUSE='later'"):
        _env.cuda_fuse_enabled()


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(_env.ENV_CACHE, str(tmp_path / "c"))
    assert _env.cache_root() == tmp_path / "c"
    monkeypatch.delenv(_env.ENV_CACHE)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert _env.cache_root() == tmp_path / ".cache" / "llmpack"


def test_cache_dir_of_testing_is_the_same_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from llmpack.testing import cache_dir

    monkeypatch.setenv(_env.ENV_CACHE, str(tmp_path / "c"))
    assert cache_dir() == _env.cache_root() and cache_dir().is_dir()


def test_api_key_and_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_env.ENV_API_KEY, "")
    assert _env.api_key() is None
    monkeypatch.setenv(_env.ENV_API_KEY, "k")
    assert _env.api_key() == "k"
    monkeypatch.delenv(_env.ENV_SOURCE_DATE_EPOCH, raising=False)
    assert _env.source_date_epoch() is None
    monkeypatch.setenv(_env.ENV_SOURCE_DATE_EPOCH, " 42 ")
    assert _env.source_date_epoch() == 42
    monkeypatch.setenv(_env.ENV_SOURCE_DATE_EPOCH, "yesterday")
    with pytest.raises(BadInputError, match="SOURCE_DATE_EPOCH='yesterday' is not an integer"):
        _env.source_date_epoch()


def test_no_other_module_reads_llmpack_variables() -> None:
    """The variables are read in llmpack/_env.py only (names may be used elsewhere, e.g. written into images)."""
    import re

    root = Path(_env.__file__).parent
    offenders = []
    for p in root.rglob("*.py"):
        if p.name == "_env.py":
            continue
        text = p.read_text(encoding="utf-8")
        if re.search(r"(os\.environ|os\.getenv)[^\n]*(LLMPACK_|ENV_|SOURCE_DATE_EPOCH)", text):
            offenders.append(str(p.relative_to(root)))
    assert offenders == []
    documented = (root.parent / "docs" / "environment.md").read_text(encoding="utf-8")
    for name in ("ENV_CACHE", "ENV_DEBUG", "ENV_PROGRESS", "ENV_KERNEL", "ENV_CUDA_FUSE", "ENV_API_KEY", "ENV_MODEL",
                 "ENV_SOURCE_DATE_EPOCH"):
        assert f"`{getattr(_env, name)}`" in documented, name
