"""Deploy files written next to the Dockerfile: ``compose.yaml`` and Kubernetes manifests.

``<out>/deploy/``::

    compose.yaml                    the server, healthcheck, restart policy, CPU/memory limits (GPU reservation for
                                    CUDA runtimes); the model mounted from the data-only image, or baked in (build)
    k8s/deployment.yaml             Deployment + Service; the model as an image volume (Kubernetes >= 1.33)
    k8s/deployment-initcopy.yaml    the same for older clusters: an init container copies the model into an emptyDir
    k8s/inferenceservice.yaml       a KServe InferenceService (``storageUri: oci://…``)

Every image reference is pinned by digest: the data-only model image by the manifest digest ``pack``
just wrote; the server image by the runtime's pinned base (vLLM) or ``server_image``. Where no pinned server
image is known (the ``llmpack`` runtime before its image is built and pushed) the Kubernetes files are not
written and ``compose.yaml`` builds the image from the Dockerfile (model baked in); ``notes`` says so.

The files are plain YAML written by :func:`to_yaml` (no YAML library needed at pack time).

Example:
    >>> files = render_deploy(DeploySpec(name="m", repository="reg.example/m", tag="v1",
    ...                                  digest="sha256:" + "a" * 64, runtime="vllm", model_bytes=2**30))
    >>> sorted(files)
    ['compose.yaml', 'k8s/deployment-initcopy.yaml', 'k8s/deployment.yaml', 'k8s/inferenceservice.yaml']
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Mapping

from llmpack._env import ENV_MODEL
from llmpack.constants import MODELS_ROOT
from llmpack.errors import BadInputError
from llmpack.pack.dockerfile import HEALTH_PATH, NONROOT_USER, READY_PATH, RUNTIMES, runtime_spec

__all__ = ["DeploySpec", "render_deploy", "to_yaml", "is_pinned", "DEPLOY_DIR"]

DEPLOY_DIR = "deploy"
_PINNED = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
_GIB = 2**30
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_./-]+$")


def is_pinned(reference: str) -> bool:
    """Whether an image reference names a digest (``repo[:tag]@sha256:<64 hex>``).

    Example:
        >>> is_pinned("vllm/vllm-openai:v0.11.0"), is_pinned("r/m@sha256:" + "0" * 64)
        (False, True)
    """
    return bool(_PINNED.match(reference))


@dataclasses.dataclass(frozen=True)
class DeploySpec:
    """What the deploy files describe.

    Attributes:
        name: model name (``/models/<name>``; Kubernetes object names).
        repository: where the data-only image is pushed (``registry/name``).
        tag: the image tag (kept in the reference for humans; the digest decides).
        digest: the data-only image's manifest (or index) digest.
        runtime: a runtime other than ``none`` serves; ``none`` still gets manifests for ``llmpack``.
        model_bytes: size of the model files (sizes memory requests).
        server_image: the serving image, pinned by digest (default: the runtime's base when it is the server
            and pinned).
        base_image: the Dockerfile's ``BASE_IMAGE`` when the user chose one.

    Example:
        >>> DeploySpec("m", "r/m", "v1", "sha256:" + "a" * 64, "vllm", 1).model_ref
        'r/m:v1@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    """

    name: str
    repository: str
    tag: str
    digest: str
    runtime: str
    model_bytes: int
    server_image: str | None = None
    base_image: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", self.digest):
            raise BadInputError(f"deploy: digest {self.digest!r} is not sha256:<64 hex>")
        if self.server_image is not None and not is_pinned(self.server_image):
            raise BadInputError(f"server image {self.server_image!r} is not pinned by digest: use "
                                "REPOSITORY[:TAG]@sha256:<digest> (`skopeo inspect docker://IMAGE` prints it)")

    @property
    def model_ref(self) -> str:
        """The data-only image, pinned: ``repository:tag@digest``."""
        return f"{self.repository}:{self.tag}@{self.digest}"

    @property
    def serving(self) -> str:
        """The runtime that serves (``llmpack`` for a data-only pack)."""
        return "llmpack" if self.runtime == "none" else self.runtime

    def server(self) -> str | None:
        """The pinned server image, or ``None`` when none is known yet."""
        if self.server_image:
            return self.server_image
        rt = runtime_spec(self.serving)
        base = self.base_image or rt.base_image
        return base if rt.server_is_base and is_pinned(base) else None


