"""Supervised warm start: cross-entropy on the generated tokens of demonstration trajectories.

Demonstrations are ordinary :class:`~stepgym.envs.records.Trajectory` records whose token rows
were produced by a scripted agent through :func:`stepgym.agents.rollout.collect` (with
:class:`~stepgym.agents.scripted.TextAgentPolicy`), so the warm-started model sees exactly the
prompts and token boundaries RL will show it. The loss is the token mean of ``-log p(x_l | x_<l)``
over the rows' ``loss_mask`` tokens (the agent's own text; prompts and observations are context
only) -- standard behaviour cloning / SFT.

:func:`hindsight_sft_rows` builds the rows of a *hindsight-conditioned* teacher (issue 17, item 2(c)): each
row is the exact context the teacher rescoring sees (:func:`stepgym.distill.rescore.context_view`: the
hindsight block at the run's placement) followed by a successful trajectory's tokens, and the loss covers
only those successful agent tokens, so the teacher learns to act on what the hindsight says.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from stepgym.envs.records import Trajectory
from stepgym.trainers.batch import collate
from stepgym.trainers.update import token_logprobs

__all__ = ["SFTRows", "collect_demonstrations", "hindsight_sft_rows", "sft_loss", "sft_train"]

logger = logging.getLogger(__name__)


def sft_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, L] long
    attention_mask: torch.Tensor,  # [B, L]
    loss_mask: torch.Tensor,  # [B, L]
) -> torch.Tensor:  # []
    """Mean negative log-likelihood of the ``loss_mask`` tokens (0 when there is none).

    ``NLL = -sum_{b,l} m[b,l] log p(x[b,l] | x[b,<l]) / sum m`` with ``log p`` from
    :func:`~stepgym.trainers.update.token_logprobs` at temperature 1.
    """
    logp, _, _ = token_logprobs(model, input_ids, attention_mask, score_mask=loss_mask)  # [B, L]
    n = loss_mask.sum()
    return -(logp * loss_mask).sum() / n.clamp(min=1)


@dataclass(frozen=True)
class SFTRows:
    """Ready-made SFT rows (right-padded), for data that is not a trajectory's own rows (:func:`hindsight_sft_rows`)."""

    input_ids: torch.Tensor
    """[B, L] long."""
    attention_mask: torch.Tensor
    """[B, L] 1 on real tokens."""
    loss_mask: torch.Tensor
    """[B, L] 1 on the tokens the loss covers."""
    num_rows: int


def hindsight_sft_rows(
    trajectories: Sequence[Trajectory],
    tokenizer: Any,
    *,
    parts: Sequence[str] = ("outcome", "peer"),
    placement: str = "prefix",
) -> SFTRows:
    """Hindsight-conditioned demonstrations: the teacher's context of each trajectory, then a successful one's tokens.

    For every trajectory ``t`` of the batch the hindsight block is exactly the one the teacher rescoring
    builds for it (``build_hindsight_batch(trajectories, parts)``, rendered with the default template) at
    ``placement`` (:func:`~stepgym.distill.rescore.context_view`, the rows the rescoring scores). After it:

    * ``t`` succeeded: ``t``'s own rows (hindsight ``final_correctness: correct``);
    * ``t`` failed: the rows of the successful sibling the ``peer`` hindsight shows (the first successful member
      of ``t``'s group, as :func:`~stepgym.distill.hindsight.peer_hindsight` picks it): given "incorrect, a peer
      succeeded like this", the demonstrated continuation is what succeeded. Siblings share the task, so the
      prompt before the block is the same. A failed trajectory without a successful sibling gives no row.

    The loss mask is the shown rows' ``loss_mask`` (agent tokens), moved to their place after the block: only
    successful trajectories' agent tokens are ever trained on.

    Raises:
        ValueError: ``placement="inline"`` (a block before every step has no single row to train on), or no
            trajectory gives a row.
    """
    from stepgym.distill.hindsight import build_hindsight_batch, render_hindsight
    from stepgym.distill.rescore import context_view

    if placement not in ("prefix", "prompt"):
        raise ValueError(
            f"hindsight SFT rows need one hindsight block per row (placement 'prefix' or 'prompt'), got "
            f"{placement!r}; the inline placement puts a block before every step"
        )
    texts = build_hindsight_batch(trajectories, parts)
    rows, blocks = [], []
    for traj, text in zip(trajectories, texts):
        shown = (
            traj
            if traj.success
            else next((o for o in trajectories if o.group_id == traj.group_id and o.success and o is not traj), None)
        )
        if shown is None:
            continue
        block = render_hindsight(text, tokenizer) or []
        for seq in shown.sequences:
            rows.append(seq)
            blocks.append(block)
    if not rows:
        raise ValueError("no successful trajectory (nor a failed one with a successful sibling) to demonstrate")
    view = context_view(rows, blocks, placement=placement)  # type: ignore[arg-type]
    loss = torch.zeros(view.input_ids.shape, dtype=torch.float32)  # [B, Lv]
    for b, row in enumerate(rows):
        n = len(row.ids)
        loss[b, view.position[b, :n]] = torch.tensor(row.loss_mask, dtype=torch.float32)
    return SFTRows(view.input_ids, view.attention_mask, loss, len(rows))


