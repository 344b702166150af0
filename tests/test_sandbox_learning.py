"""The credit-sandbox learning pieces: tokenizer, SFT warm start, the credit probe, and learning itself."""

from __future__ import annotations

import math

import pytest
import torch
from stepgym.agents.models import load_model
from stepgym.agents.sandbox_agents import NoisyExpert
from stepgym.agents.sandbox_model import build_sandbox_model, build_sandbox_tokenizer
from stepgym.envs.sandbox import SUBSETS
from stepgym.trainers.credit import CreditBatch, get_credit
from stepgym.trainers.credit_probe import announce, batch_auc, probed
from stepgym.trainers.sft import collect_demonstrations, sft_loss, sft_train

ENV = "stepgym/Sandbox-One-v0"
KW = {"num_tasks": 2, "max_steps": 14}
TASKS = [f"{s}-train-{k}" for s in SUBSETS for k in range(2)]
SFT_EPOCHS, RL_LR, RL_STEPS = 60, 5e-4, 12
"""Learning test budget (calibrated on 2 cores: see the test's docstring)."""


@pytest.fixture(scope="module")
def tok():
    return build_sandbox_tokenizer()


@pytest.mark.parametrize("layout", ["per-step", "concat"])
def test_tokenizer_has_zero_drift_and_no_unknown_words(tok, layout):
    demos = collect_demonstrations(
        ENV, lambda k: NoisyExpert(0.5, "mixed", seed=k), tok, TASKS, env_kwargs=KW, group_size=2, layout=layout
    )
    assert len(demos) == 12
    assert all(d.info["retokenization_drift"] == 0 for d in demos)
    ids = [i for d in demos for s in d.sequences for i in s.ids]
    assert tok.unk_token_id not in ids
    text = "<action>heat apple 1 with microwave 1</action>"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    # <action>, heat, " apple", " 1", " with", " microwave", " 1", </action>: 8 tokens, exact round trip
    assert len(enc) == 8 and tok.decode(enc) == text


def test_sandbox_model_loads_and_is_small(tmp_path, tok):
    folder = build_sandbox_model(tmp_path / "m", seed=0)
    model, tok2 = load_model(str(folder))
    n = sum(p.numel() for p in model.parameters())
    assert n <= 5_000_000 and len(tok2) == len(tok)
    assert tok2.chat_template == tok.chat_template


def test_sft_loss_of_uniform_model_is_log_vocab(tmp_path, tok):
    model, _ = load_model(str(build_sandbox_model(tmp_path / "m", seed=0)))
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # tied: logits = h @ 0 = 0 -> uniform over V
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    loss = sft_loss(model, ids, torch.ones_like(ids), mask)
    # every scored token has p = 1/V, so the mean NLL is log V
    assert float(loss) == pytest.approx(math.log(model.config.vocab_size), rel=1e-5)


def test_sft_train_fits_demonstrations(tmp_path, tok):
    model, _ = load_model(str(build_sandbox_model(tmp_path / "m", seed=0)))
    demos = collect_demonstrations(
        ENV, lambda k: NoisyExpert(0.0, seed=k), tok, TASKS[:2], env_kwargs=KW, layout="concat"
    )
    torch.manual_seed(0)
    losses = sft_train(model, demos, epochs=30, lr=3e-3, batch_size=2, seed=0, pad_token_id=tok.pad_token_id)
    assert len(losses) == 30  # 2 rows / batch 2 = 1 step per epoch
    # start near log V (random init), end an order of magnitude lower
    assert losses[0] > 5.0 and losses[-1] < 0.1 * losses[0]
    with pytest.raises(ValueError, match="must both be >= 1"):
        sft_train(model, demos, epochs=0)
    with pytest.raises(ValueError, match="schedule='linear' is not known"):
        sft_train(model, demos, schedule="linear")


def _batch(success: bool) -> CreditBatch:
    # one trajectory, one row, 3 steps of 2 tokens each; step 1 is decisive
    step = torch.tensor([[-1, 0, 0, 1, 1, 2, 2]])
    mask = (step >= 0).float()
    return CreditBatch(
        mask=mask,
        step_index=step,
        action_mask=mask,
        traj_index=torch.tensor([0]),
        group_index=torch.tensor([0]),
        scores=torch.tensor([float(success)]),
        success=torch.tensor([success]),
        truncated=torch.tensor([False]),
        step_rewards=((0.0, 0.0, float(success)),),
        logp_old=torch.zeros(1, 7),
    )


