"""``llmpack build``: config validation, caching ("up to date"), --check drift detection, gates, JSON summary.

The unit tests replace the three stage runners with fakes that write the same records the real
stages write, so caching logic is tested in milliseconds; the ``slow`` tests run the real pipeline.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import llmpack
from llmpack.checkpoint.manifest import Manifest, write_manifest
from llmpack.cli import main
from llmpack.errors import ConfigError, GateFailedError, OutputExistsError, SourceNotFoundError

B = importlib.import_module("llmpack.build")  # the module: `import llmpack.build as B` may yield the function

BASIC = """
[source]
path = "src-model"

[quantize]
method = "int8"
out = "build/model"
max_shard_size = "1GB"
ignore = ["lm_head"]

[measure]
quick = true
max_ppl_increase = 2

[pack]
out = "build/image"
name = "demo"
tag = "v1"
"""


class Fakes:
    """Stage runners that record their calls and write what the real stages write."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fingerprint = "fp-1"
        self.ppl_increase = 1.0

    def source_fingerprint(self, source: B.SourceSection) -> str:
        return self.fingerprint

    def run_quantize(self, cfg: B.BuildConfig, quiet: bool) -> dict[str, Any]:
        self.calls.append("quantize")
        out = cfg.quantize.out
        out.mkdir(parents=True, exist_ok=True)
        for p in out.iterdir():
            p.unlink()
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes(os.urandom(64))
        write_manifest(out, Manifest(source={"kind": "dir", "path": cfg.source.path, "fingerprint": self.fingerprint},
                                     recipe=cfg.quantize.recipe.to_dict()))
        return {"summary": "fake quantize"}

    def run_measure(self, cfg: B.BuildConfig, quiet: bool) -> dict[str, Any]:
        self.calls.append("measure")
        assert cfg.measure is not None
        cfg.measure.report.parent.mkdir(parents=True, exist_ok=True)
        cfg.measure.report.write_text(json.dumps({"ppl_increase_pct": self.ppl_increase}))
        return {"summary": "fake summary",
                "metrics": {"max_ppl_increase_pct": {"value": self.ppl_increase, "op": "<="},
                            "min_top1": {"value": None, "op": ">="}}}

    def run_pack(self, cfg: B.BuildConfig, quiet: bool) -> dict[str, Any]:
        self.calls.append("pack")
        assert cfg.pack is not None
        (cfg.pack.out / "oci").mkdir(parents=True, exist_ok=True)
        (cfg.pack.out / "oci" / "index.json").write_text(json.dumps({"manifests": [{"digest": "sha256:" + "ab" * 32}]}))
        return {"manifest_digest": "sha256:" + "ab" * 32, "reference": "demo:v1", "tag": "v1",
                "oci": str(cfg.pack.out / "oci")}


@pytest.fixture()
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    f = Fakes()
    monkeypatch.setattr(B, "_source_fingerprint", f.source_fingerprint)
    monkeypatch.setattr(B, "_run_quantize", f.run_quantize)
    monkeypatch.setattr(B, "_run_measure", f.run_measure)
    monkeypatch.setattr(B, "_run_pack", f.run_pack)
    return f


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "src-model").mkdir()
    (tmp_path / "llmpack.toml").write_text(BASIC)
    return tmp_path


def _statuses(res: B.BuildResult) -> dict[str, str]:
    return {s.name: s.status for s in res.stages}


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


# --- config -------------------------------------------------------------------------------------------


def test_config_paths_resolve_against_the_file(project: Path) -> None:
    cfg = B.load_config(project / "llmpack.toml")
    assert cfg.source.path == str(project / "src-model") and cfg.source.is_local
    assert cfg.quantize.out == project / "build/model"
    assert cfg.quantize.recipe.method.value == "int8"
    assert cfg.quantize.recipe.max_shard_size == 10**9 and cfg.quantize.recipe.ignore == ("lm_head",)
    assert cfg.measure is not None and cfg.measure.gates == {"max_ppl_increase_pct": 2.0}
    assert cfg.measure.report == project / "build/report.json"
    assert cfg.pack is not None and cfg.pack.out == project / "build/image"
    assert dict(cfg.pack.options) == {"name": "demo", "tag": "v1"}


