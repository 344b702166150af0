"""Issue 17 controls on fixed sandbox batches (no training): the scripted teacher, the oracle, the share metric.

The batch is real: NoisyExpert episodes of ``Sandbox-One`` collated exactly as in training (concat
layout), so the credit methods run their real code; only the teacher is scripted (``Delta = +-3`` on
the decisive step), which isolates the shaping mechanism from the teacher's quality.
"""

from dataclasses import replace

import numpy as np
import pytest
import torch
from stepgym.distill.diagnostics import decisive_flags, decisive_share
from stepgym.distill.hindsight import build_hindsight_batch
from stepgym.trainers import credit_controls as cc
from stepgym.trainers.credit import get_credit
from stepgym.trainers.credit_probe import announce, batch_share


@pytest.fixture(scope="module")
def sandbox_batch():
    from stepgym.agents.sandbox_agents import NoisyExpert
    from stepgym.agents.sandbox_model import build_sandbox_tokenizer
    from stepgym.envs.sandbox import SUBSETS
    from stepgym.trainers.batch import collate
    from stepgym.trainers.sft import collect_demonstrations

    tok = build_sandbox_tokenizer()
    tasks = [f"{s}-train-{k}" for s in SUBSETS for k in range(2)]
    trajs = collect_demonstrations(
        "stepgym/Sandbox-One-v0",
        lambda k: NoisyExpert(0.5, "alter", seed=1000 + k),
        tok,
        tasks,
        env_kwargs={"num_tasks": 2, "max_steps": 40},
        group_size=8,
        layout="concat",
        max_turns=40,
    )
    flags = decisive_flags(trajs)
    batch = collate(trajs, pad_token_id=tok.pad_token_id).credit
    assert 0 < sum(t.success for t in trajs) < len(trajs) and all(sum(f) == 1 for f in flags)
    return trajs, flags, batch


def _ratio(batch, flags, adv) -> float:
    """Mean |A| on decisive tokens over mean |A| on neutral tokens (the issue's number)."""
    dec = cc.decisive_token_mask(batch, flags)
    neu = (batch.mask > 0) & ~dec
    return float(adv[dec].abs().mean() / adv[neu].abs().mean())


@pytest.mark.parametrize(
    "method, kwargs, expected",
    [
        ("stepopsd", {}, 1.0),  # the per-step budget equalises the steps' mean |A|
        ("stepopsd", {"budget": False}, 1.04),  # 1 + lam0 * alpha_clip
        ("stepopsd", {"budget": False, "lam0": 1.0, "alpha_clip": 0.9}, 1.9),
        ("rlsd", {}, 1.10),  # 1 + lam0 * eps_w
    ],
)
def test_scripted_teacher_reproduces_the_issue_ratios(sandbox_batch, method, kwargs, expected):
    trajs, flags, batch = sandbox_batch
    tb = replace(batch, logp_teacher=cc.scripted_teacher_logprobs(batch, flags, delta=3.0))
    adv = get_credit(method)(tb, **kwargs).advantages
    grpo = get_credit("grpo")(batch).advantages
    # relative to GRPO on the same batch (its groups without a mix have A = 0 on every token)
    assert _ratio(batch, flags, adv) / _ratio(batch, flags, grpo) == pytest.approx(expected, abs=0.01)


def test_share_ranks_oracle_first_and_the_negative_controls_at_chance(sandbox_batch):
    trajs, flags, batch = sandbox_batch
    announce(trajs)
    strong = {"budget": False, "lam0": 1.0, "alpha_clip": 0.9}  # StepOPSD at its most step-sensitive
    teachers = {
        "oracle": cc.scripted_teacher_logprobs(batch, flags),
        "none": cc.scripted_teacher_logprobs(batch, flags, mode="none", noise=0.3, seed=1),
        "shuffled": cc.scripted_teacher_logprobs(batch, flags, mode="shuffled", seed=2),
    }
    arms = {
        "oracle": get_credit("oracle")(batch).advantages,
        "stepopsd_scripted": get_credit("stepopsd")(
            replace(batch, logp_teacher=teachers["oracle"]), **strong
        ).advantages,
        "grpo": get_credit("grpo")(batch).advantages,
        "nohindsight": get_credit("stepopsd_nohindsight")(
            replace(batch, logp_teacher=teachers["none"]), **strong
        ).advantages,
        "shuffled_peer": get_credit("stepopsd_shuffled_peer")(
            replace(batch, logp_teacher=teachers["shuffled"]), **strong
        ).advantages,
    }
    res = {name: batch_share(batch, adv, flags) for name, adv in arms.items()}
    excess = {name: r["share_pos_excess"] for name, r in res.items()}
    # the oracle puts all credit on the decisive action: share 1, lift = tokens / decisive tokens
    assert res["oracle"]["share_abs"] == pytest.approx(1.0)
    assert max(excess, key=excess.get) == "oracle"
    assert excess["oracle"] > 3.0 and excess["stepopsd_scripted"] > 0.5
    assert excess["grpo"] == pytest.approx(0.0, abs=1e-6) and res["grpo"]["share_lift"] == pytest.approx(1.0)
    # negative controls: no excess over same-position neutral steps (shuffled can only fall below)
    assert abs(excess["nohindsight"]) < 0.05
    assert excess["shuffled_peer"] < 0.05
    # the placebo sits at chance for every arm
    for name, r in res.items():
        assert abs(r["share_placebo_excess"]) < 0.05, name
    # signed: failures push down, successes up, in proportion
    assert (
        res["stepopsd_scripted"]["share_signed_failed"]
        < -1.5
        < 1.5
        < res["stepopsd_scripted"]["share_signed_successful"]
    )


