"""Credit schedules count training steps, whatever the number of optimizer steps per training step."""

import pytest
import torch
from stepgym.trainers.config import TrainConfig
from stepgym.trainers.grpo import train
from trainer_helpers import tiny_model, trivial_rollout


def _neutral_teacher(model, batch, trajs):
    # teacher == rollout policy on every token: Delta = 0, so only the schedule moves lam
    return batch.credit.logp_old.clone(), batch.credit.mask.clone()


@pytest.mark.parametrize("mini_batches", [1, 2])
def test_stepopsd_lam_decays_per_training_step(tmp_path, mini_batches):
    cfg = TrainConfig(
        model="tiny",
        env_id="test/Trivial-v0",
        credit="stepopsd",
        credit_kwargs={"lam0": 0.2, "lam_steps": 4},
        group_size=4,
        tasks_per_step=2,
        micro_batch_size=8,
        mini_batches=mini_batches,
        ppo_epochs=2,
        optim={"lr": 1e-3},
        total_steps=3,
        checkpoint_every=0,
        output_dir=str(tmp_path / f"mb{mini_batches}"),
    )
    torch.manual_seed(0)
    hist = train(
        cfg, model=tiny_model(0), task_ids=["t0", "t1"], rollout=trivial_rollout(4), teacher=_neutral_teacher
    )
    # lam(t) = 0.2 * max(0, 1 - t/4) at training steps t = 0, 1, 2 (ALGORITHMS.md §4.7), for 2 and 4
    # optimizer steps per training step alike; counting optimizer steps gave 0.2, 0.1, 0.0 with 2 and
    # 0.2, 0.0, 0.0 with 4
    assert [m["credit/lam"] for m in hist] == pytest.approx([0.2, 0.15, 0.1])
    assert [m["optim/steps"] for m in hist] == [2.0 * mini_batches] * 3
