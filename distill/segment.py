"""Step segmentation: which tokens belong to which agent step, and which of them are targets.

Everything here reads the per-token arrays of a :class:`~stepgym.envs.records.TokenSequence`
(``step_index``, ``loss_mask``, ``action_mask``) and never re-tokenizes text, so it works the same
for the per-step layout (one row per step) and the concat layout (one row per trajectory).

Target span (ALGORITHMS.md §4.1):

* ``"step"`` -- every generated token of step ``k`` (reasoning + action; Search-QA default);
* ``"action"`` -- only the action-span tokens of step ``k`` (ALFWorld default).

A step with no target token (e.g. an unfinished final action under ``"action"``) is absent.
Position 0 is never a target: no context predicts the first token of a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from stepgym.envs.records import TokenSequence

__all__ = ["Target", "StepSpan", "step_spans", "step_ids", "target_mask", "target_mask_from_rows"]

Target = Literal["step", "action"]


@dataclass(frozen=True)
class StepSpan:
    """Where step ``k`` sits in one row.

    The teacher block of the step (inline placement) is ``hindsight + ids[start:end]``; its
    student context is ``ids[:start]``.
    """

    step: int
    """Step index ``k``."""
    start: int
    """First position whose ``step_index == k`` (the hindsight goes right before it)."""
    end: int
    """One past the last target position of the step."""
    targets: tuple[int, ...]
    """Target positions (inside ``[start, end)``), ascending."""


def _is_target(step_index: int, loss: int, action: int, target: Target) -> bool:
    if step_index < 0 or not loss:
        return False
    return bool(action) if target == "action" else True


def step_spans(row: TokenSequence, target: Target = "step") -> list[StepSpan]:
    """Segment one row into its steps (ordered by first position), absent steps dropped.

    Args:
        row: A token sequence (either layout).
        target: ``"step"`` (all generated tokens of the step) or ``"action"`` (action span only).

    Returns:
        One :class:`StepSpan` per step that has at least one target token.
    """
    if target not in ("step", "action"):
        raise ValueError(f"target must be 'step' or 'action', got {target!r}")
    starts: dict[int, int] = {}
    targets: dict[int, list[int]] = {}
    for pos, (k, loss, act) in enumerate(zip(row.step_index, row.loss_mask, row.action_mask)):
        if k < 0:
            continue
        starts.setdefault(k, pos)
        if pos > 0 and _is_target(k, loss, act, target):
            targets.setdefault(k, []).append(pos)
    spans = [StepSpan(k, starts[k], tg[-1] + 1, tuple(tg)) for k, tg in targets.items()]
    return sorted(spans, key=lambda s: s.start)


def target_mask(
    step_index: torch.Tensor,  # [B, L] long
    loss_mask: torch.Tensor,  # [B, L]
    action_mask: torch.Tensor,  # [B, L]
    target: Target = "step",
) -> torch.Tensor:  # [B, L] float
    """Tensor form of the target span: 1 on target tokens, 0 elsewhere (position 0 excluded)."""
    if target not in ("step", "action"):
        raise ValueError(f"target must be 'step' or 'action', got {target!r}")
    m = (step_index >= 0) & (loss_mask > 0)  # [B, L]
    if target == "action":
        m = m & (action_mask > 0)
    m[:, 0] = False
    return m.to(torch.float32)


def target_mask_from_rows(rows: list[TokenSequence], target: Target = "step") -> torch.Tensor:  # [B, L]
    """:func:`target_mask` of right-padded rows (``L`` = longest row)."""
    L = max((len(r) for r in rows), default=0)
    out = torch.zeros(len(rows), L)
    for b, row in enumerate(rows):
        for span in step_spans(row, target):
            out[b, list(span.targets)] = 1.0
    return out


def step_ids(
    traj_index: torch.Tensor,  # [B] long
    step_index: torch.Tensor,  # [B, L] long
    mask: torch.Tensor,  # [B, L]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Number the (trajectory, step) pairs of a batch, whatever the layout.

    Returns:
        ``sid`` [B, L] long: dense id 0..S-1 of the step of each token where ``mask > 0``, -1 elsewhere;
        ``step_traj`` [S] long: trajectory of each step; ``step_k`` [S] long: its index ``k``.
        Steps are ordered by (trajectory, k).
    """
    B, L = step_index.shape
    on = (mask > 0) & (step_index >= 0)  # [B, L]
    K = int(step_index.max().item()) + 1 if step_index.numel() else 1
    K = max(K, 1)
    key = traj_index.unsqueeze(1).to(torch.long) * K + step_index.clamp(min=0)  # [B, L]
    keys = key[on]  # [N]
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)  # [S], [N]
    sid = torch.full((B, L), -1, dtype=torch.long)
    sid[on] = inv
    return sid, uniq // K, uniq % K