def test_decisive_share_hand_case():
    # one row, two trajectories of 3 steps with 2 tokens each; t0: decisive step 1, t1: decisive step 2
    step = torch.tensor([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2]])
    traj = torch.tensor([0, 1])
    values = torch.tensor([[1.0, 1.0, 4.0, 4.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0, -2.0, -2.0]])
    flags = [[False, True, False], [False, False, True]]
    r = decisive_share(values, step, traj, flags, [True, False])
    # t0: share 8/12, lift 4/2 = 2; t1: share 4/8, lift 2/(4/3) = 1.5
    assert r.share == pytest.approx((8 / 12 + 4 / 8) / 2)
    assert r.token_share == pytest.approx(1 / 3)
    assert r.lift == pytest.approx((2.0 + 1.5) / 2)
    assert r.signed_lift_successful == pytest.approx(2.0) and r.signed_lift_failed == pytest.approx(-1.5)
    # baselines: step 1 of t1 (neutral) has lift 1/(4/3) = 0.75; step 2 of t0 has lift 1/2 = 0.5
    assert r.position_excess == pytest.approx(((2.0 - 0.75) + (1.5 - 0.5)) / 2)
    assert (r.n_decisive, r.n_matched, r.n_trajectories) == (2, 2, 2)
    # no decisive step anywhere (the null variant) -> NaN, not 0
    r0 = decisive_share(values, step, traj, [[False] * 3] * 2, [True, False])
    assert np.isnan(r0.lift) and r0.n_trajectories == 0


def test_oracle_without_announced_flags_says_how_to_fix(sandbox_batch):
    _, _, batch = sandbox_batch
    announce(None)
    with pytest.raises(RuntimeError, match="probe_rollout"):
        get_credit("oracle")(batch)


def test_shuffled_peer_comes_from_another_group(sandbox_batch):
    trajs, _, _ = sandbox_batch
    real = build_hindsight_batch(trajs, ("peer",))
    fake = build_hindsight_batch(trajs, ("shuffled_peer",))
    for t, r, f in zip(trajs, real, fake):
        assert (r is None) == (f is None) or t.success is False
        if f is not None:
            assert f != r and f.startswith("peer_correct_trajectory:")
            src = next(o for o in trajs if o.success and o.group_id != t.group_id)
            assert src.steps[0].action_text in f


def test_negative_controls_set_the_teacher_hindsight_where_unset():
    from stepgym.trainers.config import TrainConfig

    c = TrainConfig(model="m", env_id="stepgym/Sandbox-One-v0", credit="stepopsd_nohindsight")
    assert c.teacher.hindsight == ()
    c = TrainConfig(model="m", env_id="stepgym/Sandbox-One-v0", credit="stepopsd_shuffled_peer")
    assert c.teacher.hindsight == ("outcome", "shuffled_peer")
    c = TrainConfig(
        model="m", env_id="stepgym/Sandbox-One-v0", credit="stepopsd_nohindsight", teacher={"hindsight": ["outcome"]}
    )
    assert c.teacher.hindsight == ("outcome",)


def test_commitment_rate_separates_no_commitment_from_a_wrong_one(sandbox_batch):
    from stepgym.trainers.credit_probe import commitment_rate, right_commitment_rate

    trajs, _, _ = sandbox_batch  # NoisyExpert(alter): every episode commits once, right or wrong
    assert commitment_rate(trajs) == 1.0
    right = right_commitment_rate(trajs)
    assert right == pytest.approx(sum(t.success for t in trajs) / len(trajs))
    # an episode without a commitment lowers the right rate but is not a wrong commitment
    no_commit = [t.model_copy(update={"steps": [s.model_copy(update={"info": {}}) for s in t.steps]}) for t in trajs]
    mixed = trajs + no_commit
    assert commitment_rate(mixed) == 0.5 and right_commitment_rate(mixed) == pytest.approx(right / 2)