def _key(k: str) -> str:
    return k if _PLAIN_KEY.match(k) and not k[0].isdigit() and k not in ("y", "n", "yes", "no", "on", "off") else \
        json.dumps(k)


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return json.dumps(v)
    return json.dumps(str(v))


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Block-style YAML of dicts, lists and scalars; strings double-quoted (JSON escapes are valid YAML).

    Example:
        >>> print(to_yaml({"a": [1, {"b": "x"}], "c": {}}), end="")
        a:
          - 1
          - b: "x"
        c: {}
    """
    pad = " " * indent
    lines: list[str] = []
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(v, (Mapping, list)) and v:
                lines.append(f"{pad}{_key(str(k))}:")
                lines.append(to_yaml(v, indent + 2).rstrip("\n"))
            elif isinstance(v, (Mapping, list)):
                lines.append(f"{pad}{_key(str(k))}: {'{}' if isinstance(v, Mapping) else '[]'}")
            else:
                lines.append(f"{pad}{_key(str(k))}: {_scalar(v)}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (Mapping, list)) and v:
                inner = to_yaml(v, indent + 2).rstrip("\n").splitlines()
                lines.append(f"{pad}- {inner[0].lstrip()}")
                lines.extend(inner[1:])
            else:
                lines.append(f"{pad}- {_scalar(v) if not isinstance(v, (Mapping, list)) else '{}'}")
    else:
        lines.append(pad + _scalar(obj))
    return "\n".join(lines) + "\n"


def _memory_gib(model_bytes: int, gpu: bool) -> int:
    """Memory request: the weights once (mmap'd, resident once touched), a quarter for activations and the
    KV cache on CPU, plus 1 GiB for the interpreter and libraries; on GPU runtimes host memory stages the weights."""
    return max(2, math.ceil(model_bytes * (1.0 if gpu else 1.25) / _GIB) + 1)


def _probe_cmd(python: str, port: int) -> list[str]:
    return [python, "-c", f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{HEALTH_PATH}', "
            "timeout=4)"]


def _labels(spec: DeploySpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/version": spec.tag, "app.kubernetes.io/managed-by": "llmpack"}


def _container(spec: DeploySpec, server: str, model_path: str) -> dict[str, Any]:
    rt = runtime_spec(spec.serving)
    mem = _memory_gib(spec.model_bytes, rt.gpu)
    limits: dict[str, Any] = {"cpu": "4", "memory": f"{mem}Gi"}
    if rt.gpu:
        limits["nvidia.com/gpu"] = 1
    ready = READY_PATH if rt.name == "llmpack" else HEALTH_PATH  # vLLM's /health answers once the engine is up
    c: dict[str, Any] = {"name": "server", "image": server, "imagePullPolicy": "IfNotPresent"}
    if rt.command:
        c["command"] = list(rt.command)
    c["args"] = rt.server_args(model_path, spec.name)
    c.update({
        "ports": [{"name": "http", "containerPort": rt.port, "protocol": "TCP"}],
        "env": [{"name": ENV_MODEL, "value": model_path}, {"name": "HOME", "value": "/tmp"},
                {"name": "HF_HOME", "value": "/tmp/hf"}],
        "startupProbe": {"httpGet": {"path": HEALTH_PATH, "port": "http"}, "periodSeconds": 10,
                         "failureThreshold": max(6, rt.start_period // 10)},
        "livenessProbe": {"httpGet": {"path": HEALTH_PATH, "port": "http"}, "periodSeconds": 15, "timeoutSeconds": 5,
                          "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": ready, "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 3,
                           "failureThreshold": 3},
        "resources": {"requests": {"cpu": "2", "memory": f"{mem}Gi"}, "limits": limits},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "model", "mountPath": model_path, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    })
    if rt.gpu:
        c["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    return c


def _pod(spec: DeploySpec, server: str, *, init_copy: bool) -> dict[str, Any]:
    model_path = f"{MODELS_ROOT}/{spec.name}"
    container = _container(spec, server, model_path)
    uid = int(NONROOT_USER.split(":")[0])
    volumes: list[dict[str, Any]] = []
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationGracePeriodSeconds": 60,
        "enableServiceLinks": False,
    }
    if init_copy:
        # The data-only image needs /bin/sh and cp for this variant (see the file's header).
        pod["initContainers"] = [{
            "name": "model-copy", "image": spec.model_ref, "imagePullPolicy": "IfNotPresent",
            "command": ["/bin/sh", "-c", f"cp -a {model_path}/. /model-copy/"],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}},
            "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": "model", "mountPath": "/model-copy"}],
        }]
        size = math.ceil(spec.model_bytes / _GIB) + 1
        volumes.append({"name": "model", "emptyDir": {"sizeLimit": f"{size}Gi"}})
    else:
        # Kubernetes >= 1.33 (ImageVolume): the image's /models/<name> mounted read-only, nothing copied.
        container["volumeMounts"][0]["subPath"] = model_path.lstrip("/")
        volumes.append({"name": "model", "image": {"reference": spec.model_ref, "pullPolicy": "IfNotPresent"}})
    volumes.append({"name": "tmp", "emptyDir": {}})
    if runtime_spec(spec.serving).gpu:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}})
    pod["containers"] = [container]
    pod["volumes"] = volumes
    return pod


def _deployment(spec: DeploySpec, server: str, *, init_copy: bool) -> dict[str, Any]:
    labels = _labels(spec)
    selector = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/component": "model-server"}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": spec.name, "labels": labels,
                     "annotations": {"io.llmpack.model.image": spec.model_ref}},
        "spec": {
            "replicas": 1, "revisionHistoryLimit": 10,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": labels, "annotations": {"io.llmpack.model.digest": spec.digest}},
                         "spec": _pod(spec, server, init_copy=init_copy)},
        },
    }


def _service(spec: DeploySpec) -> dict[str, Any]:
    port = runtime_spec(spec.serving).port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": spec.name, "labels": _labels(spec)},
            "spec": {"type": "ClusterIP",
                     "selector": {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/component": "model-server"},
                     "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]}}


def _inference_service(spec: DeploySpec, server: str) -> dict[str, Any]:
    """KServe: the modelcar mounts the image's ``/models`` at ``/mnt/models``; our container and args override the
    serving runtime's (the files are a Hugging Face directory, hence ``modelFormat: huggingface``)."""
    rt = runtime_spec(spec.serving)
    model_path = f"/mnt/models/{spec.name}"
    c = _container(spec, server, model_path)
    model: dict[str, Any] = {"modelFormat": {"name": "huggingface"}, "storageUri": f"oci://{spec.model_ref}",
                             "image": server}
    if rt.command:
        model["command"] = list(rt.command)
    model["args"] = rt.server_args(model_path, spec.name)
    model["env"] = [{"name": ENV_MODEL, "value": model_path}, *c["env"][1:]]
    model["ports"] = [{"name": "http1", "containerPort": rt.port, "protocol": "TCP"}]
    model["resources"] = c["resources"]
    model["securityContext"] = c["securityContext"]
    probes = {k: {**c[k], "httpGet": {**c[k]["httpGet"], "port": rt.port}} for k in ("livenessProbe", "readinessProbe")}
    model.update(probes)
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": spec.name, "labels": _labels(spec)},
            "spec": {"predictor": {"minReplicas": 1, "model": model}}}


