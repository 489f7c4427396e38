"""A stand-in for ``llmpack serve`` inside the podman test image (stdlib only; see test_runtime_image.py).

It answers what the Dockerfile, compose and Kubernetes files rely on: ``/health``, ``/ready`` (the model
dir is there), ``/v1/completions`` (reads the mounted model's config), binds ``--host``/``--port`` and exits
0 on SIGTERM. ``/health`` also reports what the build stage left: the native-kernel artifact under
``$LLMPACK_CACHE/native`` and whether a C++ compiler is on ``PATH`` (it must not be, in the runtime stage).
"""

import json
import os
import shutil
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def build_native() -> int:
    """``python -m llmpack.runtime.kernels.native --build`` in the build stage: leave an artifact."""
    d = Path(os.environ["LLMPACK_CACHE"]) / "native"
    d.mkdir(parents=True, exist_ok=True)
    cxx = shutil.which("c++") or shutil.which("g++")
    (d / "stub-kernels.so").write_text(f"built by the build stage (compiler: {cxx})\n")
    print(f"llmpack native int8 kernels: ok ({d})")
    return 0


def serve(argv: list) -> int:
    model, host, port = Path(argv[0]), "127.0.0.1", 8000
    if "--host" in argv:
        host = argv[argv.index("--host") + 1]
    if "--port" in argv:
        port = int(argv[argv.index("--port") + 1])

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, obj: dict) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                native = Path(os.environ.get("LLMPACK_CACHE", "/nonexistent")) / "native" / "stub-kernels.so"
                self._send(200, {"status": "ok", "uid": os.getuid(), "native": native.is_file(),
                                 "compiler": shutil.which("c++") or shutil.which("g++")})
            elif self.path == "/ready":
                ok = (model / "config.json").is_file()
                self._send(200 if ok else 503, {"ready": ok})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            n = int(self.headers.get("Content-Length", 0))
            req = json.loads(self.rfile.read(n) or b"{}")
            cfg = json.loads((model / "config.json").read_text())
            files = sorted(p.name for p in model.iterdir())
            self._send(200, {"object": "text_completion", "model": req.get("model"),
                             "choices": [{"index": 0, "text": f"{cfg.get('model_type')}:{len(files)} files"}]})

        def log_message(self, *args: object) -> None:
            return

    srv = ThreadingHTTPServer((host, port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
    print(f"serving {model} on {host}:{port}", flush=True)
    srv.serve_forever()
    print("drained, bye", flush=True)
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        return serve(sys.argv[2:])
    print("usage: llmpack serve DIR [--host H] [--port P]", file=sys.stderr)
    return 2
