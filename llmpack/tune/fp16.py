"""The FP16 activation check: run calibration text through a written FP16 output, one block at a time.

FP16's range ends at ±65504. Weights are checked as they are cast; activations only show on real text,
so the output is streamed (:mod:`llmpack.stream`) in FP16, as `llmpack.load` runs it, and every module's output is
checked for inf/NaN. The first offending module either refuses the output (default) or, with
``fp16_overflow="keep"``, is kept in float32 (its source tensors, run in float32) and the check runs
again. Memory stays at one FP16 block plus embeddings and head, whatever the depth.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from llmpack._nn import forward_hooks
from llmpack.checkpoint.sources import Source
from llmpack.config import Recipe
from llmpack.errors import Fp16OverflowError

__all__ = ["check_fp16_activations", "fp16_guard", "CALIB_TOKENS"]

CALIB_TOKENS = 256
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


def _max_tokens(config: Any) -> int:
    limit = CALIB_TOKENS
    for key in ("max_position_embeddings", "n_positions"):
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            limit = min(limit, v)
    return limit


def _calib_ids(model_dir: Path, vocab_size: int, n_tokens: int = CALIB_TOKENS) -> torch.Tensor:
    from llmpack.measure.text import default_text

    text = default_text("calib")
    ids: list[int] | None = None
    if any((model_dir / f).is_file() for f in _TOKENIZER_FILES):
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(model_dir)
            ids = list(tok(text)["input_ids"])[:n_tokens]
        except Exception:  # noqa: BLE001 - fall back to byte ids
            ids = None
    if not ids:
        ids = [b % max(vocab_size, 1) for b in text.encode("utf-8")[:n_tokens]]
    return torch.tensor([ids], dtype=torch.long)


class _FirstNonFinite:
    """Forward hooks remembering the first module (in completion order) whose float output is not finite."""

    def __init__(self) -> None:
        self.first: str | None = None

    @contextlib.contextmanager
    def watch(self, modules: Sequence[tuple[str, torch.nn.Module]]) -> Iterator[None]:
        def hook(name: str) -> Callable[..., None]:
            def fn(mod: torch.nn.Module, args: Any, out: Any) -> None:
                if self.first is not None:
                    return
                outs = out.to_tuple() if hasattr(out, "to_tuple") else out if isinstance(out, (tuple, list)) else (out,)
                for o in outs:
                    if isinstance(o, torch.Tensor) and o.is_floating_point() and not bool(torch.isfinite(o).all()):
                        self.first = name or type(mod).__name__
                        return
            return fn

        with forward_hooks((m, hook(n)) for n, m in modules):
            yield


def _first_bad(st: Any, ids: torch.Tensor) -> str | None:
    """Stream ``ids`` through ``st``; the first module whose output is not finite, or ``None``."""
    from llmpack.stream.evaluate import logit_chunk

    model = st.model
    in_blocks = {id(m) for m in st.blocks.modules()}
    containers = {id(m) for n, m in model.named_modules()
                  if st.prefix and (st.prefix == n or st.prefix.startswith(n + ".") or n == "")}
    rest = [(n, m) for n, m in model.named_modules() if id(m) not in in_blocks and id(m) not in containers]
    outer = [(n, m) for n, m in model.named_modules() if id(m) in containers and m is not st.blocks]
    seen = _FirstNonFinite()
    with seen.watch(rest):
        w = st.windows([{"input_ids": ids}])[0]
    if seen.first:
        return seen.first
    for i in range(len(st.blocks)):
        with st.block(i) as blk:
            pre = st.block_name(i)
            with seen.watch([(".".join(x for x in (pre, n) if x), m) for n, m in blk.named_modules()]):
                w.hidden = st.run(blk, i, w)
            del blk
        if seen.first:
            return seen.first
    head = getattr(model, "get_output_embeddings", None)
    with seen.watch(rest + outer):
        if callable(head) and head() is not None:  # a head: logits in token chunks
            vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
            for _ in st.tail_logits(w, chunk_tokens=logit_chunk(vocab) if vocab else ids.shape[1]):
                if seen.first:
                    break
        else:  # an encoder: its final hidden states (and pooler)
            st.tail(w)
    return seen.first


def check_fp16_activations(model_dir: "str | os.PathLike[str]", device: "str | torch.device" = "cpu") -> str | None:
    """Run the calibration text through an FP16 model dir, block by block; the first module with non-finite
    output, or ``None``. Modules ``llmpack.json`` keeps in float32 run in float32.

    Example:
        >>> check_fp16_activations("model-fp16")  # doctest: +SKIP
        None
    """
    from llmpack.stream import open_streamer

    d = Path(model_dir)
    st = open_streamer(d, device=device, dtype=torch.float16)
    cfg = st.model.config
    return _first_bad(st, _calib_ids(d, int(getattr(cfg, "vocab_size", 256) or 256), _max_tokens(cfg)))


def _with_fp32(st: Any, src: Source, keep: Sequence[str]) -> None:
    """Make the streamer read the kept modules' tensors from the source, in float32."""
    names = {i.name for i in src.infos}
    out_get = st.weights

    def kept(name: str) -> bool:
        return any(name == k or name.startswith(k + ".") for k in keep)

    def get(name: str) -> torch.Tensor:
        if kept(name):
            full = name if name in names else src.dropped_tied.get(name, name)
            if full in names:
                return src.get(full).to(torch.float32)
        return out_get(name)

    st.weights = get
    for k in keep:
        st.keep_dtype[k] = torch.float32


def fp16_guard(src: Source, out_dir: Path, recipe: Recipe, device: "str | torch.device" = "cpu") -> dict[str, str]:
    """Check a written FP16 output; return modules to keep in float32 (raise in ``error`` mode).

    Raises:
        Fp16OverflowError: an activation overflows and ``recipe.fp16_overflow`` is not ``"keep"``, or keeping
            modules in float32 does not help.
    """
    from llmpack.stream import open_streamer

    keep: list[str] = []
    for _ in range(17):
        st = open_streamer(out_dir, device=device, dtype=torch.float16)
        if keep:
            _with_fp32(st, src, keep)
        cfg = st.model.config
        ids = _calib_ids(out_dir, int(getattr(cfg, "vocab_size", 256) or 256), _max_tokens(cfg))
        bad = _first_bad(st, ids)
        if bad is None:
            reason = "FP16 activation overflow on calibration text: kept in float32"
            return {k: reason for k in keep}
        if recipe.fp16_overflow != "keep":
            raise Fp16OverflowError(
                f"FP16 activations overflow (inf/NaN) on calibration text, first in module {bad}: use method='bf16', "
                "or fp16_overflow='keep' (--fp16-overflow keep) to keep offending modules in float32"
            )
        if len(keep) >= 16:
            break
        mods = dict(st.model.named_modules())
        cand = bad.rsplit(".", 1)[0] if "." in bad else bad
        for k in list(keep):
            if bad == k or bad.startswith(k + "."):  # a kept module's own output overflows: widen to its parent
                keep.remove(k)
                cand = k.rsplit(".", 1)[0] if "." in k else ""
        while cand and isinstance(mods.get(cand), (torch.nn.ModuleList, torch.nn.ModuleDict)):
            cand = cand.rsplit(".", 1)[0] if "." in cand else ""  # containers are never called: go up
        if cand == "":
            raise Fp16OverflowError(f"FP16 activations overflow at the model output ({bad}): use method='bf16'")
        keep = [k for k in keep if not k.startswith(cand + ".")] + [cand]
    raise Fp16OverflowError(f"FP16 activations keep overflowing (last in {bad}) after keeping 16 modules: use method='bf16'")
