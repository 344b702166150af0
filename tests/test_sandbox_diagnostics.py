"""Credit-causality AUC and the per-step reduction, on hand-computed cases and on sandbox episodes."""

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest
import stepgym.envs  # noqa: F401
from stepgym.agents.sandbox_agents import NoisyExpert
from stepgym.agents.scripted import run_episode
from stepgym.distill.diagnostics import (
    credit_causality_auc,
    decisive_auc,
    decisive_flags,
    mann_whitney_u,
    per_step_credit,
)


@pytest.mark.parametrize(
    "pos, neg, u",
    [
        # 3 beats 1 and 2 -> U = 2 of 2 pairs
        ([3], [1, 2], 2.0),
        # one tie -> half a win
        ([1], [1], 0.5),
        # (2,1) win twice, (0,1) lose twice -> U = 2 of 4
        ([2, 0], [1, 1], 2.0),
        # (1,1) .5, (1,2) 0, (3,1) 1, (3,2) 1 -> U = 2.5 of 4
        ([1, 3], [1, 2], 2.5),
        # empty side -> no pairs, U = 0
        ([], [1, 2], 0.0),
    ],
)
def test_mann_whitney_hand_cases(pos, neg, u):
    assert mann_whitney_u(np.array(pos, float), np.array(neg, float)) == u


def test_mann_whitney_matches_the_pair_loop_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        pos = rng.integers(0, 5, rng.integers(1, 8)).astype(float)
        neg = rng.integers(0, 5, rng.integers(1, 8)).astype(float)
        loop = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
        assert mann_whitney_u(pos, neg) == pytest.approx(loop)


def test_within_and_pooled_pairing():
    # GRPO-like credit: constant per trajectory. Traj A (|A| = 2) has one decisive step, traj B
    # (|A| = 1) none.
    credit = [[2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]]
    decisive = [[False, True, False], [False] * 4]
    # within: only A's 2 pairs, both ties -> 1 / 2 = 0.5
    r = decisive_auc(credit, decisive)
    assert (r.auc, r.n_pairs, r.n_decisive, r.n_neutral) == (0.5, 2, 1, 6)
    # pooled: the decisive 2 ties A's two 2s (1) and beats B's four 1s (4) -> U = 5 of 6 pairs;
    # the trajectory scale fakes a signal, which is why "within" is the default
    r = decisive_auc(credit, decisive, pairing="pooled")
    assert (r.auc, r.n_pairs) == (pytest.approx(5 / 6), 6)


def test_within_weights_every_pair_equally():
    # A: decisive 5 vs neutral [1, 1] -> U = 2 of 2; B: decisive [0, 3] vs neutral [1, 2, 4]:
    # 0 wins none, 3 beats 1 and 2 -> U = 2 of 6. AUC = (2 + 2) / (2 + 6) = 0.5
    credit = [[1, 5, 1], [0, 1, 3, 2, 4]]
    decisive = [[0, 1, 0], [1, 0, 1, 0, 0]]
    assert decisive_auc(credit, decisive).auc == pytest.approx(0.5)


def test_nan_rules():
    # no decisive step anywhere -> NaN with zero pairs
    r = decisive_auc([[1.0, 2.0]], [[False, False]])
    assert math.isnan(r.auc) and r.n_pairs == 0 and r.n_neutral == 2
    # only decisive steps -> NaN
    assert math.isnan(decisive_auc([[1.0]], [[True]]).auc)
    # no trajectories at all -> NaN
    r = decisive_auc([], [])
    assert math.isnan(r.auc) and (r.n_pairs, r.n_decisive, r.n_neutral) == (0, 0, 0)
    # NaN credit (a step without tokens) is left out: decisive 3 vs neutral 1 only -> 1.0
    r = decisive_auc([[1.0, float("nan"), 3.0]], [[False, False, True]])
    assert (r.auc, r.n_pairs, r.n_neutral) == (1.0, 1, 1)


def test_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match="pairing='both' is not known"):
        decisive_auc([[1.0]], [[True]], pairing="both")
    with pytest.raises(ValueError, match="trajectory 0: 2 credit values but 1 decisive flags"):
        decisive_auc([[1.0, 2.0]], [[True]])
    with pytest.raises(ValueError, match="success has 1 entries but credit has 2"):
        credit_causality_auc([[1.0], [2.0]], [[True], [False]], [True])
    with pytest.raises(ValueError, match="reduce='max' is not known"):
        per_step_credit(np.zeros((1, 2)), np.zeros((1, 2)), np.zeros(1), reduce="max")


