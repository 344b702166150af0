"""Step-aware credit methods: hand-derived numbers, invariants, and vectorised == loop."""

import math

import pytest
import torch
from stepgym.distill.shaping import (
    discounted_returns,
    linear_schedule,
    opsd_reward_advantages,
    sdar_token_loss,
    sign_preserving_weight,
    step_gae,
)
from stepgym.trainers.credit import CreditBatch, check_credit_kwargs, get_credit, list_credits
from stepgym.trainers.value import (
    ValueHead,
    attach_value_head,
    clipped_value_error,
    step_value_mask,
    step_value_positions,
)

LN3 = math.log(3.0)


def _batch(mask, step, traj, groups, scores, *, delta=None, anchors=None, rewards=None, values=None, t=0, trunc=None):
    mask = torch.tensor(mask, dtype=torch.float32)
    T = len(scores)
    return CreditBatch(
        mask=mask,
        step_index=torch.tensor(step),
        action_mask=torch.zeros_like(mask),
        traj_index=torch.tensor(traj),
        group_index=torch.tensor(groups),
        scores=torch.tensor(scores, dtype=torch.float32),
        success=torch.tensor(scores) > 0.5,
        truncated=torch.tensor(trunc or [False] * T),
        step_rewards=tuple(tuple(r) for r in (rewards or [[s] for s in scores])),
        logp_old=torch.full_like(mask, -2.0) * mask,
        logp_teacher=None if delta is None else (torch.tensor(delta, dtype=torch.float32) - 2.0) * mask,
        target_mask=None,
        anchors=anchors,
        values=None if values is None else torch.tensor(values, dtype=torch.float32),
        training_step=t,
    )