@pytest.mark.parametrize(
    "toml, message",
    [
        ('[source]\npath = "src-model"\n[quantize]\nmethd = "int8"\n', "[quantize] unknown key 'methd'"),
        ('[source]\npath = "src-model"\n[quantize]\n', "[quantize] method is missing"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "int4"\n', "unknown method 'int4'"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "bf16"\n[packing]\n', "unknown section [packing]"),
        ('[quantize]\nmethod = "bf16"\n', "section [source] is missing"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "bf16"\nmax_shard_size = true\n', "max_shard_size"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "int8"\nbudget = "two"\n', "budget = 'two'"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "bf16"\n[measure]\nmin_top1 = "x"\n', "min_top1"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "bf16"\n[measure]\nbatch_sizes = [0]\n', "batch_sizes"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "bf16"\n[measure]\ndevice = "tpu"\n', "device"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "bf16"\n[measure]\ntext = "nope.txt"\n', "nope.txt"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "bf16"\n[pack]\nruntime = 3\n', "runtime = 3"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "bf16"\nout = "src-model"\n', "out is the source"),
        ('[source]\npath = "src-model"\n[quantize]\nmethod = "bf16"\nbudget = 2\n', "apply to int8 methods"),
        ('[source\n', "not valid TOML"),
    ],
)
def test_config_errors_name_section_and_key(project: Path, toml: str, message: str) -> None:
    (project / "llmpack.toml").write_text(toml)
    with pytest.raises(ConfigError) as e:
        B.load_config(project / "llmpack.toml")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_config_missing_file_and_missing_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        B.load_config(tmp_path / "llmpack.toml")
    with pytest.raises(SourceNotFoundError, match="'./missing'"):
        B.load_config({"source": {"path": "./missing"}, "quantize": {"method": "bf16"}}, base_dir=tmp_path)


def test_config_hub_id_budget_percent_and_disabled_sections(tmp_path: Path) -> None:
    cfg = B.load_config({"source": {"path": "HuggingFaceTB/SmolLM2-135M"},
                         "quantize": {"method": "int8", "budget": "1.5%", "out": "m"},
                         "measure": {"enabled": False}, "pack": {"enabled": False}}, base_dir=tmp_path)
    assert not cfg.source.is_local and cfg.source.path == "HuggingFaceTB/SmolLM2-135M"
    assert cfg.quantize.recipe.max_ppl_increase == 1.5
    assert cfg.measure is None and cfg.pack is None


# --- caching ------------------------------------------------------------------------------------------


def test_second_run_is_up_to_date_and_runs_nothing(project: Path, fakes: Fakes) -> None:
    cfg = project / "llmpack.toml"
    res = llmpack.build(cfg)
    assert _statuses(res) == {"quantize": "built", "measure": "built", "pack": "built"}
    assert fakes.calls == ["quantize", "measure", "pack"] and res.changed and res.passed
    assert (project / "build/report.build.json").is_file() and (project / "build/image" / B.PACK_RECORD).is_file()

    fakes.calls.clear()
    before = _snapshot(project)
    res = llmpack.build(cfg)
    assert _statuses(res) == {"quantize": "up to date", "measure": "up to date", "pack": "up to date"}
    assert fakes.calls == [] and not res.changed
    assert _snapshot(project) == before
    assert res.stages[2].details["manifest_digest"] == "sha256:" + "ab" * 32
    assert res.stages[2].details["tag"] == "v1" and res.stages[2].details["oci"] == str(project / "build/image/oci")
    assert "up to date" in res.human()


def test_check_reports_drift_and_writes_nothing(project: Path, fakes: Fakes) -> None:
    cfg = project / "llmpack.toml"
    res = B.build(cfg, check=True)
    assert _statuses(res) == {"quantize": "would build", "measure": "would build", "pack": "would build"}
    assert res.stages[0].reason == "no output yet"
    assert not (project / "build").exists() and fakes.calls == []

    B.build(cfg)
    fakes.calls.clear()
    assert not B.build(cfg, check=True).changed

    (project / "llmpack.toml").write_text(BASIC.replace('method = "int8"', 'method = "int8-weight-only"'))
    before = _snapshot(project)
    res = B.build(cfg, check=True)
    assert _statuses(res) == {"quantize": "would build", "measure": "would build", "pack": "would build"}
    assert "recipe changed" in res.stages[0].reason and "int8-weight-only" in res.stages[0].reason
    assert _snapshot(project) == before and fakes.calls == []


