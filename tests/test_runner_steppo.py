"""StepPO through run_training: the value head is built, trained, checkpointed and resumed exactly."""

import pytest
import torch
from stepgym.trainers.metrics import JsonlSink
from stepgym.trainers.runner import build_model, load_checkpoint_model, run_training
from stepgym.trainers.value import get_value_head
from trainer_helpers import small_run_config

ENV = "thirdparty_env:thirdparty/GuessDigit-v0"


def _config(out, **kw):
    steppo = dict(
        env_id=ENV,
        env_kwargs={"max_turns": 2},
        credit="steppo",
        credit_kwargs={"gamma": 0.9},
        layout="per-step",
        loss={"value_coef": 1.0},
    )
    return small_run_config(out, **{**steppo, **kw})


def _no_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_steppo_trains_value_head_and_policy_and_resumes_exactly(tmp_path):
    cfg = _config(tmp_path / "ref")
    before = {n: p.detach().clone() for n, p in build_model(cfg)[0].named_parameters()}
    ref = run_training(cfg)
    assert ref.final_step == 2
    model, _, _ = load_checkpoint_model(ref.output_dir)
    head = get_value_head(model)
    assert head is not None
    # the head starts at exactly 0 (ValueHead is zero-initialised); GuessDigit rewards are 0/1/-0.1
    # per step, so the returns G_k are not all 0 and the critic loss moves the bias at least
    assert float(head.proj.bias.detach().abs().max()) > 0 and float(head.proj.weight.detach().abs().max()) > 0
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert len(changed) == len(before), "every policy parameter gets gradient (policy + shared-backbone critic)"
    rows = JsonlSink.read(ref.output_dir / "metrics.jsonl")
    assert rows[0]["credit/value_mean"] == 0.0  # step 1 reads the fresh head: V = 0 everywhere
    assert rows[1]["credit/value_mean"] != 0.0  # step 2 reads the trained head
    assert rows[0]["loss/value"] > 0 and "credit/return_mean" in rows[0]

    # resume: stop after step 1, rerun -> step 2 and the final weights (value head included) are identical
    cfg2 = _config(tmp_path / "resumed")
    first = run_training(cfg2, should_stop=lambda: True)
    assert first.interrupted and first.final_step == 1
    second = run_training(cfg2)
    assert second.final_step == 2 and len(second.history) == 1
    assert _no_time(JsonlSink.read(second.output_dir / "metrics.jsonl")) == _no_time(rows)
    resumed, _, _ = load_checkpoint_model(second.output_dir)
    ref_sd = model.state_dict()
    for k, v in resumed.state_dict().items():
        assert torch.equal(v, ref_sd[k]), k


def test_steppo_checkpoint_without_head_is_refused(tmp_path):
    # a StepPO config whose checkpoint lacks the head (e.g. written by a GRPO run) fails loudly on load
    cfg = _config(tmp_path / "grpo", credit="grpo", credit_kwargs={}, total_steps=1)
    run_training(cfg)
    cfg_file = tmp_path / "grpo" / "checkpoints" / "step-00000001" / "training_state" / "config.json"
    cfg_file.write_text(cfg_file.read_text().replace('"credit": "grpo"', '"credit": "steppo"'))
    with pytest.raises(RuntimeError, match="value_head"):
        load_checkpoint_model(tmp_path / "grpo")