# concat layout, 2 trajectories of one group, 2 steps each: [prompt, s0, s0, s1, s1]
MASK = [[0, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
STEP = [[-1, 0, 0, 1, 1], [-1, 0, 0, 1, 1]]
DELTA = [[0, 0, LN3, -LN3, 0], [0, LN3, 0, 0, 0]]


def test_registry_has_every_builtin_with_needs():
    names = set(list_credits())
    assert {"grpo", "dr_grpo", "rloo", "gigpo", "stepopsd", "rlsd", "steppo", "sdar", "opsd", "grpo+opsd"} <= names
    assert all(get_credit(n).needs_teacher for n in ("stepopsd", "rlsd", "sdar", "opsd", "grpo+opsd"))
    assert get_credit("steppo").needs_values and not get_credit("gigpo").needs_teacher
    assert get_credit("stepgym.trainers.credit:stepopsd").name == "stepopsd"
    with pytest.raises(TypeError, match="Did you mean 'alpha_clip'"):
        check_credit_kwargs("stepopsd", {"alpha_clp": 0.1})


def test_weights_by_hand():
    # 2*sigmoid(ln3) = 2*0.75 = 1.5; 2*sigmoid(-ln3) = 0.5; exp(ln 1.1) = 1.1
    A = torch.tensor([1.0, 1.0, -1.0, 0.0])
    d = torch.tensor([LN3, -LN3, LN3, LN3])
    w, hit = sign_preserving_weight(A, d, 0.6)
    torch.testing.assert_close(w, torch.tensor([1.5, 0.5, 0.5, 1.0]))  # sign(0)=0 -> w=2*sigmoid(0)=1
    assert hit.tolist() == [False, False, False, False]
    w, hit = sign_preserving_weight(A, d, 0.2)
    torch.testing.assert_close(w, torch.tensor([1.2, 0.8, 0.8, 1.0]))
    assert hit.tolist() == [True, True, True, False]
    w, _ = sign_preserving_weight(torch.tensor([1.0]), torch.tensor([math.log(1.1)]), 0.2, "exp")
    torch.testing.assert_close(w, torch.tensor([1.1]))
    assert linear_schedule(0.2, 25, 50) == pytest.approx(0.1) and linear_schedule(0.2, 80, 50) == 0.0
    with pytest.raises(ValueError, match="alpha_clip must be in"):
        sign_preserving_weight(A, d, 1.5)


def test_stepopsd_by_hand():
    # Dr.GRPO outcome: scores [1, 0] -> A = +0.5 / -0.5. lam = 0.5 (t=0); alpha_clip 0.2.
    # traj 0 (A>0): Delta [0, ln3, -ln3, 0] -> w [1, 1.2, 0.8, 1] -> factor 0.5+0.5w = [1, 1.1, .9, 1]
    #   A_sh = [.5, .55, .45, .5]; step means m0 = .525, m1 = .475, mbar = .5
    #   c0 = .5/.525 = 0.952381, c1 = .5/.475 = 1.052632 -> [.476190, .523810, .473684, .526316]
    # traj 1 (A<0): Delta [ln3, 0, 0, 0] -> sign(A)*Delta = -ln3 -> w 0.8 -> factor .9
    #   A_sh = [-.45, -.5, -.5, -.5]; m0 = .475, m1 = .5, mbar = .4875; c0 = 1.026316, c1 = .975
    b = _batch(MASK, STEP, [0, 1], [0, 0], [1.0, 0.0], delta=DELTA)
    out = get_credit("stepopsd")(b, lam0=0.5, normalize_std=False)
    want = torch.tensor(
        [
            [0, 0.5 * 0.5 / 0.525, 0.55 * 0.5 / 0.525, 0.45 * 0.5 / 0.475, 0.5 * 0.5 / 0.475],
            [0, -0.45 * 0.4875 / 0.475, -0.5 * 0.4875 / 0.475, -0.5 * 0.975, -0.5 * 0.975],
        ]
    )
    torch.testing.assert_close(out.advantages, want, atol=1e-5, rtol=0)
    # the budget equalises every step's mean |A|: traj 0 -> .5 each, traj 1 -> .4875 each
    adv = out.advantages.abs()
    torch.testing.assert_close(adv[:, 1:3].mean(1), adv[:, 3:5].mean(1), atol=1e-5, rtol=0)
    m = out.metrics
    assert m["clip_frac"] == pytest.approx(3 / 8)  # 3 of the 8 target tokens hit the clip
    assert m["lam"] == 0.5
    # budget factors: .952381, 1.052632 (traj 0), 1.026316, .975 (traj 1)
    assert m["budget_min"] == pytest.approx(0.5 / 0.525, abs=1e-5)
    assert m["budget_max"] == pytest.approx(0.5 / 0.475, abs=1e-5)
    assert m["delta_abs_success"] == pytest.approx(LN3 / 2) and m["delta_abs_failed"] == pytest.approx(LN3 / 4)
    assert {"adv_mean", "adv_std", "budget_mean"} <= set(m)


def test_stepopsd_budget_clips_at_kappa():
    # one trajectory (A = 1/(1+1e-6) via a singleton group: mean 0, std 1);
    # lam=1, alpha 0.6, A=+1: step 0 Delta -> w 0.5 (2*sigmoid(-ln3)), step 1 w 1.5: m0=.5, m1=1.5, mbar=1
    # c0 = 1/.5 = 2 (= kappa), c1 = 1/1.5 = .6667; with kappa 1.5: c0 clipped to 1.5
    b = _batch([[1, 1]], [[0, 1]], [0], [0], [1.0], delta=[[-LN3, LN3]], rewards=[[0, 1]])
    out = get_credit("stepopsd")(b, lam0=1.0, alpha_clip=0.6, kappa=1.5)
    a = 1 / (1 + 1e-6)
    torch.testing.assert_close(out.advantages, torch.tensor([[0.5 * a * 1.5, 1.5 * a / 1.5]]), atol=1e-5, rtol=0)


def _stepopsd_loop(b, lam, alpha, kappa):
    """Straight loop over trajectories and steps (normalize_std=False)."""
    scores, groups = b.scores.tolist(), b.group_index.tolist()
    out = torch.zeros_like(b.mask)
    for t in range(len(scores)):
        same = [scores[u] for u in range(len(scores)) if groups[u] == groups[t]]
        A = scores[t] - (sum(same) / len(same) if len(same) > 1 else 0.0)
        toks = {}
        for r in range(b.mask.shape[0]):
            if b.traj_index[r] != t:
                continue
            for pos in range(b.mask.shape[1]):
                if b.mask[r, pos] > 0:
                    d = float(b.logp_teacher[r, pos] - b.logp_old[r, pos])
                    sgn = (A > 0) - (A < 0)
                    w = min(max(2 / (1 + math.exp(-sgn * d)), 1 - alpha), 1 + alpha)
                    out[r, pos] = ((1 - lam) + lam * w) * A
                    toks.setdefault(int(b.step_index[r, pos]), []).append((r, pos))
        if len(toks) >= 2:
            m = {k: sum(abs(float(out[r, p])) for r, p in v) / len(v) for k, v in toks.items()}
            mbar = sum(m.values()) / len(m)
            for k, v in toks.items():
                c = min(max(mbar / (m[k] + 1e-6), 1 / kappa), kappa)
                for r, p in v:
                    out[r, p] *= c
    return out


def _random_batch(seed, per_step):
    g = torch.Generator().manual_seed(seed)
    T, K, n = 6, 3, 3
    rows, steps, traj = [], [], []
    for t in range(T):
        if per_step:
            for k in range(K):
                rows.append([0] + [1] * n)
                steps.append([-1] + [k] * n)
                traj.append(t)
        else:
            rows.append([0] + sum(([1] * n + [0] for _ in range(K)), []))
            steps.append([-1] + sum(([k] * n + [-1] for k in range(K)), []))
            traj.append(t)
    scores = torch.randint(0, 2, (T,), generator=g).float().tolist()
    delta = (torch.randn(len(rows), len(rows[0]), generator=g) * 0.5).tolist()
    return _batch(
        rows, steps, traj, [t // 3 for t in range(T)], scores, delta=delta, rewards=[[0, 0, s] for s in scores]
    )


@pytest.mark.parametrize("per_step", [True, False])
def test_stepopsd_vectorised_equals_loop_and_invariants(per_step):
    for seed in range(3):
        b = _random_batch(seed, per_step)
        out = get_credit("stepopsd")(b, lam0=0.7, alpha_clip=0.3, kappa=2.0, normalize_std=False)
        torch.testing.assert_close(out.advantages, _stepopsd_loop(b, 0.7, 0.3, 2.0), atol=1e-5, rtol=0)
        base = get_credit("dr_grpo")(b).advantages
        assert torch.equal(torch.sign(out.advantages), torch.sign(base))  # sign(A_sh) == sign(A)
    # Delta = 0 -> A_sh = A (budget factors are mbar/(m+1e-6) ~ 1 - 2e-6 when every step has the same |A|)
    b0 = CreditBatch(**{**b.__dict__, "logp_teacher": b.logp_old.clone()})
    torch.testing.assert_close(
        get_credit("stepopsd")(b0).advantages, get_credit("grpo")(b0).advantages, atol=1e-5, rtol=0
    )
    # an all-equal group -> exactly 0, whatever Delta
    same = CreditBatch(**{**b.__dict__, "scores": torch.ones(6)})
    assert get_credit("stepopsd")(same).advantages.abs().max() == 0


def test_rlsd_by_hand_and_schedule():
    # A = +.5 (Dr.GRPO); Delta = ln 1.1 -> w = exp(ln1.1) = 1.1; lam(t) = .5*(1 - t/100)
    # t=0: (.5 + .5*1.1)*.5 = .525; t=50: lam .25 -> (.75 + .275)*.5 = .5125; t=100: .5
    for t, want in ((0, 0.525), (50, 0.5125), (100, 0.5)):
        b = _batch([[1], [1]], [[0], [0]], [0, 1], [0, 0], [1.0, 0.0], delta=[[math.log(1.1)], [0.0]], t=t)
        out = get_credit("rlsd")(b, normalize_std=False)
        torch.testing.assert_close(out.advantages, torch.tensor([[want], [-0.5]]), atol=1e-6, rtol=0)


def test_gigpo_by_hand():
    # per-step rows. group 0: traj 0 (success) anchors [s, a], rewards [0, 1]; traj 1 anchors [s, b, a], rewards 0.
    # group 1: traj 2 anchor [s] (same text, other group -> its own singleton cluster), score .7.
    # gamma .5: G0 = [.5, 1], G1 = [0, 0, 0], G2 = [.7]
    # cluster (0,s): {.5, 0}: mean .25, unbiased std .353553 -> +-.707105; (0,a): {1, 0} -> +-.707105; (0,b), (1,s): 0
    # A_E (Dr.GRPO): +.5, -.5, and .7 for the singleton group (mean 0)
    rows, steps = [[0, 1]] * 6, [[-1, 0], [-1, 1], [-1, 0], [-1, 1], [-1, 2], [-1, 0]]
    b = _batch(
        rows, steps, [0, 0, 1, 1, 1, 2], [0, 0, 1], [1.0, 0.0, 0.7],
        anchors=(("s", "a"), ("s", "b", "a"), ("s",)), rewards=[[0, 1], [0, 0, 0], [0.7]],
    )  # fmt: skip
    out = get_credit("gigpo")(b, gamma=0.5, normalize_std=False)
    s = 0.25 / (math.sqrt(0.125) + 1e-6)
    want = [0.5 + s, 0.5 + s, -0.5 - s, -0.5, -0.5 - s, 0.7]
    torch.testing.assert_close(out.advantages[:, 1], torch.tensor(want), atol=1e-5, rtol=0)
    assert (out.advantages[:, 0] == 0).all()
    assert out.metrics["singleton_frac"] == pytest.approx(2 / 6)
    # without std: A_S = G - mean = +-.25 and +-.5
    out = get_credit("gigpo")(b, gamma=0.5, normalize_std=False, step_std=False)
    torch.testing.assert_close(
        out.advantages[:, 1], torch.tensor([0.75, 1.0, -0.75, -0.5, -1.0, 0.7]), atol=1e-6, rtol=0
    )
    with pytest.raises(ValueError, match="needs CreditBatch.anchors"):
        get_credit("gigpo")(CreditBatch(**{**b.__dict__, "anchors": None}))


def test_discounted_returns():
    # G = [r0 + .5 r1 + .25 r2, r1 + .5 r2, r2] with r = [1, 0, 4] -> [2, 2, 4]
    torch.testing.assert_close(discounted_returns(torch.tensor([1.0, 0, 4]), 0.5), torch.tensor([2.0, 2, 4]).double())


def _gae_loop(r, v, gamma, lam, boot):
    A, nxt_a, nxt_v = [0.0] * len(r), 0.0, boot
    for k in reversed(range(len(r))):
        d = r[k] + gamma * nxt_v - v[k]
        nxt_a = d + gamma * lam * nxt_a
        A[k], nxt_v = nxt_a, v[k]
    return A


def test_step_gae_by_hand_and_loop():
    # gamma=.5, lam=.5, r=[0,0,1], V=[.2,.5,.8]: d2=.2, d1=.5*.8-.5=-.1, d0=.5*.5-.2=.05
    # A2=.2, A1=-.1+.25*.2=-.05, A0=.05+.25*(-.05)=.0375; G=A+V=[.2375,.45,1]
    a, g = step_gae(torch.tensor([[0.0, 0, 1]]), torch.tensor([[0.2, 0.5, 0.8]]), torch.tensor([3]), torch.zeros(1),
                    gamma=0.5, lam=0.5)  # fmt: skip
    torch.testing.assert_close(a, torch.tensor([[0.0375, -0.05, 0.2]]))
    torch.testing.assert_close(g, torch.tensor([[0.2375, 0.45, 1.0]]))
    gen = torch.Generator().manual_seed(0)
    r, v = torch.randn(4, 5, generator=gen), torch.randn(4, 5, generator=gen)
    n, boot = torch.tensor([5, 3, 1, 4]), torch.tensor([0.0, 0.3, 0.0, -1.0])
    a, _ = step_gae(r, v, n, boot, gamma=0.9, lam=0.8)
    for t in range(4):
        want = _gae_loop(r[t, : n[t]].tolist(), v[t, : n[t]].tolist(), 0.9, 0.8, float(boot[t]))
        torch.testing.assert_close(a[t, : n[t]], torch.tensor(want), atol=1e-5, rtol=0)
        assert (a[t, n[t] :] == 0).all()


def test_steppo_gamma_lambda_one_is_reward_to_go_minus_value():
    # concat rows [p, s0, o, s1, o, s2]; V read at the token before each step: positions 0, 2, 4
    # traj 0: r=[0,0,1], V=[.2,.5,.8] -> A = [1-.2, 1-.5, 1-.8] = [.8,.5,.2], G = [1,1,1]
    # traj 1 (truncated, bootstrap V_last=.6): r=[0,0], V=[.3,.6] -> d1 = 0+.6-.6 = 0, A0 = 0+.6-.3 + 0 = .3
    mask = [[0, 1, 0, 1, 0, 1], [0, 1, 0, 1, 0, 0]]
    step = [[-1, 0, -1, 1, -1, 2], [-1, 0, -1, 1, -1, -1]]
    values = [[0.2, 9, 0.5, 9, 0.8, 9], [0.3, 9, 0.6, 9, 9, 9]]
    b = _batch(mask, step, [0, 1], [0, 0], [1.0, 0.0], rewards=[[0, 0, 1], [0, 0]], values=values, trunc=[False, True])
    out = get_credit("steppo")(b, gamma=1.0, lam=1.0, whiten=False)
    torch.testing.assert_close(out.advantages, torch.tensor([[0, 0.8, 0, 0.5, 0, 0.2], [0, 0.3, 0, 0, 0, 0]]))
    torch.testing.assert_close(out.returns, torch.tensor([[0, 1.0, 0, 1, 0, 1], [0, 0.6, 0, 0.6, 0, 0]]))
    # no bootstrap: d1 = 0 - .6 -> A = [.3 - .6, -.6]
    out = get_credit("steppo")(b, gamma=1.0, lam=1.0, whiten=False, bootstrap_truncated=False)
    torch.testing.assert_close(out.advantages[1, [1, 3]], torch.tensor([-0.3, -0.6]))
    # whitening over the 5 step rows (not tokens): (A - mean) / (unbiased std + 1e-8)
    a = torch.tensor([0.8, 0.5, 0.2, -0.3, -0.6])
    out = get_credit("steppo")(b, gamma=1.0, lam=1.0, bootstrap_truncated=False)
    torch.testing.assert_close(out.advantages[mask_t(mask)], (a - a.mean()) / a.std(), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="needs CreditBatch.values"):
        get_credit("steppo")(CreditBatch(**{**b.__dict__, "values": None}))


def mask_t(mask):
    return torch.tensor(mask) > 0


def test_sdar_gate_and_gradient_by_hand():
    # logp_theta = -1, logp_t = -0.8: g = sigmoid(5*.2) = sigmoid(1) = .731059; ell = g*.2 = .146212; d ell/d logp = -g
    lt = torch.tensor([[-0.8, 0.0]])
    lp = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    ell = sdar_token_loss(lp, lt, torch.tensor([[1.0, 0.0]]), beta=5.0)
    torch.testing.assert_close(ell.detach(), torch.tensor([[0.146212, 0.0]]), atol=1e-6, rtol=0)
    ell.sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-0.731059, 0.0]]), atol=1e-6, rtol=0)
    # beta 0 (GRPO+OPSD): gate .5 -> ell = .1
    torch.testing.assert_close(sdar_token_loss(lp.detach(), lt, torch.ones(1, 2), beta=0.0)[0, 0], torch.tensor(0.1))


