"""Size figures: bytes on disk, parameter bytes by dtype, and peak memory while loading / running.

Memory method (recorded in every report as ``memory_method``):

* **CPU** — the Linux peak-RSS counter ``VmHWM`` is reset to the current RSS by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux >= 4.0), the work runs, and the figure is ``VmHWM - RSS_before``:
  the exact peak of *additional* resident memory, with no sampling gap. Before each measurement the
  garbage collector runs and ``malloc_trim(0)`` hands freed heap pages back to the OS, so memory freed
  by earlier work is not silently reused (which would under-count). Where ``clear_refs`` is not
  writable (non-Linux, restricted containers) a background thread samples ``VmRSS`` / ``psutil``'s RSS
  every 2 ms instead (``rss-sampled``), which can miss spikes shorter than that.
* **CUDA** — ``torch.cuda.reset_peak_memory_stats()`` then ``max_memory_allocated() - allocated_before``
  (tensor memory only; the CUDA context and allocator cache are not counted).

Example:
    >>> import torch
    >>> with PeakMemory("cpu") as pm:
    ...     x = torch.ones(1000, 1000)
    >>> pm.peak_bytes >= 0
    True
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import threading
from pathlib import Path
from typing import Any

import torch

from llmpack._dtypes import torch_name
from llmpack.stream.memory import free_memory

__all__ = ["disk_usage", "param_bytes", "touch_weights", "PeakMemory", "current_rss", "SizeStats", "dtype_name", "memory_method"]

_RSS_RE = re.compile(r"^(VmRSS|VmHWM):\s+(\d+)\s+kB", re.MULTILINE)


@dataclasses.dataclass
class SizeStats:
    """Size figures of one model.

    Attributes:
        files: relative path -> bytes, for every file of a model directory (empty for in-memory models).
        disk_bytes: total bytes of ``files`` (``None`` for in-memory models).
        weight_file_bytes: bytes of the ``*.safetensors`` files alone (``None`` for in-memory models).
        param_bytes_by_dtype: dtype name -> bytes of parameters and buffers (shared tensors counted once).
        param_bytes: bytes of parameters (all dtypes).
        buffer_bytes: bytes of buffers (all dtypes; int8 scales registered as buffers land here).
        num_params: number of parameter elements (int8 weights count one each).
        load_peak_bytes: peak additional memory while loading and touching every weight page once
            (memory-mapped weights count), ``None`` when the model was passed in memory.
        run_peak_bytes: peak additional memory while running the timed passes.
        memory_method: how the peaks were measured (see the module docstring).

    Example:
        >>> SizeStats(param_bytes_by_dtype={"float32": 8}).total_param_bytes
        8
    """

    files: dict[str, int] = dataclasses.field(default_factory=dict)
    disk_bytes: int | None = None
    weight_file_bytes: int | None = None
    param_bytes_by_dtype: dict[str, int] = dataclasses.field(default_factory=dict)
    param_bytes: int = 0
    buffer_bytes: int = 0
    num_params: int = 0
    load_peak_bytes: int | None = None
    run_peak_bytes: int | None = None
    memory_method: str = ""

    @property
    def total_param_bytes(self) -> int:
        """Bytes of parameters and buffers together."""
        return sum(self.param_bytes_by_dtype.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SizeStats":
        """Inverse of :meth:`to_dict` (unknown keys are ignored for forward compatibility)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``.

    Example:
        >>> dtype_name(torch.int8)
        'int8'
    """
    return torch_name(dtype)


def disk_usage(path: str | os.PathLike[str]) -> dict[str, int]:
    """Bytes of every regular file under a model directory (or of one file), by relative path.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "a.json").write_text("{}")
        >>> disk_usage(d)
        {'a.json': 2}
    """
    p = Path(path)
    if p.is_file():
        return {p.name: p.stat().st_size}
    out: dict[str, int] = {}
    for f in sorted(p.rglob("*")):
        if f.is_file() and not f.is_symlink() and ".cache" not in f.relative_to(p).parts:
            out[f.relative_to(p).as_posix()] = f.stat().st_size
    return out


def param_bytes(model: torch.nn.Module) -> tuple[dict[str, int], int, int, int]:
    """Bytes held by a module's parameters and buffers, by dtype; tied / shared storage counted once.

    INT8 layers count as what they store: the int8 weight (1 byte per element) plus its float
    ``weight_scale``, whether those are parameters or buffers.

    Returns:
        ``(bytes_by_dtype, param_bytes, buffer_bytes, num_param_elements)``.

    Example:
        >>> by, p, b, n = param_bytes(torch.nn.Linear(4, 2))
        >>> by, n
        ({'float32': 40}, 10)
    """
    seen: set[tuple[int, int, str]] = set()
    by: dict[str, int] = {}
    pb = bb = n = 0

    def add(t: torch.Tensor) -> int:
        if t.device.type == "meta":
            key = (id(t), t.numel(), str(t.dtype))
        else:
            key = (t.data_ptr(), t.numel(), str(t.dtype))
        if key in seen:
            return 0
        seen.add(key)
        nbytes = t.numel() * t.element_size()
        name = dtype_name(t.dtype)
        by[name] = by.get(name, 0) + nbytes
        return nbytes

    for _, prm in model.named_parameters():
        got = add(prm)
        if got:
            pb += got
            n += prm.numel()
    for _, buf in model.named_buffers():
        bb += add(buf)
    return dict(sorted(by.items())), pb, bb, n


def touch_weights(model: torch.nn.Module) -> None:
    """Read one byte of every 4 KiB page of each CPU parameter and buffer, so memory-mapped (lazy)
    weights become resident: the loading peak then counts what running the model needs.

    Example:
        >>> touch_weights(torch.nn.Linear(4, 4))
    """
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.device.type != "cpu" or t.numel() == 0 or not t.is_contiguous():
                continue
            try:
                raw = t.detach().reshape(-1).view(torch.uint8)
            except RuntimeError:
                continue
            raw[::4096].sum()


def current_rss() -> int:
    """Current resident set size of this process in bytes.

    Example:
        >>> current_rss() > 0
        True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for m in _RSS_RE.finditer(f.read()):
                if m.group(1) == "VmRSS":
                    return int(m.group(2)) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # pragma: no cover - psutil is a dependency of accelerate
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * (1 if sys.platform == "darwin" else 1024)


