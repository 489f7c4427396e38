"""Container-tool fixtures shared by every test that needs them (registered in tests/conftest.py through
``pytest_plugins``, so tests/pack and tests/test_build.py use the same code without loading each other's
conftest).

* ``registry``: ``docker-registry`` on 127.0.0.1 with a free port and temp storage, stopped by PID.
* ``podman_env``: podman/buildah with overlay storage, tmp dir and network configs under tmp, runtime runc,
  and a busybox-static base image imported as ``localhost/base:latest``.

A missing tool skips the test that asked for it (``need``), naming the tool; these tests are marked ``tools``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

__all__ = ["need", "free_port", "registry", "podman_env"]


def need(*tools: str) -> None:
    """Skip the test when one of ``tools`` is not installed."""
    for t in tools:
        if shutil.which(t) is None:
            pytest.skip(f"{t} not installed (make tools installs it)")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """``docker-registry`` serving on 127.0.0.1:<free port> from a temp dir; yields ``127.0.0.1:PORT``."""
    need("docker-registry", "skopeo")
    port = free_port()
    cfg = tmp_path / "registry.yml"
    cfg.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry-data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = open(tmp_path / "registry.log", "wb")
    proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start: " + (tmp_path / "registry.log").read_text())
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


@pytest.fixture
def podman_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for podman with storage under tmp and runtime runc; base image localhost/base:latest."""
    need("podman", "runc")
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.skip("busybox (busybox-static) not installed")
    root = tmp_path / "podman"
    (root / "graph").mkdir(parents=True)
    (root / "run").mkdir()
    (root / "storage.conf").write_text(
        f'[storage]\ndriver = "overlay"\ngraphroot = "{root / "graph"}"\nrunroot = "{root / "run"}"\n')
    # podman's tmp dir (/run/libpod) and network configs are machine-wide by default: another test's
    # `podman system reset` would remove them under this one's feet; keep them under tmp as well
    (root / "containers.conf").write_text(f'[engine]\nruntime = "runc"\ntmp_dir = "{root / "tmp"}"\n'
                                          f'[network]\nnetwork_config_dir = "{root / "networks"}"\n')
    env = dict(os.environ, CONTAINERS_STORAGE_CONF=str(root / "storage.conf"),
               CONTAINERS_CONF=str(root / "containers.conf"), TMPDIR=str(tmp_path))
    rootfs = root / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "tmp").mkdir()
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in ("sh", "sha256sum", "cat", "ls", "find", "stat", "id"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "-", "localhost/base:latest"], stdin=tar.stdout, env=env, check=True,
                   capture_output=True, timeout=60)
    tar.wait()
    try:
        yield env
    finally:
        # a runtime image's layers (GBs) take a while to delete on a busy machine
        subprocess.run(["podman", "system", "reset", "--force"], env=env, capture_output=True, timeout=600)
        # overlay mounts may linger: unmount anything under our graphroot before tmp_path is removed
        subprocess.run(["sh", "-c", f"grep -o ' {root}[^ ]*' /proc/mounts | xargs -r -n1 umount -l"],
                       capture_output=True)