def _compose(spec: DeploySpec, server: str | None) -> dict[str, Any]:
    rt = runtime_spec(spec.serving)
    model_path = f"{MODELS_ROOT}/{spec.name}"
    mem = _memory_gib(spec.model_bytes, rt.gpu)
    svc: dict[str, Any] = {}
    if server is not None:
        svc["image"] = server
        if rt.command:
            svc["command"] = [*rt.command, *rt.server_args(model_path, spec.name)]
        else:
            svc["command"] = rt.server_args(model_path, spec.name)
        # the model from its data-only image, read-only (Docker Compose >= 2.35 / Engine >= 28: image mounts)
        svc["volumes"] = [{"type": "image", "source": spec.model_ref, "target": model_path, "read_only": True,
                           "image": {"subpath": model_path.lstrip("/")}}]
    else:
        # no pinned server image yet: build the Dockerfile beside this folder (the model baked in)
        svc["build"] = {"context": "..", "dockerfile": "Dockerfile"}
        svc["image"] = f"{spec.repository}-{rt.name}:{spec.tag}"
        svc["pull_policy"] = "build"
    svc.update({
        "user": NONROOT_USER,
        "read_only": True,
        "tmpfs": ["/tmp"],
        "environment": {ENV_MODEL: model_path, "HOME": "/tmp"},
        "ports": [f"127.0.0.1:{rt.port}:{rt.port}"],
        "healthcheck": {"test": ["CMD", *_probe_cmd(rt.python, rt.port)], "interval": "30s", "timeout": "5s",
                        "retries": 3, "start_period": f"{rt.start_period}s"},
        "restart": "unless-stopped",
        "stop_signal": "SIGTERM",
        "stop_grace_period": "60s",
        "deploy": {"resources": {"limits": {"cpus": "4", "memory": f"{mem}G"}}},
    })
    if rt.gpu:
        svc["deploy"]["resources"]["reservations"] = {
            "devices": [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]}
        svc["ipc"] = "host"
    return {"name": spec.name, "services": {spec.name: svc}}


