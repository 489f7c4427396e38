"""`llmpack completion bash|zsh`: a script generated from the parser that bash accepts and that completes."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from llmpack.cli import COMMANDS, main


def _complete(script: str, words: list[str]) -> list[str]:
    arr = " ".join(f"'{w}'" for w in words)
    code = f"{script}\nCOMP_WORDS=({arr}); COMP_CWORD={len(words) - 1}; _llmpack; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    out = subprocess.run(["bash", "-c", code], capture_output=True, text=True, check=True).stdout
    return [w for w in out.split("\n") if w]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion(capsys) -> None:
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert set(_complete(script, ["llmpack", ""])) >= set(COMMANDS)
    assert _complete(script, ["llmpack", "quantize", "--me"]) == ["--measure", "--method"]
    assert _complete(script, ["llmpack", "pack", "--runtime", ""]) == ["none", "llmpack", "vllm", "vllm-cpu"]
    assert _complete(script, ["llmpack", "completion", ""]) == ["bash", "zsh"]


def test_zsh_completion_loads_bashcompinit(capsys) -> None:
    assert main(["completion", "zsh"]) == 0
    assert capsys.readouterr().out.startswith("autoload -U +X bashcompinit && bashcompinit\n")
