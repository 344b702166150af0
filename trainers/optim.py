"""Optimizer, learning-rate schedule and LoRA adapters built from the run config.

* :func:`build_optimizer` -- AdamW over the trainable parameters (``OptimConfig``).
* :func:`lr_factor` / :func:`build_scheduler` -- linear warm-up over ``warmup_steps``, then constant,
  linear decay or cosine decay to 0 at ``total_steps``; one scheduler step per optimizer step.
  The shapes are transformers' ``get_scheduler`` ones; the warm-up starts one step later, at
  ``lr / warmup_steps`` instead of transformers' 0 (a first update at lr 0 would be a wasted step).
* :func:`apply_lora` -- wrap the model with peft LoRA adapters (``LoRAConfig``); only adapter weights train.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

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


_HF_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
"""``OptimConfig.schedule`` -> the name transformers' ``get_scheduler`` knows it by."""


def _factor_fn(config: OptimConfig, total_steps: int) -> Callable[[int], float]:
    """The schedule function of transformers' ``get_scheduler`` (its ``lr_lambdas[0]``), warm-up shifted by one step.

    transformers ramps as ``step / warmup_steps``, so its first optimizer step runs at lr 0 and does
    nothing; here step ``s < warmup_steps`` takes transformers' factor of ``s + 1``. After the warm-up
    the factors are transformers' own; the step is clamped to ``total_steps`` (its cosine would rise again).
    """
    from transformers import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # get_scheduler needs an optimizer
    hf = get_scheduler(
        _HF_SCHEDULES[config.schedule],
        probe,
        num_warmup_steps=config.warmup_steps,
        num_training_steps=total_steps,
    ).lr_lambdas[0]
    warm = config.warmup_steps
    return lambda step: hf(step + 1 if step < warm else min(step, max(total_steps, warm)))


def lr_factor(step: int, config: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup_steps`` while ``step < warmup_steps``. Afterwards, with
    ``p = (step - warmup) / max(1, total_steps - warmup)`` clamped to [0, 1]: constant 1,
    linear ``1 - p``, cosine ``0.5 * (1 + cos(pi * p))`` (transformers' ``get_scheduler`` formulas).
    """
    return _factor_fn(config, total_steps)(step)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` following :func:`lr_factor` (``total_steps`` counts optimizer steps)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _factor_fn(config, total_steps))


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
