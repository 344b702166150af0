"""Optimizer, learning-rate schedule and LoRA adapters built from the run config.

* :func:`build_optimizer` -- AdamW over the trainable parameters (``OptimConfig``).
* :func:`lr_factor` / :func:`build_scheduler` -- linear warm-up over ``warmup_steps``, then constant,
  linear decay or cosine decay to 0 at ``total_steps``; one scheduler step per optimizer step.
* :func:`apply_lora` -- wrap the model with peft LoRA adapters (``LoRAConfig``); only adapter weights train.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from gymnasium.error import DependencyNotInstalled
from stepgym.trainers.config import LoRAConfig, OptimConfig

__all__ = ["apply_lora", "build_optimizer", "build_scheduler", "lr_factor"]


def build_optimizer(params: Iterable[torch.nn.Parameter], config: OptimConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad."""
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False (LoRA not applied?)")
    return torch.optim.AdamW(
        trainable, lr=config.lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )


def lr_factor(step: int, config: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` while ``step < warmup_steps``. Afterwards, with
    ``p = (step - warmup) / max(1, total_steps - warmup)`` clamped to [0, 1]: constant 1,
    linear ``1 - p``, cosine ``0.5 * (1 + cos(pi * p))``.
    """
    warm = config.warmup_steps
    if step < warm:
        return (step + 1) / warm
    p = min(1.0, max(0.0, (step - warm) / max(1, total_steps - warm)))
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "linear":
        return 1.0 - p
    return 0.5 * (1.0 + math.cos(math.pi * p))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor` (``total_steps`` counts optimizer steps)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config, total_steps))


def apply_lora(model: torch.nn.Module, config: LoRAConfig) -> torch.nn.Module:
    """Wrap ``model`` with LoRA adapters (peft); returns the model unchanged when LoRA is disabled.

    Raises:
        DependencyNotInstalled: peft is missing.
        ValueError: None of ``config.target_modules`` exists in the model.
    """
    if not config.enabled:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise DependencyNotInstalled(f"LoRA needs peft ({e}); `pip install 'stepgym[torch]'`") from e
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in config.target_modules if t in names]
    if not targets:
        raise ValueError(
            f"none of lora.target_modules {list(config.target_modules)} is a module of the model; "
            f"linear layers found include {sorted(n for n in names if n.endswith('proj'))[:8]}"
        )
    peft_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)
