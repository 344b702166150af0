"""A tiny model for the credit sandbox: a word-level tokenizer over the env's vocabulary and a small Qwen3.

The tokenizer (:func:`build_sandbox_tokenizer`) is a ``tokenizers`` WordLevel model whose tokens are
every word of :meth:`stepgym.envs.sandbox.SandboxEnv.vocabulary` (plus the words of the rollout and
hindsight templates), each in two forms -- bare (``apple``) and with its leading space
(`` apple``) -- single punctuation marks and digits (same two forms), whitespace characters, the
ChatML specials and the tags ``<action>``/``</action>`` (one token each). Pre-tokenization splits
text exactly as those tokens are cut and the decoder concatenates tokens (``Fuse``), so
``decode(encode(text)) == text`` for every text made of known words, and encoding rendered template
text plus generated text in one go gives back the generated ids (zero retokenization drift,
checked by the tests with :func:`stepgym.agents.render.per_step_drift` and ``concat_drift``).
Unknown words become ``<unk>``.

:func:`build_sandbox_model` writes a random-init ``Qwen3ForCausalLM`` (about 1.3M parameters by
default) and that tokenizer to a folder that :func:`stepgym.agents.models.load_model` loads.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

from stepgym.agents.models import TINY_CHAT_TEMPLATE, _build_cached, _need_hf, cache_dir

__all__ = [
    "SANDBOX_MODEL_CONFIG",
    "build_sandbox_model",
    "build_sandbox_tokenizer",
    "sandbox_model_dir",
    "sandbox_words",
]

_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
_ADDED = ["<action>", "</action>", "<think>", "</think>", "<hindsight>", "</hindsight>"]
_PIECE = r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]|\s"
"""Pre-tokenizer pieces: a letter run, one digit or one punctuation mark, each with an optional
leading space; any other whitespace character alone."""
_EXTRA_TEXT = """
system user assistant Action Observation Current observation Your last step steps s
hindsight final correctness correct incorrect peer trajectory expert plan gold answer action observation
"""
"""Words the rollout renderer (per-step history) and the hindsight builders write."""

SANDBOX_MODEL_CONFIG: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
"""``Qwen3Config`` fields of the default sandbox model (the rest are Qwen3 defaults)."""


def sandbox_words() -> list[str]:
    """Every word the sandbox tokenizer knows, sorted (env vocabulary, templates, capitalised forms)."""
    from stepgym.envs.sandbox import SandboxEnv, split_words

    words = set(SandboxEnv.vocabulary()) | set(split_words(_EXTRA_TEXT))
    words |= {w.capitalize() for w in words if w.isalpha()} | {w.lower() for w in words if w.isalpha()}
    words |= set("0123456789") | set(string.punctuation)
    return sorted(words)


def build_sandbox_tokenizer() -> Any:
    """The word-level sandbox tokenizer (a ``PreTrainedTokenizerFast`` with the ChatML template).

    Built deterministically (no training): ids follow the sorted token list, specials first.
    """
    _need_hf()
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces: list[str] = []
    for w in sandbox_words():
        pieces += [w, " " + w]
    pieces += [" ", "\n", "\t", "\r"]
    vocab: dict[str, int] = {}
    for tok in [*_SPECIALS, *pieces]:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_PIECE), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        chat_template=TINY_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.add_tokens(_ADDED)
    return fast


def build_sandbox_model(folder: str | Path, *, seed: int = 0, **config_overrides: Any) -> Path:
    """Write a random-init Qwen3 model and the sandbox tokenizer to ``folder`` (``load_model`` reads it).

    Args:
        folder: Where to save (created; overwritten files keep their names).
        seed: Seeds the weight initialisation (the global torch RNG is left untouched).
        **config_overrides: ``Qwen3Config`` fields replacing :data:`SANDBOX_MODEL_CONFIG`.

    Returns:
        ``folder`` as a path.
    """
    _need_hf()
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = build_sandbox_tokenizer()
    conf = {
        **SANDBOX_MODEL_CONFIG,
        "vocab_size": len(tok),
        "bos_token_id": None,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        **config_overrides,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(Qwen3Config(**conf))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def sandbox_model_dir(seed: int = 0) -> Path:
    """The cached random-init sandbox model of ``seed`` (``$STEPGYM_CACHE/models/sandbox-...``)."""
    key = re.sub(r"\W", "", f"{len(sandbox_words())}")
    return _build_cached(
        cache_dir() / f"sandbox-v1-{key}-seed{seed}", lambda folder: build_sandbox_model(folder, seed=seed)
    )