def test_credit_that_depends_on_position_only_has_no_excess_over_same_position_steps():
    # 4 trajectories, one token per step, credit 1 + k (position only); decisive steps at different places
    lengths, dec = [3, 3, 4, 4], [1, 2, 0, 3]
    L = max(lengths)
    step = torch.tensor([[k if k < n else -1 for k in range(L)] for n in lengths])
    values = torch.tensor([[1.0 + k if k < n else 0.0 for k in range(L)] for n in lengths])
    flags = [[k == d for k in range(n)] for n, d in zip(lengths, dec)]
    traj = torch.arange(4)
    exact = decisive_share(values, step, traj, flags, [True, False, True, False], align="start_length")
    assert exact.position_excess == 0.0 and exact.n_matched == 4
    # matching on the step index alone leaves a residual when lengths differ (the lift divides by the
    # trajectory's mean); the sandbox batch measures it in the next test
    loose = decisive_share(values, step, traj, flags, [True, False, True, False], align="start")
    assert loose.position_excess != 0.0


def test_position_only_credit_residual_on_the_sandbox_batch_is_small(sandbox_batch):
    trajs, flags, batch = sandbox_batch
    grpo = get_credit("grpo")(batch).advantages
    ramp = grpo * (1 + 0.5 * batch.step_index.clamp(min=0).float())  # position-only reweighting
    r = decisive_share(ramp, batch.step_index, batch.traj_index, flags, batch.success.tolist(), mask=batch.mask)
    # measured 0.077: the floor below which an excess on `One` cannot be told from a position effect
    assert 0.0 < r.position_excess < 0.1 and abs(r.placebo_excess) < 0.02


def test_probed_stepopsd_logs_the_share_before_and_after_the_budget(sandbox_batch):
    from stepgym.trainers.credit_probe import probed

    trajs, flags, batch = sandbox_batch
    announce(trajs)
    tb = replace(batch, logp_teacher=cc.scripted_teacher_logprobs(batch, flags))
    m = get_credit(probed("stepopsd")).fn(tb, lam0=1.0, alpha_clip=0.9).metrics
    assert m["share_lift"] == pytest.approx(1.0, abs=1e-4)  # the budget equalises
    assert m["prebudget_share_lift"] == pytest.approx(1.60, abs=0.01)  # the shaping itself moved credit
    assert "prebudget_share_lift" not in get_credit(probed("grpo")).fn(batch).metrics


def test_placebo_step_matches_the_oracle_update_size_on_a_neutral_step(sandbox_batch):
    trajs, flags, batch = sandbox_batch
    announce(trajs)
    oracle = get_credit("oracle")(batch).advantages
    placebo = get_credit("placebo_step")(batch, seed=3).advantages
    dec = cc.decisive_token_mask(batch, flags)
    assert placebo[dec].abs().sum() == 0  # never the decisive step
    # per trajectory: exactly one step carries credit, with the oracle's (trajectory) advantage
    grpo = get_credit("grpo")(batch).advantages
    for t in range(batch.num_trajectories):
        rows = batch.traj_index == t
        steps_on = {int(k) for k in batch.step_index[rows][placebo[rows] != 0].tolist()}
        if oracle[rows].abs().sum() > 0:
            assert len(steps_on) == 1
            vals = placebo[rows][placebo[rows] != 0]
            assert torch.allclose(vals, grpo[rows][placebo[rows] != 0])
        else:
            assert not steps_on
    # deterministic for a seed, different draws for another
    assert torch.equal(placebo, get_credit("placebo_step")(batch, seed=3).advantages)
    assert not torch.equal(placebo, get_credit("placebo_step")(batch, seed=4).advantages)
    # the share metric sees it as below chance on the decisive step (all its credit is elsewhere)
    assert batch_share(batch, placebo, flags)["share_abs"] == 0.0


def test_no_update_skips_every_optimizer_step_and_leaves_the_weights(tmp_path):
    from stepgym.trainers.credit_probe import probe_rollout
    from stepgym.trainers.runner import build_model, load_checkpoint_model, run_training
    from trainer_helpers import small_run_config

    cfg = small_run_config(
        tmp_path,
        env_id="stepgym/Sandbox-One-v0",
        env_kwargs={},
        layout="concat",
        credit="no_update",
        sampling={"max_new_tokens": 12},
        num_envs=2,
    )
    before = {n: p.detach().clone() for n, p in build_model(cfg)[0].named_parameters()}
    result = run_training(cfg, wrap_rollout=probe_rollout)
    assert all(h["optim/skipped_steps"] == cfg.mini_batches for h in result.history)
    after = dict(load_checkpoint_model(result.output_dir)[0].named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