def sft_train(
    model: torch.nn.Module,
    trajectories: Sequence[Trajectory] | SFTRows,
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    pad_token_id: int = 0,
    max_grad_norm: float = 1.0,
    schedule: str = "constant",
    on_step: Callable[[int, float], None] | None = None,
    micro_batch_size: int | None = None,
) -> list[float]:
    """Behaviour cloning on ``trajectories``' token rows with AdamW; returns the loss of every optimizer step.

    Args:
        model: A causal LM (trained in place, left in eval mode).
        trajectories: Demonstrations with token rows (``collect`` output), or ready-made :class:`SFTRows`.
        epochs: Passes over the rows (shuffled per epoch by ``seed``).
        lr: AdamW learning rate (constant).
        batch_size: Rows per optimizer step.
        seed: Seeds the row order.
        pad_token_id: Id written into padding.
        max_grad_norm: Gradient-norm clip.
        schedule: ``"constant"`` lr, or ``"cosine"``: ``lr * (1 + cos(pi * k / K)) / 2`` at optimizer
            step ``k`` of ``K`` (decays to 0 by the last step; a low final lr sharpens the fit).
        on_step: Called with ``(optimizer_step, loss)`` after each step (progress bars).
        micro_batch_size: Rows per forward/backward (gradients accumulate over the step's rows; the loss is
            still the token mean over all of them, so the update is the same); ``None`` = ``batch_size``.
            Peak memory grows with it: SmolLM2-135M on ~500-token Search-QA rows peaked at 8.3 GB with 4 rows.

    Raises:
        ValueError: No trajectory has token rows, or a setting is out of range.
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs={epochs} and batch_size={batch_size} must both be >= 1")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size={micro_batch_size} must be >= 1 (or None: the whole batch at once)")
    micro = min(micro_batch_size or batch_size, batch_size)
    if schedule not in ("constant", "cosine"):
        raise ValueError(f"schedule={schedule!r} is not known; use 'constant' or 'cosine'")
    if isinstance(trajectories, SFTRows):
        batch = trajectories
        ids, attn, mask = batch.input_ids, batch.attention_mask, batch.loss_mask  # [B, L] each
    else:
        batch = collate(trajectories, pad_token_id=pad_token_id)
        ids, attn, mask = batch.input_ids, batch.attention_mask, batch.mask  # [B, L] each
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    total = epochs * math.ceil(batch.num_rows / batch_size)
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(batch.num_rows, generator=gen)
        for start in range(0, batch.num_rows, batch_size):
            rows = order[start : start + batch_size]
            n_total = mask[rows].sum().clamp(min=1)  # the step's loss is the token mean over all its rows
            opt.zero_grad(set_to_none=True)
            loss = torch.zeros(())
            for m0 in range(0, len(rows), micro):
                sub = rows[m0 : m0 + micro]
                width = int(attn[sub].sum(1).max())  # drop columns that are padding in every row
                part = sft_loss(
                    model,
                    ids[sub, :width].to(device),
                    attn[sub, :width].to(device),
                    mask[sub, :width].to(device),
                ) * (mask[sub].sum() / n_total)  # token mean of the micro-batch, re-weighted to the step's mean
                part.backward()
                loss = loss + part.detach().cpu()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * len(losses) / total))
            opt.step()
            losses.append(loss.item())
            if on_step is not None:
                on_step(len(losses), losses[-1])
    model.eval()
    return losses


def collect_demonstrations(
    env_id: str,
    make_agent: Callable[[Any], Any],
    tokenizer: Any,
    tasks: Sequence[str | int],
    *,
    env_kwargs: dict[str, Any] | None = None,
    group_size: int = 1,
    layout: str = "per-step",
    max_turns: int = 50,
    seed: int = 0,
    stop: Sequence[str] = ("</action>",),
    num_envs: int = 8,
    max_new_tokens: int = 64,
    max_prompt_tokens: int | None = None,
    max_total_tokens: int | None = None,
    instructions: str | None = None,
) -> list[Trajectory]:
    """Roll out a scripted :class:`~stepgym.agents.scripted.TextAgent` into token-level trajectories.

    Args:
        env_id: Registered env id.
        make_agent: Builds a fresh agent per episode (called with the episode key).
        tokenizer: Tokenizer with a chat template (the model's).
        tasks: Task ids (or seeds) to play, ``group_size`` episodes each.
        env_kwargs: ``gym.make`` keyword arguments.
        group_size: Episodes per task.
        layout: ``"per-step"`` or ``"concat"`` (as in training).
        max_turns: Agent steps per episode.
        seed: Reset seed of the first episode.
        stop: Stop strings (the action text is cut after the first).
        num_envs: Envs in the in-process pool.
        max_new_tokens: Most tokens of one action (longer ones are cut, as RL's sampling would).
        max_prompt_tokens: Prompt cap, as in training (``None``: no cap).
        max_total_tokens: Trajectory token cap, as in training (``None``: no cap).
        instructions: Text that starts the first prompt (``None``: the env's ``protocol``), as in training.
    """
    from stepgym.agents.policy import SamplingParams
    from stepgym.agents.render import ChatRenderer
    from stepgym.agents.rollout import collect
    from stepgym.agents.scripted import TextAgentPolicy
    from stepgym.envs.pool import EnvPool

    pool = EnvPool(env_id, num_envs=num_envs, env_kwargs=dict(env_kwargs or {}))
    try:
        return collect(
            pool,
            TextAgentPolicy(make_agent, tokenizer),
            list(tasks),
            group_size=group_size,
            layout=layout,  # type: ignore[arg-type]
            renderer=ChatRenderer(tokenizer),
            sampling=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop)),
            max_turns=max_turns,
            max_prompt_tokens=max_prompt_tokens,
            max_total_tokens=max_total_tokens,
            instructions=instructions,
            seed=seed,
        )
    finally:
        pool.close()
