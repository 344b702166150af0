"""The related 2026 credit methods train end to end through run_training: 2 steps on the sandbox (and on
Search-QA, slow), with the pluggable pieces they need (judge, written contrast, separate teacher)."""

import pytest
import torch
from stepgym.agents.models import build_tiny_model
from stepgym.agents.sandbox_model import build_sandbox_model
from stepgym.trainers.runner import build_model, load_checkpoint_model, run_training
from trainer_helpers import small_run_config

SANDBOX = ("stepgym/Sandbox-One-v0", {})
SEARCHQA = ("stepgym/SearchQA-v0", {"retriever": "bm25s", "split": "train", "max_turns": 2})
# options that make each method's part act at the tiny model's (mostly failed) rollouts
ACTIVE = {
    "craft": {"lam0": 1.0},
    "sgcd": {"kappa": 1.0},
    "paw": {"lam0": 1.0},
    "atod": {},
    "triage": {},
    "ucob": {"coef": 1.0},
}
METRIC = {
    "craft": "credit/c_mean",
    "sgcd": "credit/clip_frac",
    "paw": "credit/wm_tokens",
    "atod": "credit/rho",
    "triage": "credit/role_infrastructure",
    "ucob": "credit/teach_frac",
}


def _config(out, env, method, **kw):
    env_id, env_kwargs = env
    base = dict(env_id=env_id, env_kwargs=env_kwargs, layout="concat", credit=method, credit_kwargs=ACTIVE[method])
    return small_run_config(out, **{**base, "sampling": {"max_new_tokens": 12}, "num_envs": 2, **kw})


def _run(cfg):
    result = run_training(cfg)
    assert result.final_step == 2 and not result.interrupted and len(result.history) == 2
    return result


@pytest.mark.parametrize("method", sorted(ACTIVE))
def test_two_steps_on_the_sandbox(tmp_path, method):
    result = _run(_config(tmp_path, SANDBOX, method))
    assert all(METRIC[method] in h for h in result.history)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(ACTIVE))
def test_two_steps_on_searchqa(tmp_path, method):
    result = _run(_config(tmp_path, SEARCHQA, method))
    assert all(METRIC[method] in h for h in result.history)


def test_paw_trains_the_world_model_on_observation_tokens(tmp_path):
    # every sandbox step is followed by an observation in the concat rows, so the WM loss acts and moves weights
    cfg = _config(tmp_path, SANDBOX, "paw", max_turns=3)
    before = {n: p.detach().clone() for n, p in build_model(cfg)[0].named_parameters()}
    result = _run(cfg)
    assert result.history[0]["credit/wm_tokens"] > 0 and result.history[0]["loss/aux"] > 0
    after = dict(load_checkpoint_model(result.output_dir)[0].named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def test_atod_with_a_separate_teacher_model(tmp_path):
    # a same-tokenizer teacher (here another tiny init; an SFT'd checkpoint in practice) with no hindsight
    model, tok = build_tiny_model(seed=7)
    folder = tmp_path / "teacher"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    cfg = _config(tmp_path / "run", SANDBOX, "atod", teacher={"model": str(folder), "hindsight": []})
    result = _run(cfg)
    # a different model disagrees with the student: the OPD term is not 0 (a self-teacher without hindsight is)
    assert result.history[0]["credit/delta_abs_failed"] > 0.05
    # a teacher with another tokenizer reads hindsight only before the row: refused before training otherwise
    other = build_sandbox_model(tmp_path / "other")
    with pytest.raises(ValueError, match="another tokenizer.*placement='prompt'"):
        run_training(_config(tmp_path / "run2", SANDBOX, "atod", teacher={"model": str(other), "placement": "inline"}))


@pytest.mark.slow
def test_atod_with_smollm2_teaching_the_tiny_model(tmp_path):
    # SmolLM2-135M (another tokenizer) scores the tiny model's text (distill/cross_tokenizer.py); 18-64 s (load 3-7)
    cfg = _config(tmp_path, SANDBOX, "atod", teacher={"model": "smollm2-135m", "hindsight": []})
    result = _run(cfg)
    assert all(h["credit/delta_abs_failed"] > 0.5 and h["credit/rho"] < 1 for h in result.history), result.history


@pytest.mark.slow
def test_llm_judge_and_written_contrast_run_on_the_policy(tmp_path):
    _run(_config(tmp_path / "triage", SANDBOX, "triage", judge="llm"))
    _run(_config(tmp_path / "sgcd", SANDBOX, "sgcd", teacher={"contrast": "policy"}, group_size=4))


def test_ucob_trains_both_views_in_both_directions(tmp_path):
    """UCOB through the loop (grpo.train) on the trivial env, whose groups mix wins and losses: visits below
    their state's mean return are taught by the context view, those above teach it, and the term moves weights."""
    from stepgym.distill.rescore import context_view
    from stepgym.trainers.config import TrainConfig
    from stepgym.trainers.grpo import train
    from trainer_helpers import logprob_teacher, tiny_model, trivial_rollout

    def teacher(model, batch, trajs):  # the context block [20, 21] before each row's prompt, as rows
        logp, mask = logprob_teacher(model, batch, trajs)
        rows = [seq for traj in trajs for seq in traj.sequences]
        view = context_view(rows, [[20, 21]] * len(rows), placement="prompt", length=batch.input_ids.shape[1])
        return logp, mask, view

    cfg = TrainConfig(
        model="tiny", env_id="test/Trivial-v0", group_size=8, tasks_per_step=4, micro_batch_size=16, total_steps=2,
        checkpoint_every=0, output_dir=str(tmp_path), seed=3, credit="ucob", credit_kwargs={"coef": 1.0},
    )  # fmt: skip
    model = tiny_model(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = train(cfg, model=model, task_ids=[f"t{i}" for i in range(4)], rollout=trivial_rollout(8), teacher=teacher)
    assert all(h["credit/to_plain_frac"] > 0 and h["credit/to_context_frac"] > 0 for h in hist), hist
    assert all(h["loss/aux"] > 0 for h in hist)
    assert [n for n, p in model.named_parameters() if torch.equal(p, before[n])] == []


def test_ucob_view_placements(tmp_path):
    # prefix (the credit comparison's placement) builds the view too; inline has one block per step: refused up front
    result = _run(_config(tmp_path / "prefix", SANDBOX, "ucob", teacher={"placement": "prefix"}))
    assert all("credit/to_context_frac" in h for h in result.history)
    with pytest.raises(ValueError, match="placement='prompt'.*not 'inline'"):
        run_training(_config(tmp_path / "inline", SANDBOX, "ucob", teacher={"placement": "inline"}))
