import pytest
import torch
from stepgym.trainers.credit import (
    CreditBatch,
    CreditOutput,
    check_credit_kwargs,
    get_credit,
    group_advantages,
    list_credits,
    register_credit,
)


def _batch(scores, groups, rows_per_traj=1, L=3):
    T = len(scores)
    traj_index = torch.arange(T).repeat_interleave(rows_per_traj)
    B = len(traj_index)
    mask = torch.tensor([[0.0, 1.0, 1.0]] * B)[:, :L]
    return CreditBatch(
        mask=mask,
        step_index=torch.where(mask > 0, 0, -1),
        action_mask=torch.zeros(B, L),
        traj_index=traj_index,
        group_index=torch.tensor(groups),
        scores=torch.tensor(scores),
        success=torch.tensor(scores) > 0,
        truncated=torch.zeros(T, dtype=torch.bool),
        step_rewards=tuple((s,) for s in scores),
        logp_old=torch.zeros(B, L),
    )


def test_group_advantages_by_hand():
    # group 0: [1, 0, 0, 1] mean 0.5, unbiased std sqrt(4*0.25/3) = 0.57735 -> +-0.866025
    # group 1: a single trajectory: mean 0, std 1 -> 0.7 / (1 + 1e-6)
    # group 2: all equal -> exactly 0
    adv = group_advantages(torch.tensor([1.0, 0, 0, 1, 0.7, 1, 1]), torch.tensor([0, 0, 0, 0, 1, 2, 2]))
    expected = torch.tensor([0.866025, -0.866025, -0.866025, 0.866025, 0.7 / (1 + 1e-6), 0, 0])
    torch.testing.assert_close(adv, expected, atol=1e-5, rtol=0)
    assert adv[5] == 0 and adv[6] == 0
    dr = group_advantages(torch.tensor([1.0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]), normalize_std=False)
    torch.testing.assert_close(dr, torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # RLOO: baseline = mean of the other three: 1 - 1/3, 0 - 2/3
    loo = group_advantages(torch.tensor([1.0, 0, 0, 1]), torch.tensor([0, 0, 0, 0]), leave_one_out=True)
    torch.testing.assert_close(loo, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))


def test_grpo_broadcasts_to_trainable_tokens_only():
    out = get_credit("grpo")(_batch([1.0, 0.0], [0, 0]))
    # two trajectories, mean .5, std sqrt(.5) -> +-0.7071
    torch.testing.assert_close(out.advantages[:, 0], torch.zeros(2))
    torch.testing.assert_close(out.advantages[0, 1:], torch.full((2,), 0.70710), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.advantages[1, 1:], torch.full((2,), -0.70710), atol=1e-4, rtol=0)


def test_cross_steps_uses_step_rows():
    # traj 0 has 3 step rows (score 1), traj 1 has 1 row (score 0): rows [1,1,1,0] mean .75,
    # unbiased std = sqrt((3*.0625 + .5625)/3) = 0.5 -> rows (1-.75)/.5 = .5 and (0-.75)/.5 = -1.5
    b = _batch([1.0, 0.0], [0, 0], rows_per_traj=1)
    b = CreditBatch(
        **{
            **b.__dict__,
            "traj_index": torch.tensor([0, 0, 0, 1]),
            "mask": torch.ones(4, 3),
            "step_index": torch.zeros(4, 3, dtype=torch.long),
            "action_mask": torch.zeros(4, 3),
            "logp_old": torch.zeros(4, 3),
        }
    )
    out = get_credit("grpo")(b, cross_steps=True)
    torch.testing.assert_close(out.advantages[:, 0], torch.tensor([0.5, 0.5, 0.5, -1.5]), atol=1e-5, rtol=0)


def test_unknown_names_and_options_fail_early():
    with pytest.raises(KeyError, match="Did you mean 'grpo'"):
        get_credit("grop")
    with pytest.raises(TypeError, match="Did you mean 'normalize_std'"):
        check_credit_kwargs("grpo", {"normalise_std": False})
    with pytest.raises(KeyError, match="cannot import module"):
        get_credit("no.such.module:thing")
    assert {"grpo", "dr_grpo", "rloo"} <= set(list_credits())


def test_user_method_registered_from_user_code():
    @register_credit("test_constant")
    def constant(batch: CreditBatch, *, value: float = 2.0) -> CreditOutput:
        return CreditOutput(batch.mask * value)

    method = check_credit_kwargs("test_constant", {"value": 3.0})
    assert method(_batch([1.0], [0]), value=3.0).advantages[0].tolist() == [0.0, 3.0, 3.0]
    with pytest.raises(TypeError, match="keyword-only"):
        register_credit("bad")(lambda batch, x: None)


def test_batch_validates_shapes():
    b = _batch([1.0, 0.0], [0, 0])
    with pytest.raises(ValueError, match=r"logp_old has shape \(2, 2\) but mask has shape \(2, 3\)"):
        CreditBatch(**{**b.__dict__, "logp_old": torch.zeros(2, 2)})
