"""PackOptions: validated like Recipe (one clear LlmpackError line per bad option, before anything is read),
and pack(options=...) writes the same image as the keyword arguments it stands for."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from llmpack.errors import BadInputError, ConfigError, LlmpackError
from llmpack.pack import pack
from llmpack.pack.options import PACK_OPTIONS_VERSION, PackOptions

PINNED = "docker.io/vllm/vllm-openai@sha256:" + "a" * 64


@pytest.mark.parametrize("kwargs, error, message", [
    ({"name": "Bad Name"}, BadInputError, "invalid image name 'Bad Name'"),
    ({"tag": "-x"}, BadInputError, "invalid tag '-x'"),
    ({"runtime": "tgi"}, BadInputError, "unknown runtime 'tgi'"),
    ({"artifact": "zip"}, BadInputError, "unknown artifact 'zip': choose one of image, modelpack"),
    ({"compression": "xz"}, BadInputError, "unknown compression 'xz'"),
    ({"platform": "linux"}, BadInputError, "platform 'linux' is not os/arch[/variant]"),
    ({"platform": "linux/amd64,linux/amd64"}, BadInputError, "names a platform twice"),
    ({"platform": "linux/amd64,linux/arm64", "artifact": "modelpack"}, BadInputError,
     "a multi-platform index needs artifact 'image'"),
    ({"registry": "ghcr.io/my org"}, BadInputError, "invalid registry 'ghcr.io/my org'"),
    ({"server_image": "vllm/vllm-openai:latest"}, BadInputError, "is not pinned by digest"),
    ({"source_date_epoch": -1}, BadInputError, "source_date_epoch -1 out of range"),
    ({"version": 7}, ConfigError, "pack options version 7 is not supported"),
])
def test_invalid_options_raise_one_error_line(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error) as e:
        PackOptions(**kwargs)
    assert isinstance(e.value, LlmpackError)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_options_are_frozen_normalised_and_round_trip() -> None:
    o = PackOptions(name="tiny", tag="v1", allow_files=["*.pem"], server_image=PINNED, registry="ghcr.io/org")
    assert o.allow_files == ("*.pem",) and o.version == PACK_OPTIONS_VERSION and o.reference == "tiny:v1"
    assert PackOptions(allow_files="one.key").allow_files == ("one.key",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.tag = "v2"  # type: ignore[misc]
    assert PackOptions.from_dict(o.to_dict()) == o
    with pytest.raises(ConfigError, match=r"unknown pack options \['zip'\]"):
        PackOptions.from_dict({"zip": True})


def test_pack_takes_options_and_refuses_options_with_keywords(packable_model: Path, tmp_path: Path) -> None:
    by_keywords = pack(packable_model, tmp_path / "a", name="tiny", tag="v1", quiet=True)
    by_options = pack(packable_model, tmp_path / "b", options=PackOptions(name="tiny", tag="v1", quiet=True))
    assert by_options.manifest_digest == by_keywords.manifest_digest and by_options.reference == "tiny:v1"
    with pytest.raises(ConfigError, match="pass options= or the keyword arguments, not both: tag given with options"):
        pack(packable_model, tmp_path / "c", options=PackOptions(), tag="v2")
    assert not (tmp_path / "c").exists()
    with pytest.raises(BadInputError, match="invalid tag"):
        pack(packable_model, tmp_path / "d", tag="-bad")
    assert not (tmp_path / "d").exists()
