"""Controls for the step-credit comparison (issue 17): a positive control, two negative ones, a scripted teacher.

* ``oracle`` (positive control): GRPO's trajectory advantage on the env's decisive action tokens
  only, 0 on every other token. It is what perfect step-level credit does with the same outcome
  signal; a metric or a learning curve that cannot separate it from ``grpo`` cannot see step credit.
  The decisive flags come from the trajectories (``info["decisive"]``), announced for each batch by
  :func:`stepgym.trainers.credit_probe.probe_rollout` (the credit sandbox runs with it); without an
  announcement the method fails and says how to fix it.
* ``placebo_step`` (update-size control): the same GRPO advantage as ``oracle``, on the action tokens of one
  *neutral* step drawn at random in each trajectory that has a decisive one: as many updated steps and the
  same magnitudes as the oracle, on the wrong step. If the oracle beats GRPO only because it changes the
  policy less, this arm does as well; if it beats this arm, the step it picks matters.
* ``no_update`` (update-size control): advantage 0 on every token, so no policy gradient at all (the
  trainer skips the forward/backward and logs it): what the warm start does without any learning signal.
* ``stepopsd_nohindsight`` (negative control): StepOPSD with an empty hindsight, so the teacher gap
  ``Delta`` is the snapshot's staleness alone (``teacher.hindsight = ()``; with ``teacher.mode="live"``
  it is exactly 0).
* ``stepopsd_shuffled_peer`` (negative control): StepOPSD whose peer trajectory is a success of
  *another* task (``distill.hindsight.shuffled_peer_hindsight``): the form of the real hindsight, none
  of its information about this task's decisive step.

Both negative controls are StepOPSD itself (same options, same defaults) with a different teacher,
set through ``config_defaults`` where the user left ``teacher.hindsight`` unset.

:func:`scripted_teacher_logprobs` is an oracle teacher for fixed batches: ``logp_teacher = logp_old
+ Delta`` with ``Delta = +delta`` on the decisive step's target tokens of a successful trajectory and
``-delta`` of a failed one (what an informative hindsight teacher should say), 0 elsewhere; it tests the
shaping mechanism alone, on the real credit code (``tests/test_credit_controls.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from stepgym.trainers.credit import CreditBatch, CreditOutput, group_advantages, register_credit
from stepgym.trainers.credit import stepopsd as _stepopsd
from stepgym.trainers.credit_probe import announced_flags

__all__ = [
    "decisive_token_mask",
    "no_update",
    "oracle",
    "placebo_step",
    "placebo_step_flags",
    "scripted_teacher_logprobs",
]


def decisive_token_mask(batch: CreditBatch, flags: Sequence[Sequence[bool]]) -> torch.Tensor:  # [B, L] bool
    """True on the tokens of decisive steps (``flags[t][k]``), over the batch's trainable tokens."""
    if len(flags) != batch.num_trajectories:
        raise ValueError(f"flags are for {len(flags)} trajectories but the batch has {batch.num_trajectories}")
    K = max((len(f) for f in flags), default=0)
    table = torch.zeros(batch.num_trajectories, K + 1, dtype=torch.bool)  # [T, K+1]; column K = "no step"
    for t, f in enumerate(flags):
        table[t, : len(f)] = torch.tensor([bool(x) for x in f], dtype=torch.bool)
    k = batch.step_index.clamp(min=0, max=K)  # [B, L]
    k = torch.where(batch.step_index < 0, torch.full_like(k, K), k)
    return table[batch.traj_index.unsqueeze(1), k] & (batch.mask > 0)  # [B, L]


@register_credit("oracle")
def oracle(batch: CreditBatch, *, normalize_std: bool = True, action_only: bool = True) -> CreditOutput:
    """Positive control: the GRPO advantage on the decisive (action) tokens only, 0 elsewhere (issue 17).

    Args:
        batch: The credit batch; its decisive flags must have been announced (``credit_probe.announce``).
        normalize_std: GRPO's std normalisation of the outcome advantage (off = Dr.GRPO).
        action_only: Only the action span of the decisive step (off: every generated token of the step).
    """
    flags = announced_flags(batch.num_trajectories, "oracle")
    traj_adv = group_advantages(batch.scores, batch.group_index, normalize_std=normalize_std)  # [T]
    keep = decisive_token_mask(batch, flags)  # [B, L]
    if action_only:
        keep &= batch.action_mask > 0
    adv = traj_adv[batch.traj_index].unsqueeze(1) * keep.float()  # [B, L]
    sel = adv[batch.mask > 0]
    metrics = {
        "adv_mean": float(sel.mean()) if sel.numel() else 0.0,
        "adv_std": float(sel.std(unbiased=False)) if sel.numel() else 0.0,
        "decisive_token_frac": float(keep[batch.mask > 0].float().mean()) if sel.numel() else 0.0,
    }
    return CreditOutput(adv, metrics=metrics)


