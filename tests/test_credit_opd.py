"""ALGORITHMS.md §7 as a named method: ``grpo+opd`` adds the OPD per-token reward to the GRPO advantage."""

import pytest
import torch
from stepgym.trainers.credit import CreditBatch, get_credit


def _batch(delta):
    # one group of two trajectories, one row each: [prompt, g, g, g]; scores 1 and 0
    mask = torch.tensor([[0.0, 1.0, 1.0, 1.0]] * 2)
    logp_old = torch.full_like(mask, -2.0) * mask
    return CreditBatch(
        mask=mask,
        step_index=torch.where(mask > 0, 0, -1),
        action_mask=torch.zeros_like(mask),
        traj_index=torch.tensor([0, 1]),
        group_index=torch.tensor([0, 0]),
        scores=torch.tensor([1.0, 0.0]),
        success=torch.tensor([True, False]),
        truncated=torch.tensor([False, False]),
        step_rewards=((1.0,), (0.0,)),
        logp_old=logp_old,
        logp_teacher=(logp_old + torch.tensor(delta)) * mask,
    )


DELTA = [[0.0, 0.5, -0.25, 0.0], [0.0, 0.0, 1.0, -1.0]]


def test_grpo_plus_opd_adds_the_reward_to_the_advantage():
    b = _batch(DELTA)
    # GRPO: scores (1, 0): mean 0.5, unbiased sd 0.7071 -> A = +-0.5 / (0.7071 + 1e-6) = +-0.70711
    a = 0.5 / (0.5**0.5 + 1e-6)
    # OPD reward (coef 1): -(logp_s - logp_t) = Delta on every target token (targets = mask here)
    want = torch.tensor([[0.0, a + 0.5, a - 0.25, a], [0.0, -a, -a + 1.0, -a - 1.0]])
    out = get_credit("grpo+opd")(b)
    torch.testing.assert_close(out.advantages, want, atol=1e-5, rtol=0)
    assert out.aux is None  # a reward, not an auxiliary loss (that is grpo+opsd)
    # the two parts are exactly the existing methods': grpo + opsd(mode="reward")
    parts = get_credit("grpo")(b).advantages + get_credit("opsd")(b, mode="reward").advantages
    torch.testing.assert_close(out.advantages, parts)
    # coef scales only the reward part; gamma sums it forward within the row
    half = get_credit("grpo+opd")(b, coef=0.5).advantages
    torch.testing.assert_close(half[0, 1], torch.tensor(a + 0.25), atol=1e-5, rtol=0)
    disc = get_credit("grpo+opd")(b, gamma=0.5).advantages
    torch.testing.assert_close(disc[0, 1], torch.tensor(a + 0.5 + 0.5 * -0.25), atol=1e-5, rtol=0)


def test_grpo_plus_opd_needs_a_teacher():
    assert get_credit("grpo+opd").needs_teacher
    b = _batch(DELTA)
    with pytest.raises(ValueError, match="needs CreditBatch.logp_teacher"):
        get_credit("grpo+opd")(CreditBatch(**{**b.__dict__, "logp_teacher": None}))