def _header(lines: list[str]) -> str:
    return "".join(f"# {x}\n" if x else "#\n" for x in lines)


def render_deploy(spec: DeploySpec) -> dict[str, str]:
    """The deploy files for ``spec``: ``{relative path: text}`` (Kubernetes files only with a pinned server).

    Args:
        spec: the model image, its digest and the runtime.

    Returns:
        ``compose.yaml`` always; ``k8s/*.yaml`` when a pinned server image is known.

    Example:
        >>> files = render_deploy(DeploySpec("m", "r/m", "v1", "sha256:" + "b" * 64, "llmpack", 10))
        >>> sorted(files), "build:" in files["compose.yaml"]
        (['compose.yaml'], True)
    """
    if spec.serving not in RUNTIMES:
        raise BadInputError(f"unknown runtime {spec.runtime!r}")
    server = spec.server()
    gen = [f"Generated by `llmpack pack` for {spec.model_ref}", "",
           "Every image is pinned by digest. Roll back: set the previous digest from `llmpack build --history`."]
    files = {"compose.yaml": _header(gen + ["Run: docker compose -f deploy/compose.yaml up -d"]) +
             to_yaml(_compose(spec, server))}
    if server is None:
        return files
    k8s = _header(gen + ["Kubernetes >= 1.33 (image volumes). Apply: kubectl apply -f deploy/k8s/deployment.yaml"])
    files["k8s/deployment.yaml"] = k8s + to_yaml(_deployment(spec, server, init_copy=False)) + "---\n" + \
        to_yaml(_service(spec))
    init = _header(gen + ["Clusters before 1.33: an init container copies the model into an emptyDir.",
                          "Needs a data-only image with /bin/sh and cp: build ../Dockerfile with",
                          "--build-arg BASE_IMAGE=<busybox@sha256:...>, push it, and put its digest below."])
    files["k8s/deployment-initcopy.yaml"] = init + to_yaml(_deployment(spec, server, init_copy=True)) + "---\n" + \
        to_yaml(_service(spec))
    kserve = _header(gen + ["KServe (modelcars: storageUri oci://); the model appears under /mnt/models."])
    files["k8s/inferenceservice.yaml"] = kserve + to_yaml(_inference_service(spec, server))
    return files
