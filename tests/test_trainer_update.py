"""The PPO-style update on a tiny Qwen3: log-prob alignment, accumulation invariance, guards."""

import copy
from dataclasses import replace

import pytest
import torch
from stepgym.trainers.batch import collate
from stepgym.trainers.config import LossConfig
from stepgym.trainers.credit import AuxLoss, get_credit
from stepgym.trainers.update import NonFiniteError, UpdateInputs, compute_logprobs, ppo_update, token_logprobs
from trainer_helpers import random_trajectories, tiny_model


def _inputs(model, *, seed=0, with_ref=False, with_aux=False):
    batch = collate(random_trajectories(2, 4, seed=seed))  # 8 rows
    credit = batch.credit
    adv = get_credit("grpo")(credit).advantages
    assert adv.abs().sum() > 0
    g = torch.Generator().manual_seed(seed + 1)
    # behaviour log-probs = current model's plus noise, so ratios spread across the clip range
    logp_now = compute_logprobs(model, batch.input_ids, batch.attention_mask, micro_batch_size=8)
    logp_old = (logp_now + 0.3 * torch.randn(logp_now.shape, generator=g)) * credit.mask
    kw = {}
    if with_ref:
        kw["logp_ref"] = (logp_now + 0.2 * torch.randn(logp_now.shape, generator=g)) * credit.mask
    if with_aux:
        target = credit.mask * (torch.rand(credit.mask.shape, generator=g) < 0.5)

        def sdar_like(logp_theta, logp_teacher, target_mask):  # [b, L]
            gate = torch.sigmoid(5.0 * (logp_teacher - logp_theta.detach()))
            return gate * (logp_teacher - logp_theta)

        kw["aux"] = AuxLoss(sdar_like, 0.1, target, (logp_now - 0.5) * target)
    return UpdateInputs(batch.input_ids, batch.attention_mask, credit.mask, logp_old, adv, **kw)


def test_token_logprobs_aligned_to_positions():
    model = tiny_model()
    ids = torch.tensor([[3, 9, 4, 7, 0], [5, 6, 1, 0, 0]])
    att = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    logp, ent, _ = token_logprobs(model, ids, att, temperature=0.7, with_entropy=True)
    logits = model(input_ids=ids, attention_mask=att).logits
    for b in range(2):
        assert logp[b, 0] == 0
        for pos in range(1, 4):
            ref = torch.log_softmax(logits[b, pos - 1] / 0.7, -1)[ids[b, pos]]
            assert logp[b, pos].item() == pytest.approx(ref.item(), abs=1e-5)
            p = torch.softmax(logits[b, pos - 1] / 0.7, -1)
            assert ent[b, pos].item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-5)


def _update(model, inputs, *, micro, mini=1, loss=None, lr=1.0):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return ppo_update(
        model,
        opt,
        inputs,
        loss_config=loss or LossConfig(),
        mini_batches=mini,
        micro_batch_size=micro,
        max_grad_norm=None,
    )


@pytest.mark.parametrize(
    "loss",
    [
        LossConfig(aggregation="token-mean"),
        LossConfig(aggregation="seq-mean-token-mean", kl_coef=0.1, reference="initial", entropy_coef=0.01),
        LossConfig(aggregation="seq-mean-token-sum-norm", norm_length=16, ratio_level="sequence", dual_clip=3.0),
    ],
    ids=["token-mean", "seq-mean+kl+entropy", "sum-norm+gspo+dualclip"],
)
def test_1x8_and_8x1_accumulation_give_the_same_update(loss):
    # SGD with lr=1: the parameter change equals the accumulated gradient, compared element-wise.
    base = tiny_model()
    inputs = _inputs(base, with_ref=loss.kl_coef > 0, with_aux=True)
    results = {}
    for micro in (8, 1, 3):  # 1x8, 8x1 and an uneven 3+3+2 split
        model = copy.deepcopy(base)
        metrics = _update(model, inputs, micro=micro, loss=loss)
        results[micro] = (torch.cat([p.detach().flatten() for p in model.parameters()]), metrics)
    start = torch.cat([p.detach().flatten() for p in base.parameters()])
    delta8 = results[8][0] - start
    assert delta8.abs().max() > 1e-4  # the update did something
    for micro in (1, 3):
        # tolerance: float32 sums in a different order; |delta| is up to ~1e-1 here
        assert torch.allclose(results[micro][0] - start, delta8, atol=2e-6, rtol=1e-4), micro
        for key in ("loss/policy", "loss/total", "loss/clip_frac"):
            assert results[micro][1][key] == pytest.approx(results[8][1][key], rel=1e-5, abs=1e-7)