def test_batch_auc_ranks_the_decisive_step():
    flags = [[False, True, False]]
    b = _batch(False)
    peaked = torch.tensor([[0.0, 0.1, -0.1, 2.0, -2.0, 0.3, 0.3]])  # |A| per step: 0.1, 2.0, 0.3
    res = batch_auc(b, peaked, flags)
    # failed trajectory: decisive 2.0 beats both neutral steps (2 pairs won of 2) -> AUC 1; no successful one
    assert res["auc_adv_failed"] == 1.0 and res["auc_pairs_failed"] == 2.0
    assert math.isnan(res["auc_adv_successful"]) and res["auc_pairs_successful"] == 0.0
    flat = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])  # GRPO: constant -> 2 ties -> AUC 0.5
    assert batch_auc(b, flat, flags)["auc_adv_failed"] == 0.5


def test_probed_method_keeps_the_advantages():
    name = probed("grpo")
    assert name == "probed_grpo" and probed("grpo") == name
    b = _batch(True)
    assert torch.equal(get_credit(name)(b).advantages, get_credit("grpo")(b).advantages)
    announce(None)  # no flags announced -> the AUC is left out (NaN)
    assert math.isnan(get_credit(name)(b).metrics["auc_adv_successful"])
    announce([_Traj([False, True, False])])
    # a successful trajectory with GRPO's constant |A|: 2 tied pairs -> 0.5
    assert get_credit(name)(b).metrics["auc_adv_successful"] == 0.5
    announce(None)


class _Traj:
    """Stand-in with ``steps[k].info["decisive"]`` (all ``decisive_flags`` reads)."""

    def __init__(self, flags):
        self.steps = [type("S", (), {"info": {"decisive": f}})() for f in flags]


def test_grpo_learns_the_decisive_choice_from_a_noisy_warm_start(tmp_path, tok):
    """Warm start on NoisyExpert demos (the treatment is wrong half the time), then GRPO: success rises.

    The demos navigate perfectly; only the decisive treatment is noisy, so the warm start wins about
    as often as it guesses the treatment. RL can only improve on it by learning which treatment the
    task names -- credit for exactly the decisive step.
    """
    from stepgym.envs.pool import EnvPool
    from stepgym.trainers.config import TrainConfig
    from stepgym.trainers.credit_probe import probe_rollout, probed, sandbox_rollout
    from stepgym.trainers.grpo import train

    torch.set_num_threads(1)
    kw = {"num_tasks": 1, "max_steps": 10}
    tasks = [f"{s}-train-0" for s in SUBSETS]
    model, _ = load_model(str(build_sandbox_model(tmp_path / "m", seed=0)))
    demos = collect_demonstrations(
        ENV, lambda k: NoisyExpert(0.5, "alter", seed=k), tok, tasks, env_kwargs=kw, group_size=8, layout="concat"
    )
    torch.manual_seed(0)
    sft_train(
        model, demos, epochs=SFT_EPOCHS, lr=3e-3, batch_size=8, seed=0, pad_token_id=tok.pad_token_id,
        schedule="cosine",
    )  # fmt: skip
    kw = {**kw, "invalid_penalty": 0.1}  # the env owns the penalty; the score adds it once
    pool = EnvPool(ENV, num_envs=48, env_kwargs=kw)
    config = TrainConfig(
        model="unused", env_id=ENV, env_kwargs=kw, group_size=16, tasks_per_step=3, layout="concat", max_turns=10,
        credit=probed("grpo"), optim={"lr": RL_LR}, mini_batches=2,
        loss={"aggregation": "seq-mean-token-mean"},
        recompute_old_logprobs=False, micro_batch_size=16, total_steps=RL_STEPS, checkpoint_every=0, seed=0,
        output_dir=str(tmp_path / "run"), pad_token_id=tok.pad_token_id, eval={"every": 0},
    )  # fmt: skip
    rollout = probe_rollout(sandbox_rollout(pool, tok, group_size=16, max_turns=10))
    hist = train(config, model=model, task_ids=tasks, rollout=rollout)
    pool.close()
    succ = [h["rollout/success"] for h in hist]
    # GRPO's |A| is constant within a trajectory: every AUC with a pair is exactly 0.5
    assert all(h["credit/auc_adv_failed"] == 0.5 for h in hist if h["credit/auc_pairs_failed"] > 0)
    start, end = sum(succ[:3]) / 3, sum(succ[-3:]) / 3  # 144 episodes each
    assert 0.1 < start < 0.7, f"the warm start should have mixed success, got {start:.2f} ({succ})"
    assert end >= start + 0.2, f"GRPO did not learn: rollout success {start:.2f} -> {end:.2f} ({succ})"


def test_right_commitment_rate_reads_the_first_commitment():
    from stepgym.trainers.credit_probe import right_commitment_rate

    def traj(*commitments):
        t = _Traj([False] * len(commitments))
        for s, c in zip(t.steps, commitments):
            s.info = {"decisive": c is not None, "commitment": c}
        return t

    # first commitments: right, wrong (a later right does not count), none -> 1 of 3
    trajs = [traj(None, "right", None), traj("wrong", None, "right"), traj(None, None)]
    assert right_commitment_rate(trajs) == pytest.approx(1 / 3)
    assert math.isnan(right_commitment_rate([]))
