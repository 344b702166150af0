"""Collating hand-built trajectories into padded rows and a CreditBatch."""

import pytest
import torch
from stepgym.envs.records import TokenSequence, Trajectory
from stepgym.trainers.batch import collate
from stepgym.trainers.credit import get_credit
from trainer_helpers import concat_sequence, step


def _traj(group, outcome, sequences, steps):
    return Trajectory(
        env_id="test/Fake-v0",
        task_id=group,
        subset="s",
        group_id=group,
        steps=steps,
        outcome=outcome,
        success=outcome > 0,
        truncated=False,
        sequences=sequences,
    )


def _per_step_row(k, prompt, gen):
    n = len(prompt) + len(gen)
    return TokenSequence(
        ids=prompt + gen,
        loss_mask=[0] * len(prompt) + [1] * len(gen),
        logprobs=[0.0] * len(prompt) + [-0.5] * len(gen),
        step_index=[-1] * len(prompt) + [k] * len(gen),
        action_mask=[0] * (n - 1) + [1],
    )


def test_collate_per_step_layout_shapes_indices_and_penalty():
    # group "a": traj 0 has 2 steps (step 1 invalid: the env's reward -0.1 is its penalty), outcome 1;
    # traj 1 has 1 step, outcome 0.
    # group "b": traj 2 has 1 step, outcome 1.
    t0 = _traj(
        "a",
        1.0,
        [_per_step_row(0, [5, 6], [7, 8, 9]), _per_step_row(1, [5], [10])],
        [step(0, reward=0.0, obs="room"), step(1, valid=False, reward=-0.1, obs="hall")],
    )
    t1 = _traj("a", 0.0, [_per_step_row(0, [5, 6, 7], [11])], [step(0, obs="room")])
    t2 = _traj("b", 1.0, [_per_step_row(0, [3], [4, 4])], [step(0, obs="x")])
    batch = collate([t0, t1, t2], pad_token_id=0)
    c = batch.credit
    # rows: 2 + 1 + 1 = 4, L = max(5, 2, 4, 3) = 5
    assert batch.input_ids.shape == (4, 5)
    assert batch.input_ids[1].tolist() == [5, 10, 0, 0, 0]
    assert batch.attention_mask[1].tolist() == [1, 1, 0, 0, 0]
    assert c.mask[0].tolist() == [0, 0, 1, 1, 1]
    assert c.step_index[1].tolist() == [-1, 1, -1, -1, -1]
    assert c.logp_old[3].tolist() == [0.0, -0.5, -0.5, 0.0, 0.0]
    assert c.traj_index.tolist() == [0, 0, 1, 2]
    assert c.group_index.tolist() == [0, 0, 1]
    # score = outcome + the invalid steps' rewards (the env's penalties): traj 0 -> 1 - 0.1 = 0.9;
    # step rewards are the env's, with the penalty once (not -0.2)
    assert c.scores.tolist() == pytest.approx([0.9, 0.0, 1.0])
    assert c.step_rewards == ((0.0, -0.1), (0.0,), (0.0,))
    assert c.success.tolist() == [True, False, True]
    assert c.anchors == (("room", "hall"), ("room",), ("x",))
    # the credit registry consumes it: GRPO in group a, scores (0.9, 0) -> mean 0.45, sd 0.6364 -> +-0.7071
    adv = get_credit("grpo")(c).advantages
    assert adv[0, 2].item() == pytest.approx(0.45 / (0.9 / 2**0.5 + 1e-6), rel=1e-5)
    assert adv[2, 3].item() == pytest.approx(-0.7071, abs=1e-4)
    # group "b" has one trajectory: mu = 0, sd = 1, so A = 1 / (1 + 1e-6) on its trainable tokens 1 and 2
    assert adv[3].tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0, 0.0], abs=1e-5)


def test_collate_concat_layout_keeps_observations_masked():
    seq = concat_sequence([1, 2], [([3, 4], [5]), ([6], [7, 8])])
    b = collate([_traj("a", 1.0, [seq], [step(0), step(1)])])
    assert b.credit.mask[0].tolist() == [0, 0, 1, 1, 0, 1, 0, 0]
    assert b.credit.step_index[0].tolist() == [-1, -1, 0, 0, -1, 1, -1, -1]
    assert b.credit.action_mask[0].tolist() == [0, 0, 0, 1, 0, 1, 0, 0]


def test_collate_errors():
    with pytest.raises(ValueError, match="no trajectories"):
        collate([])
    with pytest.raises(ValueError, match="none of the 1 trajectories has token sequences"):
        collate([_traj("a", 1.0, [], [step(0)])])
    assert torch.is_tensor(collate([_traj("a", 1.0, [_per_step_row(0, [1], [2])], [step(0)])]).input_ids)