def placebo_step_flags(flags: Sequence[Sequence[bool]], generator: torch.Generator | None = None) -> list[list[bool]]:
    """One neutral step per trajectory that has a decisive step (uniformly at random), none elsewhere.

    Trajectories without a decisive step, or whose every step is decisive, get no flagged step (like the oracle,
    whose advantage is 0 there), so the placebo updates as many steps as the oracle wherever it can.
    """
    out = []
    for f in flags:
        neutral = [k for k, d in enumerate(f) if not d]
        pick = neutral[int(torch.randint(len(neutral), (1,), generator=generator))] if any(f) and neutral else -1
        out.append([k == pick for k in range(len(f))])
    return out


@register_credit("placebo_step")
def placebo_step(batch: CreditBatch, *, normalize_std: bool = True, seed: int | None = None) -> CreditOutput:
    """Update-size control: the oracle's advantage on one random *neutral* step's action tokens (issue 17).

    Args:
        batch: The credit batch; its decisive flags must have been announced (``credit_probe.announce``).
        normalize_std: GRPO's std normalisation of the outcome advantage (off = Dr.GRPO).
        seed: Seed of the step draw; ``None`` draws from torch's global generator (seeded by the run's seed).
    """
    flags = announced_flags(batch.num_trajectories, "placebo_step")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    traj_adv = group_advantages(batch.scores, batch.group_index, normalize_std=normalize_std)  # [T]
    keep = decisive_token_mask(batch, placebo_step_flags(flags, gen)) & (batch.action_mask > 0)  # [B, L]
    adv = traj_adv[batch.traj_index].unsqueeze(1) * keep.float()  # [B, L]
    sel = adv[batch.mask > 0]
    metrics = {
        "adv_mean": float(sel.mean()) if sel.numel() else 0.0,
        "adv_std": float(sel.std(unbiased=False)) if sel.numel() else 0.0,
        "placebo_token_frac": float(keep[batch.mask > 0].float().mean()) if sel.numel() else 0.0,
    }
    return CreditOutput(adv, metrics=metrics)


@register_credit("no_update")
def no_update(batch: CreditBatch) -> CreditOutput:
    """Update-size control: advantage 0 on every token, so the policy gradient is exactly 0 (issue 17)."""
    return CreditOutput(torch.zeros_like(batch.mask, dtype=torch.float32), metrics={"adv_mean": 0.0, "adv_std": 0.0})


def _stepopsd_control(name: str) -> Callable[..., CreditOutput]:
    """StepOPSD itself under another name (same options and defaults); it lives here, not in ``credit``."""

    @functools.wraps(_stepopsd)
    def fn(batch: CreditBatch, **kwargs: Any) -> CreditOutput:
        return _stepopsd(batch, **kwargs)

    fn.__module__, fn.__name__, fn.__qualname__ = __name__, name, name
    return fn


# The negative controls are StepOPSD with another teacher context.
register_credit("stepopsd_nohindsight", needs_teacher=True, config_defaults={"teacher.hindsight": ()})(
    _stepopsd_control("stepopsd_nohindsight")
)
register_credit(
    "stepopsd_shuffled_peer",
    needs_teacher=True,
    config_defaults={"teacher.hindsight": ("outcome", "shuffled_peer")},
)(_stepopsd_control("stepopsd_shuffled_peer"))


def scripted_teacher_logprobs(
    batch: CreditBatch,
    flags: Sequence[Sequence[bool]],
    *,
    delta: float = 3.0,
    mode: str = "oracle",
    noise: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:  # [B, L]
    """``logp_teacher = logp_old + Delta`` on target tokens, a teacher whose gap is known exactly.

    Args:
        batch: The credit batch (``logp_old``, ``targets``, ``success``).
        flags: Per trajectory, the decisive flag of each step.
        delta: ``|Delta|`` on the flagged step: ``+delta`` in successful trajectories, ``-delta`` in failed.
        mode: ``"oracle"`` (the decisive steps), ``"shuffled"`` (one random *neutral* step per trajectory
            that has a decisive one: the gap of a teacher reading the wrong peer) or ``"none"`` (no step:
            only ``noise``, the no-hindsight teacher's staleness).
        noise: Std of Gaussian noise added to ``Delta`` on every target token (staleness).
        seed: Seed of the shuffled choice and of the noise.
    """
    if mode not in ("oracle", "shuffled", "none"):
        raise ValueError(f"mode={mode!r} is not known; use 'oracle', 'shuffled' or 'none'")
    rng = np.random.default_rng(seed)
    if mode == "shuffled":
        chosen = []
        for f in flags:
            neutral = [k for k, d in enumerate(f) if not d]
            pick = int(rng.choice(neutral)) if any(f) and neutral else -1
            chosen.append([k == pick for k in range(len(f))])
        flags = chosen
    elif mode == "none":
        flags = [[False] * len(f) for f in flags]
    on = decisive_token_mask(batch, flags).float()  # [B, L]
    sign = batch.success.float()[batch.traj_index].unsqueeze(1) * 2 - 1  # [B, 1] +1 successful, -1 failed
    gap = delta * sign * on  # [B, L]
    if noise > 0:
        g = torch.Generator().manual_seed(seed)
        gap = gap + noise * torch.randn(gap.shape, generator=g)
    return batch.logp_old + gap * batch.targets  # [B, L]
