"""A value head for StepPO: a scalar on top of a causal LM's hidden states, and its clipped loss.

StepPO (arXiv 2604.18401; ALGORITHMS.md §8) reads ``V_k`` at the token right before step ``k``
(the last prompt token of the step in the per-step layout). :class:`CausalLMCritic` gives a value
at every position (``[B, L]``, what ``CreditBatch.values`` holds); :func:`step_value_loss` regresses
the values at those positions to the step returns ``G_k`` with PPO's clipped MSE.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "VALUE_HEAD_NAME",
    "CausalLMCritic",
    "ValueHead",
    "attach_value_head",
    "get_value_head",
    "step_value_loss",
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


class CausalLMCritic(nn.Module):
    """A critic: the decoder of a causal LM (its own copy, or the policy's when shared) + :class:`ValueHead`.

    Args:
        lm: A transformers ``*ForCausalLM`` (only its decoder is used).
        detach_backbone: Train only the head (the backbone runs under ``no_grad``), e.g. when the
            backbone is the policy itself.
    """

    def __init__(self, lm: nn.Module, *, detach_backbone: bool = False) -> None:
        super().__init__()
        self.backbone = lm.get_decoder()  # type: ignore[operator]
        self.head = ValueHead(lm.config.hidden_size)  # type: ignore[union-attr]
        self.detach_backbone = detach_backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, L]`` ids (right-padded) -> ``[B, L]`` values."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_backbone):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
        return self.head(hidden)  # [B, L]


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


def step_value_loss(
    values: torch.Tensor,  # [B, L] current critic values (with grad)
    old_values: torch.Tensor,  # [B, L] critic values at rollout time
    returns: torch.Tensor,  # [B, L] step returns G_k on the step's trainable tokens (CreditOutput.returns)
    mask: torch.Tensor,  # [B, L]
    step_index: torch.Tensor,  # [B, L] long
    *,
    clip: float = 0.2,
) -> torch.Tensor:  # []
    """PPO clipped value loss at each step's value position (StepPO's critic; PPO arXiv 1707.06347 §4).

    ``0.5 * mean_k max((V - G)^2, (V_old + clip(V - V_old, -clip, clip) - G)^2)`` over steps.
    """
    rows, vpos, fpos = step_value_positions(mask, step_index)
    if rows.numel() == 0:
        return values.sum() * 0.0
    g = returns[rows, fpos].detach()  # [N]
    v, v_old = values[rows, vpos], old_values[rows, vpos].detach()  # [N]
    v_clip = v_old + (v - v_old).clamp(-clip, clip)  # [N]
    return 0.5 * torch.maximum((v - g) ** 2, (v_clip - g) ** 2).mean()