def test_update_changes_every_parameter_and_mini_batches_step_twice():
    model = tiny_model()
    inputs = _inputs(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    m = ppo_update(
        model,
        opt,
        inputs,
        loss_config=LossConfig(),
        mini_batches=2,
        micro_batch_size=2,
        scheduler=sched,
        generator=torch.Generator().manual_seed(0),
    )
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert not unchanged
    assert m["optim/steps"] == 2.0
    assert m["optim/lr"] == pytest.approx(1e-3 * 0.25)  # two scheduler steps of x0.5
    assert 0.0 <= m["loss/clip_frac"] <= 1.0 and m["optim/grad_norm"] > 0


def test_on_policy_gradient_matches_reinforce_by_hand():
    # With logp_old == logp (first PPO step) the ratio is 1 and no clip is active, so the token-mean
    # loss gradient equals the REINFORCE gradient  -sum(A * grad logp * mask) / sum(mask).
    model = tiny_model()
    inputs = _inputs(model)
    logp_now = compute_logprobs(model, inputs.input_ids, inputs.attention_mask, micro_batch_size=8)
    on_policy = UpdateInputs(
        inputs.input_ids, inputs.attention_mask, inputs.mask, logp_now * inputs.mask, inputs.advantages
    )
    ref_model = copy.deepcopy(model)
    logp, _, _ = token_logprobs(ref_model, inputs.input_ids, inputs.attention_mask)
    (-(inputs.advantages * logp * inputs.mask).sum() / inputs.mask.sum()).backward()
    expected = torch.cat([-p.grad.flatten() for p in ref_model.parameters()])  # SGD lr=1 step
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    _update(model, on_policy, micro=4)
    got = torch.cat([p.detach().flatten() for p in model.parameters()]) - start
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-4)


def test_non_finite_loss_stops_before_the_step():
    model = tiny_model()
    inputs = _inputs(model)
    bad_adv = inputs.advantages.clone()
    bad_adv[inputs.mask > 0] = float("nan")
    bad = UpdateInputs(inputs.input_ids, inputs.attention_mask, inputs.mask, inputs.logp_old, bad_adv)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match=r"non-finite loss at epoch 0, mini-batch 0, micro-batch 0 .*not taken"):
        _update(model, bad, micro=4)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_non_finite_gradient_stops_before_the_step():
    model = tiny_model()
    inputs = _inputs(model)
    model.model.norm.weight.register_hook(lambda g: g * float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteError, match="non-finite gradient norm"):
        _update(model, inputs, micro=8)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_kl_without_reference_is_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="logp_ref is None"):
        _update(model, _inputs(model), micro=8, loss=LossConfig(kl_coef=0.1, reference="initial"))


def test_value_head_trained_towards_returns():
    model = tiny_model()
    inputs = _inputs(model)
    head = torch.nn.Linear(64, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    returns = inputs.mask * 2.0  # target value 2 on every trainable token; the head starts at 0
    with_v = UpdateInputs(
        inputs.input_ids,
        inputs.attention_mask,
        inputs.mask,
        inputs.logp_old,
        inputs.advantages,
        returns=returns,
        values_old=torch.zeros_like(returns),
    )
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.1)
    m = ppo_update(
        model,
        opt,
        with_v,
        loss_config=LossConfig(value_clip=None),
        micro_batch_size=8,
        value_head=head,
        max_grad_norm=None,
    )
    # at zero init the value loss is 0.5 * mean((0 - 2)^2) = 2; one step moves the bias by
    # -lr * value_coef * d/db = -0.1 * 0.5 * (0 - 2) = +0.1
    assert m["loss/value"] == pytest.approx(2.0, rel=1e-6)
    assert head.bias.item() == pytest.approx(0.1, rel=1e-5)


def test_selective_scoring_equals_full_logits():
    # score_mask runs the LM head on masked positions only; values there must equal the full path's
    model = tiny_model()
    inputs = _inputs(model)
    head = torch.nn.Linear(64, 1)
    full = token_logprobs(
        model, inputs.input_ids, inputs.attention_mask, temperature=0.8, with_entropy=True, value_head=head
    )
    part = token_logprobs(
        model,
        inputs.input_ids,
        inputs.attention_mask,
        temperature=0.8,
        with_entropy=True,
        value_head=head,
        score_mask=inputs.mask,
    )
    for f, p in zip(full, part):
        assert torch.allclose(f * inputs.mask, p, atol=1e-5)
        assert (p[inputs.mask == 0] == 0).all()


def test_more_mini_batches_than_rows_is_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="8 rows cannot fill 9 mini-batches"):
        _update(model, _inputs(model), micro=8, mini=9)


