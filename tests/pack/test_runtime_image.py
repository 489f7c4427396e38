"""The ``llmpack`` runtime Dockerfile, built and run with podman, answering ``/health`` from the host.

What is real here: the Dockerfile exactly as ``pack --runtime llmpack`` writes it (only ``--link`` dropped:
Debian's podman 4.3 rejects it), its two stages, pip installing from ``wheels/`` into a venv, the native-kernel
step of the build stage, ``COPY --from=build`` into the runtime stage, the non-root user, ``EXPOSE``,
``HEALTHCHECK``, ``STOPSIGNAL`` and ``CMD llmpack serve /models/<name> --host 0.0.0.0 --port 8000``, the
model layers, a port published on 127.0.0.1, ``podman healthcheck run`` and a SIGTERM stop.

What is a stand-in, and why: the base image is made offline from this machine's Debian CPython 3 (stdlib,
ensurepip wheels, shared libraries) over a busybox-static rootfs, because no image can be pulled here; and
the ``llmpack`` wheel in ``wheels/`` is a small stdlib server (``data/stub_serve.py``) instead of llmpack
itself, because torch and llmpack's other dependencies cannot be installed offline into an image here (the
only torch on this machine is the venv's unpacked 750 MB tree, no wheel). The real server is ``llmpack serve``
(issue 20, points 1-4).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from llmpack.pack import pack
from packtools import ULIMITS, free_port, need

pytestmark = pytest.mark.tools
DATA = Path(__file__).with_name("data")
PY = os.path.realpath("/usr/bin/python3")  # Debian's interpreter (sys.prefix /usr), not the venv's
STDLIB = "/usr/lib/" + Path(PY).name  # /usr/lib/python3.X


def _run(cmd: list[str], env: dict[str, str], timeout: int = 120, **kw: object) -> subprocess.CompletedProcess:
    # a session of its own: podman/conmon must not touch the caller's terminal (a background pytest would be
    # stopped by SIGTTOU); stdin is /dev/null unless given
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,  # type: ignore[arg-type]
                          start_new_session=True, **kw)


def _stub_wheel(dest: Path) -> Path:
    """``llmpack-0.1.0-py3-none-any.whl``: the stand-in server, a ``llmpack`` console script, the native step."""
    files = {
        "llmpack/__init__.py": "",
        "llmpack/_stub.py": (DATA / "stub_serve.py").read_text(),
        "llmpack/runtime/__init__.py": "",
        "llmpack/runtime/kernels/__init__.py": "",
        "llmpack/runtime/kernels/native.py": "from llmpack._stub import build_native\n\n"
                                             "if __name__ == '__main__':\n    raise SystemExit(build_native())\n",
        "llmpack-0.1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: llmpack\nVersion: 0.1.0\n"
                                            "Provides-Extra: serve\n",
        "llmpack-0.1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: llmpack-test\nRoot-Is-Purelib: true\n"
                                         "Tag: py3-none-any\n",
        "llmpack-0.1.0.dist-info/entry_points.txt": "[console_scripts]\nllmpack = llmpack._stub:main\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("llmpack-0.1.0.dist-info/RECORD,,")
    path = dest / "llmpack-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
        z.writestr("llmpack-0.1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return path


def _python_rootfs(rootfs: Path) -> None:
    """busybox-static + Debian's CPython 3 with the shared libraries its extension modules need."""
    busybox = shutil.which("busybox")
    if busybox is None or not Path(PY).exists() or not Path(STDLIB, "ensurepip").is_dir():
        pytest.skip("needs busybox-static and Debian's python3 with python3-venv (make tools)")
    for d in ("bin", "usr/bin", "tmp", "etc", "usr/share"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    os.chmod(rootfs / "tmp", 0o1777)
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "cat", "ls", "id", "chmod", "mkdir", "rm", "cp", "env", "sleep", "test"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    shutil.copy2(PY, rootfs / "usr/bin" / Path(PY).name)
    (rootfs / "usr/bin/python3").symlink_to(Path(PY).name)
    shutil.copytree(STDLIB, rootfs / STDLIB.lstrip("/"), symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "test", "idlelib", "tkinter", "turtledemo", "lib2to3",
                                                  "pydoc_data", "config-3.*"))
    if Path("/usr/share/python-wheels").is_dir():  # Debian's ensurepip installs pip from here
        shutil.copytree("/usr/share/python-wheels", rootfs / "usr/share/python-wheels")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    libs: set[str] = set()
    for so in [PY, *map(str, Path(STDLIB, "lib-dynload").glob("*.so"))]:
        out = subprocess.run(["ldd", so], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/"):
                libs.add(path)
    for lib in sorted(libs):
        target = rootfs / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), target)


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_llmpack_runtime_image_builds_runs_and_answers_health(packable_model: Path, tmp_path: Path,
                                                              podman_env: dict[str, str]) -> None:
    env = podman_env
    out = tmp_path / "ctx"
    res = pack(packable_model, out, name="tiny", tag="v1", runtime="llmpack", quiet=True)
    _stub_wheel(out / "wheels")
    rootfs = tmp_path / "pyroot"
    _python_rootfs(rootfs)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imp = _run(["podman", "import", "-", "localhost/pybase:latest"], env, timeout=300, stdin=tar.stdout)
    tar.wait()
    assert imp.returncode == 0, imp.stderr

    dockerfile = (out / "Dockerfile").read_text()
    (out / "Dockerfile.podman").write_text(dockerfile.replace(" --link", ""))
    image = "localhost/tiny-llmpack:test"
    build = _run(["podman", "build", *ULIMITS, "--format", "docker", "--network", "none",
                  "--build-arg", "BASE_IMAGE=localhost/pybase:latest", "--build-arg", "PIP_ARGS=--no-index",
                  "--build-arg", "TORCH_SPEC=pip",  # already in the venv: torch is the stand-in's non-dependency
                  "--build-arg", "LLMPACK_SPEC=llmpack[serve]==0.1.0",
                  "-f", str(out / "Dockerfile.podman"), "-t", image, str(out)], env, timeout=420)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "llmpack native int8 kernels: ok" in build.stdout + build.stderr

    inspect = json.loads(_run(["podman", "image", "inspect", image], env).stdout)[0]
    cfg = inspect["Config"]
    assert cfg["User"] == "65532:65532" and "8000/tcp" in cfg["ExposedPorts"]
    assert cfg["StopSignal"] == "SIGTERM"
    assert cfg["Cmd"] == ["llmpack", "serve", "/models/tiny", "--host", "0.0.0.0", "--port", "8000"]
    hc_cfg = cfg.get("Healthcheck") or inspect.get("Healthcheck") or {}  # podman 4.3: at the top level
    assert hc_cfg.get("Test", [""])[0] == "CMD" and "/health" in hc_cfg["Test"][-1], json.dumps(inspect)[-6000:]
    assert hc_cfg["StartPeriod"] > 0

    port = free_port()
    name = f"llmpack-test-{port}"
    run = _run(["podman", "run", "-d", *ULIMITS, "--name", name, "-p", f"127.0.0.1:{port}:8000", image], env)
    assert run.returncode == 0, run.stderr
    try:
        deadline, status = time.monotonic() + 60, 0
        while time.monotonic() < deadline:
            try:
                status, health = _get(f"http://127.0.0.1:{port}/health")
                if status == 200:
                    break
            except OSError:
                time.sleep(0.3)
        logs = _run(["podman", "logs", name], env)
        assert status == 200, logs.stdout + logs.stderr
        # non-root; the build stage's native artifact is in the runtime stage; no compiler there
        assert health == {"status": "ok", "uid": 65532, "native": True, "compiler": None}
        assert _get(f"http://127.0.0.1:{port}/ready")[0] == 200
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", method="POST",
                                     data=json.dumps({"model": "tiny", "prompt": "hi"}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            text = json.loads(r.read())["choices"][0]["text"]
        assert text == f"llama:{len(list(packable_model.iterdir()))} files"  # the model layers are all there
        hc = _run(["podman", "healthcheck", "run", name], env)
        assert hc.returncode == 0, hc.stdout + hc.stderr
        try:  # podman stop sends the image's STOPSIGNAL; a loaded 2-core machine can take minutes to clean up
            stop = _run(["podman", "stop", "-t", "30", name], env, timeout=400)
        except subprocess.TimeoutExpired:
            ps = _run(["podman", "ps", "-a", "--format", "{{.Names}} {{.Status}}"], env, timeout=60)
            pytest.fail(f"podman stop did not return in 400 s; containers: {ps.stdout.strip()}")
        assert stop.returncode == 0, stop.stderr
        state = json.loads(_run(["podman", "inspect", name], env).stdout)[0]["State"]
        assert state["ExitCode"] == 0  # SIGTERM (STOPSIGNAL) drained and exited 0, not killed after the timeout
        assert "drained, bye" in _run(["podman", "logs", name], env).stdout
    finally:
        _run(["podman", "rm", "-f", name], env)
    assert res.manifest_digest.startswith("sha256:") and sys.version_info >= (3, 10)


@pytest.mark.parametrize("runtime", ["vllm", "vllm-cpu"])
def test_vllm_dockerfiles_build_with_buildah_and_pass_only_arguments(runtime: str, packable_model: Path,
                                                                     tmp_path: Path,
                                                                     podman_env: dict[str, str]) -> None:
    """vLLM's images cannot be pulled here: build on the busybox base to check what the stub adds to any base."""
    env = podman_env
    out = tmp_path / "ctx"
    pack(packable_model, out, name="tiny", tag="v1", runtime=runtime, quiet=True)
    (out / "Dockerfile.podman").write_text((out / "Dockerfile").read_text().replace(" --link", ""))
    image = f"localhost/tiny-{runtime}:test"
    build = _run(["podman", "build", *ULIMITS, "--format", "docker", "--network", "none",
                  "--build-arg", "BASE_IMAGE=localhost/base:latest", "-f", str(out / "Dockerfile.podman"),
                  "-t", image, str(out)], env, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    inspect = json.loads(_run(["podman", "image", "inspect", image], env).stdout)[0]
    cfg = inspect["Config"]
    assert not cfg.get("Entrypoint")  # the base's entrypoint (`vllm serve` in vLLM's images) is kept
    assert cfg["Cmd"] == ["/models/tiny", "--served-model-name", "tiny", "--host", "0.0.0.0", "--port", "8000"]
    assert cfg["User"] == "65532:65532" and cfg["StopSignal"] == "SIGTERM" and "8000/tcp" in cfg["ExposedPorts"]
    hc = cfg.get("Healthcheck") or inspect.get("Healthcheck") or {}
    assert "/health" in hc["Test"][-1] and hc["StartPeriod"] >= 600 * 10**9
    files = _run(["podman", "run", "--rm", *ULIMITS, "--network=none", "--entrypoint", "/bin/ls", image,
                  "/models/tiny"], env)
    assert files.returncode == 0 and sorted(files.stdout.split()) == sorted(p.name for p in packable_model.iterdir())