@pytest.mark.parametrize("change", ["source", "version", "file", "recipe"])
def test_quantize_reruns_when_an_input_changes(project: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch,
                                               change: str) -> None:
    cfg = project / "llmpack.toml"
    B.build(cfg)
    fakes.calls.clear()
    if change == "source":
        fakes.fingerprint = "fp-2"
        reason = "source changed"
    elif change == "version":
        monkeypatch.setattr(llmpack._version, "__version__", "9.9.9")
        reason = "llmpack version changed"
    elif change == "file":
        (project / "build/model/model.safetensors").unlink()
        reason = "model.safetensors is missing"
    else:
        (project / "llmpack.toml").write_text(BASIC.replace('"1GB"', '"2GB"'))
        reason = "recipe changed: max_shard_size"
    res = B.build(cfg)
    assert res.stages[0].status == "built" and reason in res.stages[0].reason
    # a new model means a new measurement and a new pack
    assert fakes.calls == ["quantize", "measure", "pack"]
    assert not B.build(cfg).changed


def test_measure_settings_change_remeasures_only(project: Path, fakes: Fakes) -> None:
    cfg = project / "llmpack.toml"
    B.build(cfg)
    fakes.calls.clear()
    (project / "llmpack.toml").write_text(BASIC.replace("quick = true", "quick = false"))
    res = B.build(cfg)
    assert _statuses(res) == {"quantize": "up to date", "measure": "built", "pack": "up to date"}
    assert "quick" in res.stages[1].reason and fakes.calls == ["measure"]


def test_pack_options_change_repacks_only(project: Path, fakes: Fakes) -> None:
    cfg = project / "llmpack.toml"
    B.build(cfg)
    fakes.calls.clear()
    (project / "llmpack.toml").write_text(BASIC.replace('tag = "v1"', 'tag = "v2"'))
    res = B.build(cfg)
    assert _statuses(res) == {"quantize": "up to date", "measure": "up to date", "pack": "built"}
    assert fakes.calls == ["pack"]


def test_gates_evaluate_from_recorded_metrics() -> None:
    metrics = {"max_ppl_increase_pct": {"value": 1.5, "op": "<="}, "min_top1": {"value": 0.97, "op": ">="},
               "min_cosine": {"value": None, "op": ">="}, "max_kl": {"value": float("nan"), "op": "<="}}
    assert B._evaluate_gates(metrics, {"max_ppl_increase_pct": 2, "min_top1": 0.9}) == []
    assert B._evaluate_gates(metrics, {"max_ppl_increase_pct": 1}) == ["max_ppl_increase_pct: 1.5 <= 1 FAILED"]
    assert B._evaluate_gates(metrics, {"min_top1": 0.99}) == ["min_top1: 0.97 >= 0.99 FAILED"]
    assert B._evaluate_gates(metrics, {"min_cosine": 0.99}) == []  # not applicable: passes
    assert B._evaluate_gates(metrics, {"max_kl": 1.0}) == ["max_kl: nan <= 1 FAILED"]
    assert "no such metric" in B._evaluate_gates({}, {"min_speedup": 1.0})[0]


def test_pack_output_tampering_is_detected(project: Path, fakes: Fakes) -> None:
    B.build(project / "llmpack.toml")
    fakes.calls.clear()
    (project / "build/image/oci/index.json").write_text('{"manifests": []}')
    res = B.build(project / "llmpack.toml")
    assert res.stages[2].status == "built" and "index.json" in res.stages[2].reason and fakes.calls == ["pack"]


def test_edited_report_is_remeasured(project: Path, fakes: Fakes) -> None:
    cfg = project / "llmpack.toml"
    B.build(cfg)
    fakes.calls.clear()
    (project / "build/report.json").write_text('{"ppl_increase_pct": 0.0}')
    res = B.build(cfg)
    assert res.stages[1].status == "built" and "modified" in res.stages[1].reason


def test_force_rebuilds_everything(project: Path, fakes: Fakes) -> None:
    B.build(project / "llmpack.toml")
    fakes.calls.clear()
    B.build(project / "llmpack.toml", force=True)
    assert fakes.calls == ["quantize", "measure", "pack"]


def test_foreign_output_dir_is_not_overwritten(project: Path, fakes: Fakes) -> None:
    (project / "build/model").mkdir(parents=True)
    (project / "build/model/precious.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not an llmpack model dir"):
        B.build(project / "llmpack.toml")
    assert (project / "build/model/precious.txt").read_text() == "mine"