def test_value_loss_reads_only_value_mask_positions():
    # StepPO regresses V_k only at each step's first trainable token (value.step_value_mask). Returns
    # are 2 there and 100 everywhere else: were other tokens used, the loss would be far above 2.
    from stepgym.trainers.value import step_value_mask

    model = tiny_model()
    inputs = _inputs(model)
    step_index = collate(random_trajectories(2, 4, seed=0)).credit.step_index
    vmask = step_value_mask(inputs.mask, step_index)
    # every row has 1 or 2 steps (random_trajectories), so 8..16 value positions
    assert 8 <= int(vmask.sum()) <= 16 and bool((vmask <= inputs.mask).all())
    returns = inputs.mask * 100.0 - vmask * 98.0
    head = torch.nn.Linear(64, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    with_v = UpdateInputs(
        inputs.input_ids,
        inputs.attention_mask,
        inputs.mask,
        inputs.logp_old,
        inputs.advantages,
        returns=returns,
        values_old=torch.zeros_like(returns),
        value_mask=vmask,
    )
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.1)
    # micro-batch 3: the value normaliser is the mini-batch's value-position count, not per micro-batch
    m = ppo_update(
        model,
        opt,
        with_v,
        loss_config=LossConfig(value_clip=None),
        micro_batch_size=3,
        value_head=head,
        max_grad_norm=None,
    )
    # at zero init: 0.5 * mean over value positions of (0 - 2)^2 = 2; bias moves by -0.1 * 0.5 * (0 - 2) = +0.1
    assert m["loss/value"] == pytest.approx(2.0, rel=1e-6)
    assert head.bias.item() == pytest.approx(0.1, rel=1e-5)


def test_step_value_mask_marks_first_trainable_token_of_each_step():
    from stepgym.trainers.value import step_value_mask

    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 0], [0, 0, 1, 1, 1, 0, 0]], dtype=torch.float32)
    step_index = torch.tensor([[-1, 0, 0, -1, 1, 1, -1], [-1, -1, 0, 0, 0, -1, -1]])
    expected = torch.tensor([[0, 1, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(step_value_mask(mask, step_index), expected)


def _adamw_twice(model, first, second, loss):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    ppo_update(model, opt, first, loss_config=loss, micro_batch_size=4)
    after_first = torch.cat([p.detach().flatten() for p in model.parameters()])
    m = ppo_update(model, opt, second, loss_config=loss, micro_batch_size=4)
    return after_first, torch.cat([p.detach().flatten() for p in model.parameters()]), m


def test_zero_advantage_update_skips_forward_backward_but_steps_like_it_ran(monkeypatch):
    """All advantages 0 and no other term: no forward/backward, yet AdamW moves the weights exactly as if it ran."""
    import stepgym.trainers.update as update_module

    base = tiny_model()
    first = _inputs(base)
    second = replace(first, advantages=torch.zeros_like(first.advantages))
    calls = []
    real = update_module.token_logprobs
    monkeypatch.setattr(update_module, "token_logprobs", lambda *a, **k: calls.append(1) or real(*a, **k))
    a1, a2, skipped = _adamw_twice(copy.deepcopy(base), first, second, LossConfig())
    n_first = len(calls)
    assert n_first == 2 and skipped["optim/skipped_steps"] == 1.0  # 8 rows / micro 4: two forwards, then none
    assert skipped["loss/policy"] == 0.0 and skipped["optim/grad_norm"] == 0.0 and "loss/approx_kl" not in skipped
    assert (a2 - a1).abs().max() > 1e-5  # Adam's momentum and weight decay still moved the weights
    # the reference runs the zero-advantage forward/backward (the skip rule forced off)
    monkeypatch.setattr(update_module, "_can_have_gradient", lambda *a: True)
    b1, b2, ran = _adamw_twice(copy.deepcopy(base), first, second, LossConfig())
    assert ran["optim/skipped_steps"] == 0.0 and len(calls) == n_first + 4
    assert torch.equal(a1, b1) and torch.allclose(a2, b2, atol=1e-7, rtol=0)


@pytest.mark.parametrize("loss", [LossConfig(entropy_coef=0.01), LossConfig(kl_coef=0.1, reference="initial")])
def test_zero_advantages_never_skip_with_entropy_or_kl(loss):
    model = tiny_model()
    inputs = _inputs(model, with_ref=loss.kl_coef > 0)
    inputs = replace(inputs, advantages=torch.zeros_like(inputs.advantages))
    m = _update(model, inputs, micro=8, loss=loss, lr=1e-3)
    assert m["optim/skipped_steps"] == 0.0 and m["optim/grad_norm"] > 0
