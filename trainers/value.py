"""A value head for StepPO: a scalar on top of the policy's hidden states, and its clipped loss.

StepPO (arXiv 2604.18401; ALGORITHMS.md §8) reads ``V_k`` at the token right before step ``k``
(the last prompt token of the step in the per-step layout). :func:`attach_value_head` puts a
:class:`ValueHead` on the policy (shared backbone); the update regresses the values at
:func:`step_value_mask` to the step returns ``G_k`` with :func:`clipped_value_error` (PPO's clipped MSE).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "VALUE_HEAD_NAME",
    "ValueHead",
    "attach_value_head",
    "clipped_value_error",
    "get_value_head",
    "step_value_mask",
    "step_value_positions",
]

VALUE_HEAD_NAME = "value_head"
"""Attribute under which :func:`attach_value_head` registers the head (its weights are saved as
``value_head.proj.weight`` / ``value_head.proj.bias`` in the checkpoint's ``model.safetensors``)."""


class ValueHead(nn.Module):
    """``V = w . h + b`` per position; zero-initialised so a fresh critic predicts 0."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, L, H] -> [B, L]
        """Values of every position."""
        return self.proj(hidden.to(self.proj.weight.dtype)).float().squeeze(-1)  # [B, L]


def attach_value_head(model: nn.Module) -> ValueHead:
    """Register a fresh :class:`ValueHead` on ``model`` (policy and critic share the backbone).

    The head becomes part of ``model.parameters()`` (so the optimizer, FSDP sharding and
    checkpoints include it) and lives on the model's device. Attach it *after* LoRA so peft does
    not freeze it. Generation is unaffected: the head is only called on hidden states by the trainer.

    Raises:
        ValueError: ``model`` already has a value head, or no ``config.hidden_size``.
    """
    if get_value_head(model) is not None:
        raise ValueError(f"model already has a {VALUE_HEAD_NAME!r}; attach it once")
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if hidden is None:
        raise ValueError("attach_value_head needs a transformers model with config.hidden_size")
    ref = next(model.parameters())
    head = ValueHead(int(hidden)).to(ref.device)
    model.add_module(VALUE_HEAD_NAME, head)
    return head


def get_value_head(model: nn.Module) -> ValueHead | None:
    """The head registered by :func:`attach_value_head`, or ``None``."""
    head = model._modules.get(VALUE_HEAD_NAME)
    return head if isinstance(head, ValueHead) else None


def step_value_positions(
    mask: torch.Tensor,  # [B, L]
    step_index: torch.Tensor,  # [B, L] long
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each step's value is read: the token before the step's first trainable token in its row.

    Returns:
        ``(rows [N], value_pos [N], first_pos [N])``: the row, the value position (first trainable
        position minus 1, at least 0) and the first trainable position of each step run.
    """
    on = (mask > 0) & (step_index >= 0)  # [B, L]
    prev = torch.full_like(step_index, -2)  # [B, L] step of the previous trainable token, -2 if none
    prev[:, 1:] = torch.where(on[:, :-1], step_index[:, :-1], torch.full_like(step_index[:, :-1], -2))
    first = on & (step_index != prev)  # [B, L] first trainable token of a step run
    rows, pos = first.nonzero(as_tuple=True)
    return rows, (pos - 1).clamp(min=0), pos


def step_value_mask(
    mask: torch.Tensor,  # [B, L]
    step_index: torch.Tensor,  # [B, L] long
) -> torch.Tensor:  # [B, L]
    """1 on the first trainable token of every step run, 0 elsewhere.

    In the token-aligned convention of ``trainers.update.token_logprobs`` (``values[b, l]`` = value
    of the state that predicts token ``l``) these are exactly the positions holding ``V_k``, the value
    at the token before step ``k`` (ALGORITHMS.md §8), so the critic loss reads values there.
    """
    rows, _, first = step_value_positions(mask, step_index)
    out = torch.zeros_like(mask, dtype=torch.float32)  # [B, L]
    out[rows, first] = 1.0
    return out


def clipped_value_error(
    values: torch.Tensor,  # [B, L] current critic values (with grad)
    values_old: torch.Tensor | None,  # [B, L] critic values at rollout time
    returns: torch.Tensor,  # [B, L] value targets (CreditOutput.returns)
    *,
    clip: float | None,
) -> torch.Tensor:  # [B, L]
    """PPO's clipped squared value error per token (PPO arXiv 1707.06347 §4; StepPO's critic, ALGORITHMS.md §8).

    ``max((V - G)^2, (V_old + clip(V - V_old, -clip, clip) - G)^2)``; plain ``(V - G)^2`` when ``clip``
    or ``values_old`` is ``None``. The loss is ``0.5 *`` its mean over the value positions.
    """
    err = (values - returns) ** 2  # [B, L]
    if clip is None or values_old is None:
        return err
    v_clip = values_old + (values - values_old).clamp(-clip, clip)  # [B, L]
    return torch.maximum(err, (v_clip - returns) ** 2)
