"""Deploy files written by ``pack``: compose.yaml and Kubernetes manifests, validated offline.

* Kubernetes: ``kubernetes-validate`` (the API's OpenAPI schemas, strict: unknown fields fail) — the image-volume
  Deployment against 1.33 (where ``volumes[].image`` exists) and, to show the validator bites, not against 1.30;
  the init-copy variant against 1.25. KServe's CRD has no schema here: checked by structure.
* Compose: the compose-spec JSON schema vendored in ``check-jsonschema`` (``jsonschema``), and
  ``podman-compose config`` where installed.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

from llmpack.errors import BadInputError
from llmpack.pack import pack
from llmpack.pack.deploy import DeploySpec, render_deploy, to_yaml
from llmpack.pack.dockerfile import VLLM_IMAGE

PINNED = re.compile(r"@sha256:[0-9a-f]{64}$")
SERVER = "ghcr.io/example/llmpack-serve:0.1.0@sha256:" + "c" * 64


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _images(obj: Any) -> Iterator[str]:
    """Every image reference in a manifest (container images, image volumes, oci:// storage URIs)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("image", "reference") and isinstance(v, str):
                yield v
            elif k in ("storageUri", "source") and isinstance(v, str) and ("oci://" in v or "@sha256:" in v):
                yield v.removeprefix("oci://")
            else:
                yield from _images(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _images(v)


def _compose_schema() -> dict[str, Any]:
    path = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def packed(packable_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One pack per runtime (vllm, vllm-cpu with a pinned base, llmpack with and without a server image)."""
    root = tmp_path_factory.mktemp("deploy")
    cases = {"vllm": {"runtime": "vllm"},
             "vllm-cpu": {"runtime": "vllm-cpu",
                          "base_image": "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.11.0@sha256:" + "d" * 64},
             "llmpack": {"runtime": "llmpack", "server_image": SERVER},
             "llmpack-build": {"runtime": "llmpack"},
             "none": {"runtime": "none", "server_image": SERVER}}
    return {k: pack(packable_model, root / k, name="tiny", tag="v1", registry="registry.example:5000/ml",
                    quiet=True, **kw) for k, kw in cases.items()}


@pytest.mark.parametrize("case", ["vllm", "vllm-cpu", "llmpack", "none"])
def test_k8s_manifests_validate_and_pin_every_image(packed: dict[str, Any], case: str) -> None:
    res = packed[case]
    assert sorted(res.deploy) == ["compose.yaml", "k8s/deployment-initcopy.yaml", "k8s/deployment.yaml",
                                  "k8s/inferenceservice.yaml"]
    model_ref = f"registry.example:5000/ml/tiny:v1@{res.manifest_digest}"
    for rel, path in res.deploy.items():
        docs = _docs(Path(path).read_text())
        images = [i for d in docs for i in _images(d)]
        assert images and all(PINNED.search(i) for i in images), (rel, images)
        assert model_ref in images, rel
    image_docs = _docs(Path(res.deploy["k8s/deployment.yaml"]).read_text())
    init_docs = _docs(Path(res.deploy["k8s/deployment-initcopy.yaml"]).read_text())
    for d in image_docs:
        kubernetes_validate.validate(d, "1.33.0", strict=True)
    for d in init_docs:
        kubernetes_validate.validate(d, "1.25.0", strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):  # image volumes are not in 1.30's API
        kubernetes_validate.validate(image_docs[0], "1.30.0", strict=True)
    dep, svc = image_docs
    assert (dep["kind"], svc["kind"]) == ("Deployment", "Service")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    gpu = case == "vllm"
    assert ("nvidia.com/gpu" in c["resources"]["limits"]) is gpu
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == ("/ready" if case in ("llmpack", "none") else "/health")
    assert pod["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert {"name": "model", "image": {"reference": model_ref, "pullPolicy": "IfNotPresent"}} in pod["volumes"]
    assert c["volumeMounts"][0] == {"name": "model", "mountPath": "/models/tiny", "readOnly": True,
                                    "subPath": "models/tiny"}
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    init = init_docs[0]["spec"]["template"]["spec"]
    assert init["initContainers"][0]["image"] == model_ref
    assert {"name": "model", "emptyDir": {"sizeLimit": "2Gi"}} in init["volumes"]
    isvc = _docs(Path(res.deploy["k8s/inferenceservice.yaml"]).read_text())[0]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1" and isvc["kind"] == "InferenceService"
    model = isvc["spec"]["predictor"]["model"]
    assert model["storageUri"] == f"oci://{model_ref}" and "/mnt/models/tiny" in model["args"]
    if case.startswith("vllm"):
        assert c["image"] == (VLLM_IMAGE if case == "vllm" else
                              "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.11.0@sha256:" + "d" * 64)
        assert "command" not in c and c["args"][:3] == ["/models/tiny", "--served-model-name", "tiny"]
    else:
        assert c["image"] == SERVER and c["command"] == ["llmpack", "serve"]


@pytest.mark.parametrize("case", ["vllm", "vllm-cpu", "llmpack", "llmpack-build", "none"])
def test_compose_file_matches_the_compose_spec(packed: dict[str, Any], case: str, tmp_path: Path) -> None:
    res = packed[case]
    path = Path(res.deploy["compose.yaml"])
    data = yaml.safe_load(path.read_text())
    jsonschema.validate(data, _compose_schema())
    svc = data["services"]["tiny"]
    assert svc["restart"] == "unless-stopped" and svc["stop_signal"] == "SIGTERM"
    assert svc["healthcheck"]["test"][0] == "CMD" and "/health" in svc["healthcheck"]["test"][-1]
    assert set(svc["deploy"]["resources"]["limits"]) == {"cpus", "memory"}
    assert ("reservations" in svc["deploy"]["resources"]) is (case == "vllm")
    if case == "llmpack-build":  # no pinned server image: the Dockerfile is built, the model baked in
        assert svc["build"] == {"context": "..", "dockerfile": "Dockerfile"} and "volumes" not in svc
        assert not [k for k in res.deploy if k.startswith("k8s/")]
        assert any("--server-image" in n for n in res.notes)
    else:
        assert PINNED.search(svc["image"])
        assert svc["volumes"] == [{"type": "image", "source": f"registry.example:5000/ml/tiny:v1@{res.manifest_digest}",
                                   "target": "/models/tiny", "read_only": True, "image": {"subpath": "models/tiny"}}]
    bad = dict(data, services={"tiny": dict(svc, restart_policy="always")})
    with pytest.raises(jsonschema.ValidationError):  # the schema refuses unknown keys
        jsonschema.validate(bad, _compose_schema())
    if case not in ("vllm", "llmpack-build"):  # both compose shapes (image mount, build); ~4 s each
        return
    # podman-compose (dev extra) parses and normalises it too
    podman_compose = Path(sys.executable).parent / "podman-compose"
    proc = subprocess.run([str(podman_compose) if podman_compose.exists() else "podman-compose", "-f", str(path),
                           "config"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    normalised = yaml.safe_load(proc.stdout)["services"]["tiny"]
    assert normalised["restart"] == "unless-stopped" and normalised["healthcheck"]["retries"] == 3


def test_repack_with_a_new_model_repins_and_drops_stale_files(model_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "b"
    first = pack(model_copy, out, name="tiny", tag="v1", runtime="llmpack", server_image=SERVER, quiet=True)
    assert (out / "deploy" / "k8s" / "deployment.yaml").is_file()
    # a new image for the same tag (here: another creation time; in practice a new model)
    second = pack(model_copy, out, name="tiny", tag="v1", runtime="llmpack", source_date_epoch=1, quiet=True)
    assert second.manifest_digest != first.manifest_digest
    text = (out / "deploy" / "compose.yaml").read_text()
    assert first.manifest_digest not in text and "build:" in text
    assert not (out / "deploy" / "k8s" / "deployment.yaml").exists()  # no server image: no stale k8s files
    assert not list((out / "deploy").rglob("*.tmp*"))


def test_unpinned_server_image_is_refused(packable_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="not pinned by digest"):
        pack(packable_model, tmp_path / "b", runtime="llmpack", server_image="ghcr.io/x/serve:latest", quiet=True)
    with pytest.raises(BadInputError, match="not pinned by digest"):
        DeploySpec("m", "r/m", "v1", "sha256:" + "a" * 64, "vllm", 1, server_image="vllm/vllm-openai:v0.11.0")
    # vllm-cpu's default base carries no digest: no Kubernetes files until one is given
    files = render_deploy(DeploySpec("m", "r/m", "v1", "sha256:" + "a" * 64, "vllm-cpu", 1))
    assert sorted(files) == ["compose.yaml"]


def test_yaml_writer_round_trips_through_a_yaml_parser() -> None:
    data = {"a": [1, {"b": "x: y", "c": ["yes", "no", None, True]}], "on": {}, "8": [], "k": 'quote " \\ \n'}
    assert yaml.safe_load(to_yaml(data)) == data