def test_sdar_acts_on_an_all_equal_group():
    b = _batch(MASK, STEP, [0, 1], [0, 0], [1.0, 1.0], delta=DELTA)
    out = get_credit("sdar")(b)
    assert out.advantages.abs().max() == 0  # GRPO part is 0 ...
    ell = out.aux.fn(b.logp_old, out.aux.logp_teacher, out.aux.target_mask)
    assert ell.abs().sum() > 0  # ... the distillation term still acts
    assert out.aux.coef == 0.01 and not out.aux.replaces_policy_loss
    # gate at logp_theta = logp_old: sigmoid(5*Delta): mean over 8 target tokens
    want = (2 * torch.sigmoid(torch.tensor(5 * LN3)) + torch.sigmoid(torch.tensor(-5 * LN3)) + 5 * 0.5) / 8
    assert out.metrics["gate_mean"] == pytest.approx(float(want), abs=1e-6)
    o = get_credit("grpo+opsd")(b)
    assert o.metrics["gate_mean"] == 0.5 and o.aux.coef == 0.01
    o = get_credit("opsd")(b)
    assert o.aux.replaces_policy_loss and o.advantages.abs().max() == 0


def test_opsd_reward_mode_by_hand():
    # rkl = logp_s - logp_t = -1 - (-.5) = -.5 -> A = +.5 per token; gamma .5 summed forward: [.5 + .25, .5]
    ls, lt, m = torch.tensor([[-1.0, -1.0, 0.0]]), torch.tensor([[-0.5, -0.5, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(opsd_reward_advantages(ls, lt, m), torch.tensor([[0.5, 0.5, 0.0]]))
    torch.testing.assert_close(opsd_reward_advantages(ls, lt, m, gamma=0.5), torch.tensor([[0.75, 0.5, 0.0]]))
    b = _batch(MASK, STEP, [0, 1], [0, 0], [1.0, 0.0], delta=DELTA)
    out = get_credit("opsd")(b, mode="reward")
    torch.testing.assert_close(out.advantages, torch.tensor(DELTA) * torch.tensor(MASK))  # -(ls - lt) = Delta
    with pytest.raises(ValueError, match="needs CreditBatch.logp_teacher"):
        get_credit("sdar")(_batch(MASK, STEP, [0, 1], [0, 0], [1.0, 0.0]))


def test_value_head_and_loss():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Qwen3Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=16)  # fmt: skip
    torch.manual_seed(0)
    lm = transformers.Qwen3ForCausalLM(cfg)
    head = attach_value_head(lm)
    hidden = lm.get_decoder()(input_ids=torch.randint(0, 50, (2, 6))).last_hidden_state
    v = head(hidden)
    assert v.shape == (2, 6) and v.abs().max() == 0  # zero-initialised head
    assert ValueHead(4)(torch.ones(1, 3, 4)).shape == (1, 3)
    mask = torch.tensor([[0, 1, 0, 1, 0, 1.0]])
    step = torch.tensor([[-1, 0, -1, 1, -1, 2]])
    rows, vpos, fpos = step_value_positions(mask, step)
    assert vpos.tolist() == [0, 2, 4] and fpos.tolist() == [1, 3, 5]
    vmask = step_value_mask(mask, step)
    assert vmask.tolist() == [[0, 1, 0, 1, 0, 1]]
    # token-aligned V = [.2,.5,.8] at the step's first tokens 1,3,5, old V = 0, G = 1 on every step, clip .2:
    # unclipped err (V-G)^2 = [.64,.25,.04]; clipped V = [.2,.2,.2] -> .64 each; max -> [.64,.64,.64] -> .5*.64 = .32
    vals = torch.tensor([[0, 0.2, 0, 0.5, 0, 0.8]], requires_grad=True)
    err = clipped_value_error(vals, torch.zeros(1, 6), torch.tensor([[0, 1.0, 0, 1, 0, 1]]), clip=0.2)
    loss = 0.5 * (err * vmask).sum() / vmask.sum()
    assert loss.item() == pytest.approx(0.32)
    loss.backward()
    assert vals.grad[0, 1] != 0
    # no clip: plain squared error
    plain = clipped_value_error(vals, torch.zeros(1, 6), torch.ones(1, 6), clip=None)
    torch.testing.assert_close(plain[0, [1, 3, 5]], torch.tensor([0.64, 0.25, 0.04]))
