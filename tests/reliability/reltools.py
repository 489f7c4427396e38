"""Helpers and assertions shared by the reliability suite (imported as ``reltools``; a unique basename, since
pytest's rootdir import mode puts every test directory on ``sys.path``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults import by_id  # noqa: E402
from stfile import sha_tree, write_st  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHILD = HERE / "child.py"
TINY_CONFIG = {"model_type": "llama"}  # no "architectures": float methods never build the model (fast)


def tensors() -> dict[str, torch.Tensor]:
    """A few small tensors of mixed dtypes, seeded."""
    g = torch.Generator().manual_seed(0)
    return {
        "model.embed.weight": torch.randn(16, 8, generator=g),
        "model.layer.weight": torch.randn(8, 8, generator=g),
        "model.layer.bias": torch.randn(8, generator=g),
        "model.norm.weight": torch.ones(8),
        "model.steps": torch.tensor([3, 4], dtype=torch.int64),
    }


def make_src(root: Path, name: str = "src", *, config: object = TINY_CONFIG, **st_kwargs: object) -> Path:
    """A model dir: config.json + tokenizer.json + one hand-written model.safetensors (forgeable via kwargs)."""
    d = root / name
    d.mkdir(parents=True)
    if config is not None:
        (d / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    write_st(d / "model.safetensors", st_kwargs.pop("tensors", None) or tensors(), **st_kwargs)  # type: ignore[arg-type]
    return d


def make_sharded(root: Path, name: str = "src", *, weight_map: dict[str, str] | None = None,
                 index_text: str | None = None) -> Path:
    """A model dir with two shards and an index (``weight_map``/``index_text`` forge the index)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps(TINY_CONFIG))
    t = tensors()
    names = list(t)
    parts = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    wm = {}
    for fname, ns in parts.items():
        write_st(d / fname, {n: t[n] for n in ns})
        wm.update({n: fname for n in ns})
    if weight_map is not None:
        wm.update(weight_map)
    text = index_text if index_text is not None else json.dumps({"metadata": {}, "weight_map": wm})
    (d / "model.safetensors.index.json").write_text(text)
    return d


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``llmpack.cli.main(argv)`` in-process; returns (exit code, stdout, stderr)."""
    from llmpack.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(fault_id: str, code: int, err: str, *names: str, fix: str) -> str:
    """The documented exit code, exactly one ``llmpack: error:`` line naming ``names`` and matching ``fix``."""
    expected = by_id(fault_id).exit_code
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == expected, f"exit {code}, expected {expected}: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    line = lines[0]
    assert line.startswith("llmpack: error: "), line
    for n in names:
        assert n in line, f"{n!r} not named in: {line}"
    assert re.search(fix, line, re.IGNORECASE), f"no fix matching {fix!r} in: {line}"
    return line


def leftovers(parent: Path) -> list[str]:
    """llmpack temp dirs and lock files in ``parent``."""
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".llmpack-tmp-") or p.name.endswith(".llmpack.lock"))


def assert_clean(out: Path) -> None:
    """No output, no ``.llmpack-tmp-*`` sibling, no lock file."""
    assert not out.exists(), f"{out} was created"
    assert leftovers(out.parent) == [], leftovers(out.parent)


class Src:
    """A source dir with its content snapshot; ``unchanged()`` asserts every byte is as before."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.before = sha_tree(path)

    def unchanged(self) -> None:
        assert sha_tree(self.path) == self.before, "the source was modified"


def spawn(argv: list[str], marker: Path, *, go: Path | None = None, pause: str = "shard") -> subprocess.Popen[str]:
    """Start ``python child.py`` running ``llmpack argv`` that pauses mid-write (after ``marker`` appears)."""
    env = dict(os.environ, LLMPACK_TEST_MARKER=str(marker), LLMPACK_TEST_PAUSE=pause, LLMPACK_PROGRESS="0",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LLMPACK_DEBUG", None)
    if go is not None:
        env["LLMPACK_TEST_GO"] = str(go)
    return subprocess.Popen([sys.executable, str(CHILD), *argv], env=env, cwd=str(marker.parent),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_marker(proc: subprocess.Popen[str], marker: Path, timeout: float = 120.0) -> None:
    """Wait until the child reached its pause point (fail with its stderr if it exits first)."""
    import time

    t0 = time.monotonic()
    while not marker.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"child exited {proc.returncode} before pausing: {err[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("child never reached its pause point")
        time.sleep(0.02)


def try_mount(target: Path, options: str) -> bool:
    """``mount -t tmpfs -o OPTIONS tmpfs TARGET``; False when not permitted."""
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
    return r.returncode == 0


def umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)