def test_failed_and_successful_are_separate():
    credit = [[0.1, 0.9, 0.1], [0.5, 0.2, 0.5], [0.3, 0.3]]
    decisive = [[0, 1, 0], [0, 1, 0], [0, 0]]
    success = [True, False, False]
    out = credit_causality_auc(credit, decisive, success)
    # successful: traj 0, decisive 0.9 beats both 0.1 -> 1.0
    assert (out["successful"].auc, out["successful"].n_pairs) == (1.0, 2)
    # failed: traj 1 decisive 0.2 loses to both 0.5 -> 0.0; traj 2 has no decisive step (no pairs)
    assert (out["failed"].auc, out["failed"].n_pairs, out["failed"].n_neutral) == (0.0, 2, 4)
    # all: (2 + 0) / 4
    assert out["all"].auc == 0.5


def test_per_step_credit_concatenated_layout():
    values = np.array([[1.0, -3.0, 5.0, 7.0], [2.0, 2.0, -4.0, 9.0]])
    step = np.array([[0, 0, 1, -1], [0, 1, 1, -1]])
    traj = np.array([0, 1])
    out = per_step_credit(values, step, traj)
    # traj 0: step 0 mean(|1|, |-3|) = 2, step 1 |5| = 5; the -1 token (7.0) is ignored
    np.testing.assert_allclose(out[0], [2.0, 5.0])
    # traj 1: step 0 2, step 1 mean(|2|, |-4|) = 3
    np.testing.assert_allclose(out[1], [2.0, 3.0])
    # reduce="mean" keeps signs: traj 0 step 0 (1 - 3) / 2 = -1; traj 1 step 1 (2 - 4) / 2 = -1
    out = per_step_credit(values, step, traj, reduce="mean")
    np.testing.assert_allclose(out[0], [-1.0, 5.0])
    np.testing.assert_allclose(out[1], [2.0, -1.0])
    # a mask that drops the -3 token: traj 0 step 0 = |1| = 1
    mask = np.array([[1, 0, 1, 1], [1, 1, 1, 1]])
    np.testing.assert_allclose(per_step_credit(values, step, traj, mask=mask)[0], [1.0, 5.0])


def test_per_step_credit_per_step_layout_with_gaps_and_torch():
    torch = pytest.importorskip("torch")
    # rows: (traj 0, step 0), (traj 1, step 2), (traj 1, step 0), (traj 0, step 1); padding is -1
    values = torch.tensor([[0.5, 0.5, 0.0], [4.0, -2.0, 0.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    step = torch.tensor([[0, 0, -1], [2, 2, -1], [0, -1, -1], [1, -1, -1]])
    traj = torch.tensor([0, 1, 1, 0])
    out = per_step_credit(values, step, traj, num_trajectories=3)
    np.testing.assert_allclose(out[0], [0.5, 3.0])
    # traj 1 has no step-1 tokens -> NaN there: [1, nan, mean(4, 2) = 3]
    np.testing.assert_allclose(out[1], [1.0, np.nan, 3.0])
    assert out[2].size == 0  # a trajectory without rows
    # NaN steps drop out of the AUC: decisive step 2 (3.0) beats step 0 (1.0) -> 1.0 with 1 pair
    r = decisive_auc([out[1]], [[False, False, True]])
    assert (r.auc, r.n_pairs) == (1.0, 1)


def test_on_sandbox_episodes_oracle_credit_scores_one_and_constant_credit_one_half():
    env = gym.make("stepgym/Sandbox-Two-v0").unwrapped
    agent = NoisyExpert(p=0.4, mode="alter", seed=0)

    class Step:  # the bits of StepRecord that decisive_flags reads
        def __init__(self, info):
            self.info = info

    class Traj:
        def __init__(self, steps):
            self.steps = steps

    trajs, success = [], []
    for seed in range(30):
        steps = run_episode(env, agent, seed=seed)
        trajs.append(Traj([Step({"decisive": s[5]["decisive"]}) for s in steps]))
        success.append(steps[-1][5]["won"])
    flags = decisive_flags(trajs)
    assert 0 < sum(success) < 30 and all(sum(f) == 2 for f in flags)
    oracle = [[float(x) for x in f] for f in flags]
    out = credit_causality_auc(oracle, flags, success)
    assert out["failed"].auc == 1.0 and out["successful"].auc == 1.0
    grpo_like = [[1.0 if s else 0.7] * len(f) for f, s in zip(flags, success)]
    out = credit_causality_auc(grpo_like, flags, success)
    assert out["failed"].auc == 0.5 and out["successful"].auc == 0.5
