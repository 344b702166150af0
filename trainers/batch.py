"""From trajectories to tensors: padded token rows plus the :class:`CreditBatch` credit methods read.

Rows are every :class:`~stepgym.envs.records.TokenSequence` of every trajectory, in trajectory order
(one row per step in the per-step layout, one per trajectory in the concat layout); rows are
right-padded to the longest. Trajectories sharing a ``group_id`` form one task group, numbered in
order of first appearance.

The invalid-action penalty has one owner, the env: an invalid step's reward *is* its penalty
(ALFWorld ``-invalid_penalty``, Search-QA ``-invalid_action_penalty``, 0 when the env has none).
``step_rewards`` are the env's rewards as returned, and a trajectory's score (ALGORITHMS.md §1.1) is
its outcome plus the rewards of its invalid steps, so each penalty counts once in both. (The outcome
never holds a penalty: ``agents/rollout.py`` reads it from ``info`` or a valid step's reward.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from stepgym.envs.records import Trajectory
from stepgym.trainers.credit import CreditBatch

__all__ = ["RolloutBatch", "collate"]


@dataclass(frozen=True)
class RolloutBatch:
    """The padded token rows of one training step and their credit batch."""

    input_ids: torch.Tensor
    """[B, L] long: token ids, ``pad_token_id`` after each row's end."""
    attention_mask: torch.Tensor
    """[B, L] long: 1 on real tokens, 0 on padding."""
    credit: CreditBatch
    """Masks, indices, scores and rollout log-probs (``credit.logp_old``) for the credit method."""

    @property
    def mask(self) -> torch.Tensor:
        """[B, L] float: trainable tokens."""
        return self.credit.mask

    @property
    def num_rows(self) -> int:
        """B."""
        return int(self.input_ids.shape[0])


def collate(
    trajectories: Sequence[Trajectory],
    *,
    pad_token_id: int = 0,
    training_step: int = 0,
) -> RolloutBatch:
    """Pad every token sequence of ``trajectories`` into one batch.

    Args:
        trajectories: The rollouts of one step (G per task, groups by ``group_id``).
        pad_token_id: Id written into padding positions.
        training_step: Training steps completed before this one (for credit schedules).

    Raises:
        ValueError: No trajectories, or no token rows at all (rollouts without ``sequences``).
    """
    if not trajectories:
        raise ValueError("collate got no trajectories; the rollout produced nothing to train on")
    rows = [(t, seq) for t, traj in enumerate(trajectories) for seq in traj.sequences]
    if not rows:
        raise ValueError(
            f"none of the {len(trajectories)} trajectories has token sequences; collect rollouts with a policy "
            "that records ids (scripted agents produce text only)"
        )
    B, L = len(rows), max(len(seq) for _, seq in rows)
    input_ids = torch.full((B, L), pad_token_id, dtype=torch.long)  # [B, L]
    attention = torch.zeros(B, L, dtype=torch.long)  # [B, L]
    mask = torch.zeros(B, L)  # [B, L]
    logp_old = torch.zeros(B, L)  # [B, L]
    step_index = torch.full((B, L), -1, dtype=torch.long)  # [B, L]
    action_mask = torch.zeros(B, L)  # [B, L]
    traj_index = torch.empty(B, dtype=torch.long)  # [B]
    for b, (t, seq) in enumerate(rows):
        n = len(seq)
        input_ids[b, :n] = torch.tensor(seq.ids, dtype=torch.long)
        attention[b, :n] = 1
        mask[b, :n] = torch.tensor(seq.loss_mask, dtype=torch.float32)
        logp_old[b, :n] = torch.tensor(seq.logprobs, dtype=torch.float32)
        step_index[b, :n] = torch.tensor(seq.step_index, dtype=torch.long)
        action_mask[b, :n] = torch.tensor(seq.action_mask, dtype=torch.float32)
        traj_index[b] = t

    groups: dict[str, int] = {}
    group_index = torch.tensor([groups.setdefault(tr.group_id, len(groups)) for tr in trajectories])  # [T]
    step_rewards = tuple(tuple(s.reward for s in tr.steps) for tr in trajectories)
    scores = torch.tensor(
        [tr.outcome + sum(s.reward for s in tr.steps if not s.valid) for tr in trajectories], dtype=torch.float32
    )  # [T]
    credit = CreditBatch(
        mask=mask,
        step_index=step_index,
        action_mask=action_mask,
        traj_index=traj_index,
        group_index=group_index,
        scores=scores,
        success=torch.tensor([tr.success for tr in trajectories], dtype=torch.bool),
        truncated=torch.tensor([tr.truncated for tr in trajectories], dtype=torch.bool),
        step_rewards=step_rewards,
        logp_old=logp_old * mask,
        anchors=tuple(tuple(s.observation for s in tr.steps) for tr in trajectories),
        training_step=training_step,
    )
    return RolloutBatch(input_ids=input_ids, attention_mask=attention, credit=credit)
