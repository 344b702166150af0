"""run_training end to end on the real envs with the tiny model (CPU)."""

import json

import pytest
import torch
from stepgym.trainers.credit import CreditBatch, CreditOutput, register_credit
from stepgym.trainers.runner import (
    build_model,
    eval_task_ids,
    evaluate_model,
    load_checkpoint_model,
    run_training,
    train_task_ids,
)
from trainer_helpers import small_run_config

ALFWORLD_GAME = "valid_unseen/look_at_obj_in_light-AlarmClock-None-DeskLamp-308/trial_T20190908_222917_366542"


def _config(tmp_path, **kw):
    return small_run_config(tmp_path / "run", **{"sampling": {"max_new_tokens": 12}, **kw})


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(
    ("env_id", "env_kwargs", "layout"),
    [
        ("stepgym/SearchQA-v0", {"retriever": "bm25s", "split": "train", "max_turns": 2}, "concat"),
        ("stepgym/ALFWorld-v0", {"split": "valid_unseen", "games": [ALFWORLD_GAME], "max_steps": 2}, "per-step"),
    ],
)
def test_two_sdar_steps_change_every_parameter(tmp_path, env_id, env_kwargs, layout):
    # SDAR's self-distillation term acts even when every reward in a group is equal (a random tiny
    # model rarely succeeds), so every parameter must receive gradient through the real teacher rescoring.
    if env_id.endswith("ALFWorld-v0"):
        pytest.importorskip("alfworld")
    cfg = _config(
        tmp_path,
        env_id=env_id,
        env_kwargs=env_kwargs,
        layout=layout,
        credit="sdar",
        credit_kwargs={"lam": 1.0},
        num_envs=2,
    )
    before = _params(build_model(cfg)[0])
    result = run_training(cfg)
    assert result.final_step == 2 and not result.interrupted and len(result.history) == 2
    model, _, saved = load_checkpoint_model(result.output_dir)
    after = _params(model)
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert not unchanged, f"{len(unchanged)} parameters did not change: {unchanged[:5]}"
    assert saved == cfg
    lines = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert "credit/gate_mean" in lines[0] and "rollout/success" in lines[0]


def test_user_registered_credit_method_trains(tmp_path):
    calls = []

    @register_credit("test_user_constant_credit")
    def constant(batch: CreditBatch, *, value: float = 1.0) -> CreditOutput:
        calls.append(batch.mask.shape)
        return CreditOutput(batch.mask * value, metrics={"user_metric": value})

    cfg = _config(
        tmp_path,
        env_id="thirdparty_env:thirdparty/GuessDigit-v0",
        credit="test_user_constant_credit",
        credit_kwargs={"value": 0.5},
        total_steps=1,
        layout="per-step",
    )
    before = _params(build_model(cfg)[0])
    seen = []

    def wrap(rollout):
        def wrapped(model, task_ids, seed):
            trajs = rollout(model, task_ids, seed)
            seen.append(len(trajs))
            return trajs

        return wrapped

    result = run_training(cfg, wrap_rollout=wrap)
    assert seen == [cfg.tasks_per_step * cfg.group_size]
    assert len(calls) == 1 and result.history[0]["credit/user_metric"] == 0.5
    after = _params(load_checkpoint_model(result.output_dir)[0])
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_should_stop_checkpoints_and_rerun_resumes(tmp_path):
    cfg = _config(tmp_path, env_id="thirdparty_env:thirdparty/GuessDigit-v0", total_steps=3, checkpoint_every=0)
    first = run_training(cfg, should_stop=lambda: True)
    assert first.interrupted and first.final_step == 1 and len(first.history) == 1
    second = run_training(cfg)
    assert not second.interrupted and second.final_step == 3 and len(second.history) == 2


def test_unknown_train_subset_fails_before_training(tmp_path):
    cfg = _config(tmp_path, env_id="thirdparty_env:thirdparty/GuessDigit-v0", train_subsets=("mid",))
    with pytest.raises(KeyError, match=r"unknown subset\(s\) \['mid'\]"):
        run_training(cfg)


def test_eval_tasks_and_greedy_evaluation_is_reproducible(tmp_path):
    cfg = _config(
        tmp_path,
        env_id="stepgym/SearchQA-v0",
        env_kwargs={"retriever": "bm25s", "max_turns": 2},
        layout="concat",
        eval={"every": 0, "env_kwargs": {"split": "test"}, "tasks_per_subset": 2},
    )
    assert len(train_task_ids(cfg)) > 0
    tasks = eval_task_ids(cfg)
    assert sorted(tasks) == sorted(["nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle"])
    assert all(len(v) == 2 for v in tasks.values())
    model, tok = build_model(cfg)
    a, _ = evaluate_model(cfg, model, tok, tasks, temperature=0.0)
    b, _ = evaluate_model(cfg, model, tok, tasks, temperature=0.0)
    assert a == b and set(a) == set(tasks) and all(r.n == 2 for r in a.values())
