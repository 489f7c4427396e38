"""The ``llmpack`` runtime Dockerfile, built and run with podman: the real ``llmpack serve`` answering the host.

What runs: the Dockerfile exactly as ``pack --runtime llmpack`` writes it (only ``--link`` dropped: Debian's
podman 4.3 rejects it), built with ``--network none``. Its build stage pip-installs, from ``wheels/`` only
(``PIP_ARGS=--no-index``), the llmpack wheel built from this checkout, CPU torch and every dependency of
``llmpack[serve]``, then compiles llmpack's native int8 kernels with g++; the runtime stage copies the venv and
the compiled kernels, has no compiler, runs as ``65532:65532`` and starts ``llmpack serve`` on the packed model
(a tiny random-init Llama, int8 from ``llmpack.quantize``). From the host: ``/health``, ``/ready``, one greedy
``/v1/completions`` equal to ``llmpack.load`` + ``generate`` here, ``/metrics`` counting it, ``podman
healthcheck run``, and ``podman stop`` (the image's ``STOPSIGNAL SIGTERM``) exiting 0 after the drain.

What is made here because no image can be pulled: the base images. ``localhost/pybase`` is this machine's
Debian CPython 3.11 (stdlib, ensurepip wheels, the shared libraries it and the wheels link) over a
busybox-static rootfs; ``localhost/pybuild`` adds the installed Debian packages of ``g++`` and
``libpython3.11-dev`` (their dependency closure, read from dpkg) and is the build stage's base (``podman build
--from``, which replaces the first ``FROM``): the Dockerfile's ``apt-get install g++`` step is skipped on a base
without apt-get, as on any base that brings its own compiler. The wheels come from pip: ``pip wheel`` of this
checkout, and ``pip download`` of the dependencies (cp311 manylinux wheels; torch from ``/opt/wheels`` or the
package index), pinned to the versions installed in the test's own environment and kept in a cache outside the
repository (``$LLMPACK_TEST_WHEELS``, default ``~/.cache/llmpack-tests/wheels``) so later runs need no network.

The container runs on an ``--internal`` podman network (no route out of it; checked from inside) instead of
``--network none``, which would leave the host no way in: the host reaches the server at the container's
address on that network.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from llmpack.pack import pack
from packtools import ULIMITS, free_port

pytestmark = pytest.mark.tools
ROOT = Path(__file__).resolve().parents[2]
PY = os.path.realpath("/usr/bin/python3")  # Debian's interpreter (sys.prefix /usr), not the venv's
STDLIB = "/usr/lib/" + Path(PY).name  # /usr/lib/python3.X
MULTIARCH = "x86_64-linux-gnu"
# what manylinux wheels (torch's and the others' extension modules) may link from the system
SYSTEM_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1", "zlib1g")
NOT_IN_IMAGE = re.compile(r"^/(bin|sbin|etc|var|usr/share/(doc|man|info|locale|lintian|bug|gdb)|usr/sbin)(/|$)")
PROMPT = "The capital of France is"


def _run(cmd: list[str], env: dict[str, str], timeout: int = 120, **kw: object) -> subprocess.CompletedProcess:
    # a session of its own: podman/conmon must not touch the caller's terminal (a background pytest would be
    # stopped by SIGTTOU); stdin is /dev/null unless given
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,  # type: ignore[arg-type]
                          start_new_session=True, **kw)


def _pip(*args: str, timeout: int = 600, tries: int = 1) -> None:
    for attempt in range(tries):  # the package index can answer a resolution with a transient error
        r = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode == 0:
            return
    lines = [ln for ln in r.stderr.splitlines() if "is ignored: it is neither a file nor a directory" not in ln]
    raise AssertionError(f"pip {' '.join(args[:3])} failed {tries}x:\n{r.stdout[-2000:]}\n" + "\n".join(lines)[-3000:])


def _llmpack_wheel(tmp: Path, dest: Path) -> Path:
    """``pip wheel`` of this checkout (a copy of its sources, so the build leaves nothing in the repository)."""
    src = tmp / "llmpack-src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "llmpack", src / "llmpack", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _pip("wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), str(src))
    (wheel,) = dest.glob("llmpack-*.whl")
    return wheel


def _dependency_wheels(llmpack_wheel: Path, dest: Path) -> None:
    """Every wheel ``torch`` + ``llmpack[serve]`` need, hard-linked into ``dest`` from the cache.

    The versions are pinned to this environment's (so the image runs what the tests here run); the cache is
    keyed by them and by pyproject.toml, and filled once by ``pip download`` (cp311 binary wheels only).
    """
    # one pin per name, the version an import finds first: setuptools (>= 71) puts its _vendor folder on sys.path
    # once imported, so distributions() can list a second, vendored copy of packaging and others
    names = {d.metadata["Name"] for d in importlib.metadata.distributions() if d.metadata["Name"]}
    pins = sorted(f"{n}=={importlib.metadata.version(n)}" for n in names if n.lower() != "llmpack")
    key = hashlib.sha256("\n".join([*pins, (ROOT / "pyproject.toml").read_text(), PY]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("LLMPACK_TEST_WHEELS", Path.home() / ".cache" / "llmpack-tests" / "wheels"))
    cache = root / f"cp311-{key}"
    if not (cache / "COMPLETE").is_file():
        part = root / f"cp311-{key}.part-{os.getpid()}"
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        (part / "constraints.txt").write_text("\n".join(pins) + "\n")
        torch_pin = f"torch=={importlib.metadata.version('torch')}"
        _pip("download", "-q", "--only-binary=:all:", "-c", str(part / "constraints.txt"), "-d", str(part),
             torch_pin, f"{llmpack_wheel}[serve]", tries=3)
        for own in part.glob("llmpack-*.whl"):
            own.unlink()
        (part / "COMPLETE").write_text(torch_pin + "\n")
        shutil.rmtree(cache, ignore_errors=True)
        part.rename(cache)
    for whl in cache.glob("*.whl"):
        try:
            os.link(whl, dest / whl.name)
        except OSError:
            shutil.copy2(whl, dest / whl.name)


def _copy_in(rootfs: Path, path: str) -> None:
    """Copy one host file, symlink or directory entry to the same place in ``rootfs`` (merged /usr).

    Nothing is ever written through a symlink: an entry that exists is left as it is (a symlink copied from
    the host may be absolute, and writing through it would write to the host's file).
    """
    parent = os.path.realpath(os.path.dirname(path))  # /lib/x86_64-linux-gnu -> /usr/lib/x86_64-linux-gnu
    src = os.path.join(parent, os.path.basename(path))
    dst = rootfs / src.lstrip("/")
    if os.path.isdir(src) and not os.path.islink(src):
        dst.mkdir(parents=True, exist_ok=True)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    assert (os.path.realpath(dst.parent) + os.sep).startswith(os.path.realpath(rootfs) + os.sep), dst
    if os.path.lexists(dst):
        return
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
    elif os.path.isfile(src):
        shutil.copy2(src, dst)


def _package_files(packages: list[str]) -> list[str]:
    """The files the installed Debian ``packages`` put on this machine, less docs and configuration."""
    out = subprocess.run(["dpkg-query", "-L", *packages], capture_output=True, text=True, check=True).stdout
    return [p for p in out.splitlines() if p.startswith("/") and not NOT_IN_IMAGE.match(p)]


def _python_rootfs(rootfs: Path) -> None:
    """busybox-static + Debian's CPython 3, the libraries it links, and glibc, libstdc++, libgcc_s and zlib
    (what manylinux wheels such as torch's may take from the system)."""
    busybox = shutil.which("busybox")
    if busybox is None or not Path(PY).exists() or not Path(STDLIB, "ensurepip").is_dir():
        pytest.skip("needs busybox-static and Debian's python3 with python3-venv (make tools)")
    if shutil.which("dpkg-query") is None:
        pytest.skip("needs dpkg (a Debian host) to copy the system libraries")
    for d in ("bin", "usr/bin", "usr/lib", "usr/lib64", "tmp", "etc", "usr/share"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    (rootfs / "lib").symlink_to("usr/lib")  # Debian's merged /usr, as in the python images
    (rootfs / "lib64").symlink_to("usr/lib64")
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
    for path in _package_files(list(SYSTEM_PACKAGES)):
        _copy_in(rootfs, path)
    for so in [PY, *map(str, Path(STDLIB, "lib-dynload").glob("*.so"))]:
        out = subprocess.run(["ldd", so], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if path.startswith("/"):
                _copy_in(rootfs, path)
                if os.path.islink(path):  # libssl.so.3 -> the versioned file it names
                    _copy_in(rootfs, os.path.join(os.path.dirname(path), os.readlink(path)))


def _dpkg_closure(roots: list[str]) -> list[str]:
    """The installed Debian packages ``roots`` depend on, recursively (Depends and Pre-Depends)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        pkg = todo.pop()
        if pkg in seen:
            continue
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}|${Depends}, ${Pre-Depends}", pkg],
                           capture_output=True, text=True)
        status, _, deps = r.stdout.partition("|")
        if r.returncode != 0 or not status.endswith(" installed"):
            continue
        seen.add(pkg)
        for alternative in deps.split(","):
            todo.extend(n for n in (re.split(r"[ (:]", a.strip())[0] for a in alternative.split("|")) if n)
    return sorted(seen)


def _toolchain_rootfs(rootfs: Path) -> None:
    """Add Debian's g++ and CPython headers (their installed packages' files) to a copy of the python rootfs."""
    if shutil.which("g++") is None or not Path(f"/usr/include/{Path(PY).name}/Python.h").is_file():
        pytest.skip("needs g++ and the CPython headers (build-essential, python3-dev) for the build stage")
    for path in _package_files(_dpkg_closure(["g++", f"lib{Path(PY).name}-dev"])):
        _copy_in(rootfs, path)
    for alias, target in (("c++", "g++"), ("cc", "gcc")):  # Debian's alternatives (not in any package's list)
        if not os.path.lexists(rootfs / "usr/bin" / alias):
            (rootfs / "usr/bin" / alias).symlink_to(target)


def _import(rootfs: Path, ref: str, env: dict[str, str]) -> None:
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imp = _run(["podman", "import", "-", ref], env, timeout=300, stdin=tar.stdout)
    assert tar.stdout is not None
    tar.stdout.close()
    assert tar.wait() == 0 and imp.returncode == 0, imp.stderr


def _served_model(d: Path) -> Path:
    """A tiny random-init Llama with a byte tokenizer, quantized to int8 (the native kernels' path)."""
    import llmpack
    from llmpack.testing import byte_tokenizer, tiny_model

    src = d / "tiny-src"
    tiny_model("llama", max_position_embeddings=256).save_pretrained(src)
    byte_tokenizer().save_pretrained(src)
    llmpack.quantize(src, "int8", out=d / "tiny", calibrate=False, quiet=True)
    return d / "tiny"


def _http(url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_llmpack_runtime_image_serves_a_completion(tmp_path: Path, podman_env: dict[str, str]) -> None:
    import torch

    import llmpack
    from llmpack.testing import byte_tokenizer

    env = podman_env
    t0 = time.monotonic()
    phases: dict[str, float] = {}  # seconds per phase, printed (pytest -rP) to see where a slow run went

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - t0 - sum(phases.values()), 1)

    model_dir = _served_model(tmp_path / "model")
    out = tmp_path / "ctx"
    res = pack(model_dir, out, name="tiny", tag="v1", runtime="llmpack", quiet=True)
    _dependency_wheels(_llmpack_wheel(tmp_path, out / "wheels"), out / "wheels")
    phase("model, pack, wheels")

    rootfs = tmp_path / "pyroot"
    _python_rootfs(rootfs)
    _import(rootfs, "localhost/pybase:latest", env)
    _toolchain_rootfs(rootfs)
    _import(rootfs, "localhost/pybuild:latest", env)
    shutil.rmtree(rootfs)
    phase("base images")

    (out / "Dockerfile.podman").write_text((out / "Dockerfile").read_text().replace(" --link", ""))
    image = "localhost/tiny-llmpack:test"
    build = _run(["podman", "build", *ULIMITS, "--format", "docker", "--network", "none",
                  "--from", "localhost/pybuild:latest",  # the build stage (the first FROM): the base + g++
                  "--build-arg", "BASE_IMAGE=localhost/pybase:latest", "--build-arg", "PIP_ARGS=--no-index",
                  "--build-arg", f"TORCH_SPEC=torch=={torch.__version__}",
                  "--build-arg", "LLMPACK_SPEC=llmpack[serve]==0.1.0",
                  "-f", str(out / "Dockerfile.podman"), "-t", image, str(out)], env, timeout=900)
    log = build.stdout + build.stderr
    assert build.returncode == 0, log[-6000:]
    phase("podman build")
    assert re.search(r"llmpack native int8 kernels: ok \(/opt/llmpack/cache/native/", log), log[-3000:]

    inspect = json.loads(_run(["podman", "image", "inspect", image], env).stdout)[0]
    cfg = inspect["Config"]
    assert cfg["User"] == "65532:65532" and "8000/tcp" in cfg["ExposedPorts"]
    assert cfg["StopSignal"] == "SIGTERM"
    assert cfg["Cmd"] == ["llmpack", "serve", "/models/tiny", "--host", "0.0.0.0", "--port", "8000"]
    hc_cfg = cfg.get("Healthcheck") or inspect.get("Healthcheck") or {}  # podman 4.3: at the top level
    assert hc_cfg.get("Test", [""])[0] == "CMD" and "/health" in hc_cfg["Test"][-1], json.dumps(inspect)[-6000:]
    assert hc_cfg["StartPeriod"] > 0

    net = f"llmpack-test-{free_port()}"
    name = f"{net}-serve"
    made = _run(["podman", "network", "create", "--internal", net], env)
    assert made.returncode == 0, made.stderr
    try:
        run = _run(["podman", "run", "-d", *ULIMITS, "--name", name, "--network", net, image], env)
        assert run.returncode == 0, run.stderr
        ip = json.loads(_run(["podman", "inspect", name], env).stdout)[0]["NetworkSettings"]["Networks"][net][
            "IPAddress"]
        url = f"http://{ip}:8000"
        deadline, ready = time.monotonic() + 240, 0
        while time.monotonic() < deadline and ready != 200:
            try:
                ready = _http(url + "/ready", timeout=5)[0]
            except OSError:
                pass
            if ready != 200:
                state = json.loads(_run(["podman", "inspect", name], env).stdout)[0]["State"]
                if not state["Running"]:
                    break
                time.sleep(0.5)
        phase("start until /ready")
        logs = _run(["podman", "logs", name], env)
        assert ready == 200, logs.stdout[-3000:] + logs.stderr[-3000:]
        status, health = _http(url + "/health")
        assert status == 200, health

        status, body = _http(url + "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 8,
                                                       "temperature": 0, "ignore_eos": True}, timeout=120)
        assert status == 200, body
        ids = list(PROMPT.encode())
        want = llmpack.load(model_dir).generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                                                                                               dtype=torch.long),
                                                do_sample=False, max_new_tokens=8, min_new_tokens=8)
        assert json.loads(body)["choices"][0]["text"] == byte_tokenizer().decode(want[0, len(ids):].tolist())
        status, metrics = _http(url + "/metrics")
        assert status == 200
        assert _metric(metrics, 'llmpack_requests_total{route="/v1/completions",status="200"}') == 1, metrics[-3000:]
        assert _metric(metrics, "llmpack_generation_tokens_total") >= 8

        # inside: non-root, the build stage's kernels loaded without a compiler, no route out of the network
        check = _run(["podman", "exec", name, "/opt/llmpack/bin/python", "-c",
                      "import os, shutil, socket\n"
                      "from llmpack.runtime.kernels import native\n"
                      "native.avx2_ops()\n"
                      "s = socket.socket(); s.settimeout(3)\n"
                      "try:\n    s.connect(('1.1.1.1', 443)); out = 'connected'\n"
                      "except OSError as e:\n    out = type(e).__name__\n"
                      "print(os.getuid(), shutil.which('c++') or shutil.which('g++') or shutil.which('cc'),"
                      " native.native_status(), out)"], env, timeout=120)
        assert check.returncode == 0, check.stderr
        uid, compiler, native_status, outside = check.stdout.split()[-4:]
        assert (uid, compiler, native_status) == ("65532", "None", "ok"), check.stdout
        assert outside != "connected"

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
        phase("requests, healthcheck, stop")
        print("phases (s):", phases)
    finally:
        _run(["podman", "rm", "-f", name], env)
        _run(["podman", "network", "rm", "-f", net], env)
    assert res.manifest_digest.startswith("sha256:")


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
    assert files.returncode == 0 and files.stdout.split() and sorted(files.stdout.split()) == sorted(
        p.name for p in packable_model.iterdir())