# --- gates --------------------------------------------------------------------------------------------


def test_failed_gate_stops_before_pack_and_names_the_gate(project: Path, fakes: Fakes) -> None:
    fakes.ppl_increase = 5.0
    with pytest.raises(GateFailedError, match="max_ppl_increase_pct") as e:
        B.build(project / "llmpack.toml")
    assert e.value.exit_code == 1
    assert "pack" not in fakes.calls and not (project / "build/image").exists()
    # cached report: the gate is evaluated again, and fails again, without measuring again
    fakes.calls.clear()
    res = B.build(project / "llmpack.toml", raise_on_gate=False)
    assert fakes.calls == [] and res.failed_gates and _statuses(res)["pack"] == "skipped"
    # loosening the gate passes on the cached report and packs
    (project / "llmpack.toml").write_text(BASIC.replace("max_ppl_increase = 2", "max_ppl_increase = 10"))
    res = B.build(project / "llmpack.toml")
    assert res.passed and fakes.calls == ["pack"]
    assert _statuses(res)["measure"] == "up to date"


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_json_summary_and_exit_codes(project: Path, fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(project / "llmpack.toml")
    assert main(["build", "-c", cfg, "--check"]) == 1
    capsys.readouterr()
    assert main(["build", "-c", cfg, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["changed"] and out["passed"] and [s["status"] for s in out["stages"]] == ["built"] * 3
    assert out["llmpack_version"] == llmpack.__version__
    assert main(["build", "-c", cfg, "--check", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert not out["changed"] and [s["status"] for s in out["stages"]] == ["up to date"] * 3
    assert main(["build", "-c", cfg]) == 0
    human = capsys.readouterr().out
    assert human.count("up to date") >= 3 and "build: ok" in human


def test_cli_gate_failure_exit_1(project: Path, fakes: Fakes, capsys: pytest.CaptureFixture[str]) -> None:
    fakes.ppl_increase = 3.0
    assert main(["build", "-c", str(project / "llmpack.toml"), "--format", "json"]) == 1
    cap = capsys.readouterr()
    assert json.loads(cap.out)["failed_gates"] == ["max_ppl_increase_pct: 3 <= 2 FAILED"]
    assert cap.err.startswith("llmpack: error: gate failed: max_ppl_increase_pct")


def test_cli_bad_config_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "llmpack.toml").write_text(textwrap.dedent("""
        [source]
        path = "nowhere/at/all"
        [quantize]
        method = "int8"
    """))
    assert main(["build", "-c", str(tmp_path / "llmpack.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[source] path 'nowhere/at/all' does not exist" in err


def test_llmpack_build_is_callable_after_submodule_import(project: Path, fakes: Fakes) -> None:
    import importlib

    importlib.import_module("llmpack.build")
    assert callable(llmpack.build)
    assert isinstance(llmpack.build(project / "llmpack.toml"), B.BuildResult)


# --- the fingerprint build computes without torch equals the quantizer's -------------------------------


def test_fast_fingerprint_matches_the_quantizers(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    from llmpack.checkpoint.sources import open_source
    from llmpack.testing import tiny_model

    sharded = tmp_path / "sharded"
    tiny_model("llama-untied").save_pretrained(sharded, max_shard_size="100KB")
    (sharded / "tokenizer_config.json").write_text("{}")
    assert (sharded / "model.safetensors.index.json").is_file()
    for d in (tiny_dirs["gpt2"], tiny_dirs["bert"], sharded):
        fast = B._source_fingerprint(B.SourceSection(str(d)))
        assert fast == open_source(d).fingerprint(), d
    before = B._source_fingerprint(B.SourceSection(str(sharded)))
    (sharded / "tokenizer_config.json").write_text('{"x": 1}')
    assert B._source_fingerprint(B.SourceSection(str(sharded))) != before


# --- the real pipeline ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _tiny_source(root: Path) -> Path:
    from llmpack.testing import byte_tokenizer, tiny_model

    src = root / "models" / "tiny"
    tiny_model("llama").save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    return src


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "LLMPACK_PROGRESS": "0"}


def test_real_pipeline_on_a_tiny_model(tmp_path: Path) -> None:
    """quantize + pack for real (measure is covered by the SmolLM2 test): built, then up to date, then drift."""
    _tiny_source(tmp_path)
    (tmp_path / "llmpack.toml").write_text(textwrap.dedent("""
        [source]
        path = "models/tiny"
        [quantize]
        method = "bf16"
        out = "build/model"
        [pack]
        name = "tiny"
        tag = "bf16"
    """))
    res = B.build(tmp_path / "llmpack.toml")
    assert _statuses(res) == {"quantize": "built", "pack": "built"}
    from llmpack.checkpoint.manifest import read_manifest
    from llmpack.verify import verify

    assert read_manifest(tmp_path / "build/model").recipe["method"] == "bf16"
    verify(tmp_path / "build/model")
    index = json.loads((tmp_path / "build/image/oci/index.json").read_text())
    assert index["manifests"][0]["digest"] == res.stages[1].details["manifest_digest"]

    before = _snapshot(tmp_path / "build")
    res = B.build(tmp_path / "llmpack.toml")
    assert _statuses(res) == {"quantize": "up to date", "pack": "up to date"}
    assert _snapshot(tmp_path / "build") == before

    # the real quantizer records exactly what build compares: a recipe change is drift, not "up to date"
    (tmp_path / "llmpack.toml").write_text((tmp_path / "llmpack.toml").read_text().replace('"bf16"\nout', '"fp16"\nout'))
    res = B.build(tmp_path / "llmpack.toml", check=True)
    assert _statuses(res) == {"quantize": "would build", "pack": "would build"}
    assert "method 'bf16' -> 'fp16'" in res.stages[0].reason


@pytest.mark.tools
def test_ci_example_steps_against_a_local_registry(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Runs examples/ci/prebuild.sh — the script both CI examples call — against docker-registry on 127.0.0.1:
    llmpack build, skopeo push of the OCI layout (same manifest digest in the registry), and, where buildah
    and busybox are installed, buildah bud of the generated Dockerfile on a local base image + push."""
    import shutil
    import subprocess

    import yaml

    for name in ("github-actions.yml", "gitlab-ci.yml"):
        text = (ROOT / "examples/ci" / name).read_text()
        yaml.safe_load(text)
        assert "ci/prebuild.sh" in text and "llmpack build -c llmpack.toml --check" in text
    reg = request.getfixturevalue("registry")
    env = _env()
    with_buildah = shutil.which("buildah") is not None and shutil.which("busybox") is not None
    if with_buildah:
        env.update(request.getfixturevalue("podman_env"))
        env["PYTHONPATH"] = _env()["PYTHONPATH"]
        env["BASE_IMAGE"] = "localhost/base:latest"
        env["BUILDAH_ARGS"] = "--ulimit nofile=1024:1024 --ulimit nproc=1024:1024"
    _tiny_source(tmp_path)
    (tmp_path / "llmpack.toml").write_text(textwrap.dedent("""
        [source]
        path = "models/tiny"
        [quantize]
        method = "bf16"
        [pack]
        name = "tiny-ci"
        tag = "v1"
    """))
    env.update(REGISTRY=reg, TLS_VERIFY="false", PYTHON=sys.executable)
    script = str(ROOT / "examples/ci/prebuild.sh")
    proc = subprocess.run(["bash", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "build-summary.json").read_text())
    digest = summary["stages"][-1]["details"]["manifest_digest"]
    assert f"pushed {reg}/tiny-ci:v1@{digest}" in proc.stdout

    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{reg}/tiny-ci:v1"],
                         capture_output=True, timeout=60)
    assert raw.returncode == 0, raw.stderr
    assert "sha256:" + __import__("hashlib").sha256(raw.stdout).hexdigest() == digest
    if with_buildah:
        served = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{reg}/tiny-ci:v1-serve"],
                                capture_output=True, text=True, timeout=60)
        assert served.returncode == 0, served.stderr
        assert json.loads(served.stdout)["Labels"]["org.opencontainers.image.title"] == "tiny-ci"

    # second run: everything up to date, and the push is a no-op with the same digest
    proc = subprocess.run(["bash", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "build-summary.json").read_text())
    assert [s["status"] for s in again["stages"]] == ["up to date", "up to date"]
    assert again["stages"][-1]["details"]["manifest_digest"] == digest


# --- the build package: history for rollback, gates defined once ---------------------------------------


def test_history_records_each_new_digest_per_tag_for_rollback(project: Path, fakes: Fakes,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    digests = iter(["sha256:" + c * 64 for c in "123"])

    def run_pack(cfg: B.BuildConfig, quiet: bool) -> dict[str, Any]:
        d = fakes.run_pack(cfg, quiet)
        d["manifest_digest"] = next(digests)
        (cfg.pack.out / "oci" / "index.json").write_text(json.dumps({"manifests": [{"digest": d["manifest_digest"]}]}))
        return d

    monkeypatch.setattr(B, "_run_pack", run_pack)
    cfg = project / "llmpack.toml"
    B.build(cfg)
    before = _snapshot(project)
    B.build(cfg)  # up to date: the history is not touched
    assert _snapshot(project) == before
    fakes.fingerprint = "fp-2"  # a new model -> a new image digest for the same tag
    res = B.build(cfg)
    assert res.stages[2].details["previous_digest"] == "sha256:" + "1" * 64
    hist = B.history(cfg)
    assert list(hist) == ["v1"] and [e["digest"] for e in hist["v1"]] == ["sha256:" + c * 64 for c in "12"]
    assert all(e["reference"] == "demo:v1" and e["time"].endswith("Z") and e["model"] for e in hist["v1"])
    raw = json.loads((project / "build/image" / B.HISTORY_FILE).read_text())
    assert raw["version"] == 1 and not list((project / "build/image").glob("*.tmp"))
    assert main(["build", "-c", str(cfg), "--history"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("v1  ") and lines[-1].endswith("sha256:" + "2" * 64 + "  (current)")
    assert main(["build", "-c", str(cfg), "--history", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"]["v1"][0]["digest"] == "sha256:" + "1" * 64
    with pytest.raises(ConfigError, match=r"no \[pack\] section"):
        B.history(B.load_config({"source": {"path": "org/m"}, "quantize": {"method": "bf16"}}, base_dir=project))


def test_gates_are_defined_once_and_every_surface_uses_the_table() -> None:
    import argparse

    from llmpack.commands.measure import add_gate_arguments
    from llmpack.measure.api import gates_from_args
    from llmpack.measure.gates import GATE_TABLE
    from llmpack.measure.report import GATES

    assert list(GATES) == [g.name for g in GATE_TABLE]
    assert {k: v for k, v in B.GATE_KEYS.items()} == {g.option: g.name for g in GATE_TABLE}
    assert set(B.GATE_KEYS) <= set(B.MeasureSection.KEYS)
    p = argparse.ArgumentParser()
    add_gate_arguments(p)
    args = p.parse_args([x for g in GATE_TABLE for x in (g.flag, "0.5")])
    assert gates_from_args(args) == {g.name: 0.5 for g in GATE_TABLE}
    cfg = B.load_config({"source": {"path": "org/m"}, "quantize": {"method": "bf16"},
                         "measure": {g.option: 0.5 for g in GATE_TABLE}}, base_dir="/r")
    assert cfg.measure is not None and dict(cfg.measure.gates) == gates_from_args(args)


def test_real_build_pins_deploy_files_to_the_current_digest_and_keeps_the_previous(tmp_path: Path) -> None:
    """Two real builds of one tag (bf16, then fp16): each pack's deploy files pin that build's digest; the
    history lists both, oldest first, so the previous one is the rollback target."""
    _tiny_source(tmp_path)
    toml = textwrap.dedent("""
        [source]
        path = "models/tiny"
        [quantize]
        method = "bf16"
        out = "build/model"
        [pack]
        name = "tiny"
        tag = "prod"
        runtime = "vllm"
        registry = "registry.example/ml"
    """)
    (tmp_path / "llmpack.toml").write_text(toml)
    first = B.build(tmp_path / "llmpack.toml").stages[1].details["manifest_digest"]
    k8s = tmp_path / "build/image/deploy/k8s/deployment.yaml"
    assert f"registry.example/ml/tiny:prod@{first}" in k8s.read_text()
    (tmp_path / "llmpack.toml").write_text(toml.replace('"bf16"', '"fp16"'))
    res = B.build(tmp_path / "llmpack.toml")
    second = res.stages[1].details["manifest_digest"]
    assert second != first and res.stages[1].details["previous_digest"] == first
    assert f"@{second}" in k8s.read_text() and first not in k8s.read_text()
    assert first not in (tmp_path / "build/image/deploy/compose.yaml").read_text()
    assert [e["digest"] for e in B.history(tmp_path / "llmpack.toml", tag="prod")["prod"]] == [first, second]