def _hwm() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for m in _RSS_RE.finditer(f.read()):
                if m.group(1) == "VmHWM":
                    return int(m.group(2)) * 1024
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_method(device: str | torch.device = "cpu") -> str:
    """The method :class:`PeakMemory` uses on ``device``: ``cuda-max-memory-allocated``, ``rss-hwm-reset``
    or ``rss-sampled`` (see the module docstring).

    Example:
        >>> memory_method("cpu") in ("rss-hwm-reset", "rss-sampled")
        True
    """
    if torch.device(device).type == "cuda":
        return "cuda-max-memory-allocated"
    if _hwm() is not None and os.access("/proc/self/clear_refs", os.W_OK):
        return "rss-hwm-reset"
    return "rss-sampled"


class PeakMemory:
    """Context manager measuring the peak of additional memory used inside it.

    ``device`` ``"cpu"``: RSS (reset ``VmHWM`` or 2 ms sampling); ``"cuda"``: ``max_memory_allocated``.
    After exit, ``peak_bytes`` holds the figure and ``method`` how it was measured.

    Example:
        >>> with PeakMemory("cpu") as pm:
        ...     _ = bytearray(50_000_000)
        >>> pm.peak_bytes > 40_000_000
        True
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_bytes: int = 0
        self.method: str = ""
        self._start = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_max = 0

    def __enter__(self) -> "PeakMemory":
        free_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.method = "cuda-max-memory-allocated"
            return self
        self._start = current_rss()
        if _hwm() is not None and _reset_hwm():
            self.method = "rss-hwm-reset"
        else:
            self.method = "rss-sampled"
            self._sampled_max = self._start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._sampled_max = max(self._sampled_max, current_rss())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = max(0, torch.cuda.max_memory_allocated(self.device) - self._start)
            return
        if self.method == "rss-hwm-reset":
            self.peak_bytes = max(0, (_hwm() or 0) - self._start)
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(0, max(self._sampled_max, current_rss()) - self._start)
