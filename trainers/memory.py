"""The memory guard of the main job: will this run fit, before any weight is loaded?

A training run holds, per parameter, the weights, their gradients, AdamW's two fp32 moments and
every frozen copy (KL reference, teacher snapshot); per micro-batch it holds the activations the
backward pass reads and the logits over the vocabulary (the loss reads ``log_softmax`` of them, and
their gradient has the same size). The last two are what an estimate from parameters alone misses:
for SmolLM2-135M the vocabulary (49,152) times a 2k-token row is 100M floats per row.

Activation bytes follow Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models", §4.1: ``s·b·h·(34 + 5·a·s/h)`` bytes per layer at 2-byte width (here scaled to
the run's width; the attention-score term only for eager attention: transformers' default ``sdpa``
keeps no scores).
``RUNTIME_BYTES`` is the interpreter, torch and transformers themselves (measured, see
``benchmarks/bench_memory.py``).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "KNOWN_SHAPES",
    "RUNTIME_BYTES",
    "MemoryEstimate",
    "ModelShape",
    "available_memory",
    "estimate_memory",
    "model_shape",
]

RUNTIME_BYTES = 0.7 * 2**30
"""Resident memory of Python + torch + transformers + the env pool before a model is built."""


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a causal LM."""

    params: float
    hidden: int | None = None
    layers: int | None = None
    vocab: int | None = None
    heads: int | None = None


KNOWN_SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(0.9e6, hidden=128, layers=4, vocab=2048, heads=4),
    "smollm2-135m": ModelShape(134.5e6, hidden=576, layers=30, vocab=49152, heads=9),
}
"""Shapes of the built-in model names (read from their configs once)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs, by part."""

    weights: float
    """Weights, gradients, optimizer moments and frozen copies."""
    activations: float
    """Saved activations of one micro-batch (forward + backward)."""
    logits: float
    """Logits, their log-softmax and gradient for one micro-batch (fp32)."""
    runtime: float
    """Interpreter and libraries."""

    @property
    def total(self) -> float:
        """Everything."""
        return self.weights + self.activations + self.logits + self.runtime


def model_shape(name: str) -> tuple[ModelShape | None, str]:
    """Shape of a model before loading it, and where the figures come from (``known``, ``config``, ``name``)."""
    if name in KNOWN_SHAPES:
        return KNOWN_SHAPES[name], "known"
    try:
        from transformers import AutoConfig

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # offline lookups warn before failing
        cfg = AutoConfig.from_pretrained(name)
        return (
            ModelShape(
                _count_from_config(cfg),
                hidden=cfg.hidden_size,
                layers=cfg.num_hidden_layers,
                vocab=cfg.vocab_size,
                heads=getattr(cfg, "num_attention_heads", None),
            ),
            "config",
        )
    except Exception:  # noqa: BLE001 - offline hub id, unusual config: fall back to the name
        pass
    m = re.search(r"(\d+(?:\.\d+)?)\s*([BM])(?![a-z])", name.split("/")[-1], flags=re.IGNORECASE)
    if m:
        return ModelShape(float(m.group(1)) * (1e9 if m.group(2).upper() == "B" else 1e6)), "name"
    return None, "unknown"


def _count_from_config(cfg: Any) -> float:
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        return float(sum(p.numel() for p in model.parameters()))
    except Exception:  # noqa: BLE001 - rough formula: 12 h^2 per layer + embeddings
        h, n, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
        tied = getattr(cfg, "tie_word_embeddings", False)
        return float(12 * n * h * h + v * h * (1 if tied else 2))


def estimate_memory(
    shape: ModelShape,
    dtype: str,
    *,
    training: bool,
    copies: int,
    micro_batch: int = 1,
    seq_len: int = 0,
    generated: int | None = None,
    eager_attention: bool = False,
) -> MemoryEstimate:
    """Bytes of one run (see the module docstring for each part).

    Args:
        shape: The model.
        dtype: ``float32`` or ``bfloat16``.
        training: Gradients, optimizer and backward activations (else a forward pass only).
        copies: Frozen copies of the weights (KL reference, teacher snapshot).
        micro_batch: Rows per forward/backward.
        seq_len: Longest row in tokens.
        generated: Scored (generated) tokens per row: the loss runs the LM head on those only
            (``trainers/update.py``, ``score_mask``); ``None``: every token.
        eager_attention: Attention scores are materialised (``a·s²`` per layer); transformers' default
            ``sdpa`` attention does not keep them.
    """
    width = 2 if dtype == "bfloat16" else 4
    p = shape.params
    weights = p * width * (1 + copies) + (p * (width + 8) if training else 0.0)
    acts = logits = 0.0
    if shape.hidden and shape.layers and seq_len:
        s, b, h = seq_len, micro_batch, shape.hidden
        score = 5 * (shape.heads or 1) * s / h if eager_attention else 0.0
        per_layer = s * b * h * (34 + score) * width / 2  # Korthikanti §4.1 is in bytes at width 2
        acts = per_layer * shape.layers if training else per_layer  # no backward: one layer alive at a time
    if shape.vocab and seq_len:
        # fp32 logits, their log_softmax and (training) the gradient of both
        scored = min(seq_len, generated) if generated is not None else seq_len
        logits = micro_batch * scored * shape.vocab * 4 * (3 if training else 2)
    return MemoryEstimate(weights=weights, activations=acts, logits=logits, runtime=RUNTIME_BYTES)


def available_memory(device: str) -> tuple[float, str]:
    """Free bytes where the model will live, and its name."""
    try:
        import torch

        if device != "cpu" and torch.cuda.is_available():
            idx = torch.device(device).index or 0 if device.startswith("cuda") else 0
            free, _ = torch.cuda.mem_get_info(idx)
            return float(free), f"GPU {torch.cuda.get_device_name(idx)}"
    except Exception:  # noqa: BLE001 - fall back to host RAM
        pass
    import psutil

    return float(psutil.virtual_memory().available), "host RAM"
