"""The related 2026 credit methods (ALGORITHMS.md §10, [recon]): each formula against a from-scratch
loop of the spec on random batches, numbers by hand, and "each part off => identical to GRPO"."""

import functools
import math

import pytest
import torch
from stepgym.distill.judge import ROLES, llm_judge, oracle_judge, parse_role
from stepgym.distill.shaping import craft_token_loss, rising_schedule, robust_nll
from stepgym.envs.records import StepRecord, Trajectory
from stepgym.trainers.credit import CreditBatch, get_credit, list_credits, register_credit

T, K, N = 6, 3, 3  # trajectories (2 groups of 3), steps, tokens per step


def _random_batch(seed: int, *, success=None) -> CreditBatch:
    """Concat rows: [prompt, (N step tokens, 1 observation token) x K]; random Delta, entropy, roles, anchors."""
    g = torch.Generator().manual_seed(seed)
    row = [0] + sum(([1] * N + [0] for _ in range(K)), [])
    step = [-1] + sum(([k] * N + [-1] for k in range(K)), [])
    mask = torch.tensor([row] * T, dtype=torch.float32)
    obs = torch.tensor([[-1] + sum(([-1] * N + [k] for k in range(K)), [])] * T)  # the token after step k
    scores = torch.randint(0, 2, (T,), generator=g).float() if success is None else torch.tensor(success).float()
    logp_old = -torch.rand(T, len(row), generator=g) * 3 * mask
    delta = torch.randn(T, len(row), generator=g) * 0.5 * mask
    roles = tuple(tuple(ROLES[int(i)] for i in torch.randint(0, 4, (K,), generator=g)) for _ in range(T))
    anchors = tuple(tuple(f"s{int(torch.randint(0, 2, (1,), generator=g))}" for _ in range(K)) for _ in range(T))
    return CreditBatch(
        mask=mask,
        step_index=torch.tensor([step] * T),
        action_mask=torch.zeros_like(mask),
        traj_index=torch.arange(T),
        group_index=torch.tensor([t // 3 for t in range(T)]),
        scores=scores,
        success=scores > 0.5,
        truncated=torch.zeros(T, dtype=torch.bool),
        step_rewards=tuple((0.0,) * (K - 1) + (float(s),) for s in scores),
        logp_old=logp_old,
        logp_teacher=(logp_old + delta) * mask,
        anchors=anchors,
        entropy=torch.rand(T, len(row), generator=g) * 2 * mask,
        obs_step=obs,
        roles=roles,
        training_step=int(torch.randint(0, 50, (1,), generator=g)),
    )


def _tokens(b: CreditBatch, t: int, k: int) -> list[tuple[int, int]]:
    return [
        (r, p)
        for r in range(b.mask.shape[0])
        if int(b.traj_index[r]) == t
        for p in range(b.mask.shape[1])
        if b.mask[r, p] > 0 and int(b.step_index[r, p]) == k
    ]


def _dr_grpo(b: CreditBatch) -> list[float]:
    s, grp = b.scores.tolist(), b.group_index.tolist()
    out = []
    for t in range(len(s)):
        same = [s[u] for u in range(len(s)) if grp[u] == grp[t]]
        out.append(s[t] - (sum(same) / len(same) if len(same) > 1 else 0.0))
    return out


def _delta(b, r, p) -> float:
    return float(b.logp_teacher[r, p] - b.logp_old[r, p])


def _grpo(b):
    return get_credit("grpo")(b).advantages


def test_registry_knows_the_methods_and_their_needs():
    assert {"craft", "sgcd", "paw", "atod", "triage"} <= set(list_credits())
    assert get_credit("craft").needs == {"teacher"} and get_credit("atod").needs == {"teacher", "entropy"}
    assert get_credit("paw").needs == {"observations", "entropy"} and get_credit("triage").needs == {"judge"}
    assert get_credit("sgcd").config_defaults == {"teacher.hindsight": ("outcome", "contrast")}
    assert get_credit("ucob").needs == {"teacher", "context_view"}
    assert get_credit("ucob").config_defaults["teacher.placement"] == "prompt"
    with pytest.raises(ValueError, match="Did you mean 'teacher'"):
        register_credit("_bad_need", needs=("teachr",))(lambda b: None)


# ------------------------------------------------------------------------------------------ CRAFT
def _craft_loop(b: CreditBatch, lam: float, tau: float) -> torch.Tensor:
    A = _dr_grpo(b)
    grp = b.group_index.tolist()
    D = {(t, k): sum(_delta(b, r, p) for r, p in _tokens(b, t, k)) / N for t in range(T) for k in range(K)}
    w_out = torch.zeros_like(b.mask)
    for t in range(T):
        for k in range(K):
            sibs = [u for u in range(T) if grp[u] == grp[t] and u != t]
            z = [math.exp(D[u, k] / tau) for u in sibs]
            c = sum(zi / sum(z) * A[u] for zi, u in zip(z, sibs)) - sum(A[u] for u in sibs) / len(sibs)
            for r, p in _tokens(b, t, k):
                w_out[r, p] = lam * c
    return w_out


def test_craft_equals_the_spec_loop_and_is_grpo_when_off():
    for seed in range(4):
        b = _random_batch(seed)
        out = get_credit("craft")(b, lam0=0.3, tau=0.7, normalize_std=False)
        torch.testing.assert_close(out.advantages, get_credit("dr_grpo")(b).advantages)  # advantage untouched
        torch.testing.assert_close(out.aux.weight, _craft_loop(b, 0.3, 0.7), atol=1e-5, rtol=0)
        off = get_credit("craft")(b, lam0=0.0)
        assert off.aux is None and torch.equal(off.advantages, _grpo(b))
    # a group with all-equal advantages gives c = 0 everywhere: no distillation at all
    flat = _random_batch(0, success=[1, 1, 1, 0, 0, 0])
    assert get_credit("craft")(flat, lam0=1.0).aux.weight.abs().max() == 0


def test_craft_token_loss_by_hand():
    # logp = -1, logp_T = -0.5. weight +2: rkl value 2 * (-1 + .5) * (-1) = 1, gradient 2 * (-.5) = -1.
    # weight -2: rho = exp(.5); value -2 * rho * (-1)... = 2 * rho, gradient -2 * rho.
    lp = torch.tensor([[-1.0, -1.0, -1.0]], requires_grad=True)
    lt = torch.tensor([[-0.5, -0.5, -0.5]])
    w = torch.tensor([[2.0, -2.0, 0.0]])
    loss = craft_token_loss(lp, lt, torch.ones(1, 3), weight=w)
    rho = math.exp(0.5)
    torch.testing.assert_close(loss.detach(), torch.tensor([[1.0, 2 * rho, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(lp.grad, torch.tensor([[-1.0, -2 * rho, 0.0]]))
    # the importance ratio is clamped
    big = craft_token_loss(torch.tensor([[-9.0]]), torch.tensor([[0.0]]), torch.ones(1, 1), weight=-torch.ones(1, 1))
    assert big.item() == pytest.approx(5.0 * 9.0)


def test_craft_anchor_alignment_uses_only_siblings_at_the_same_state():
    b = _random_batch(1)
    b = CreditBatch(**{**b.__dict__, "anchors": tuple((f"u{t}",) * K for t in range(T))})  # no shared state
    assert get_credit("craft")(b, lam0=1.0, align="anchor").aux.weight.abs().max() == 0


# ------------------------------------------------------------------------------------------ SGCD
def _sgcd_loop(b, kappa, eps):
    A = _dr_grpo(b)
    out = torch.zeros_like(b.mask)
    for t in range(T):
        toks = [x for k in range(K) for x in _tokens(b, t, k)]
        scale = sum(abs(_delta(b, r, p)) for r, p in toks) / len(toks)
        for r, p in toks:
            d = _delta(b, r, p) / (scale + 1e-6)
            sgn = (A[t] > 0) - (A[t] < 0)
            out[r, p] = A[t] * min(max(1 + kappa * sgn * d, 1 - eps), 1 + eps)
    return out


def test_sgcd_equals_the_spec_loop_keeps_signs_and_is_grpo_when_off():
    for seed in range(4):
        b = _random_batch(seed)
        out = get_credit("sgcd")(b, kappa=0.8, eps=0.3, normalize_std=False)
        torch.testing.assert_close(out.advantages, _sgcd_loop(b, 0.8, 0.3), atol=1e-5, rtol=0)
        assert torch.equal(torch.sign(out.advantages), torch.sign(get_credit("dr_grpo")(b).advantages))
        assert torch.equal(get_credit("sgcd")(b, kappa=0.0).advantages, _grpo(b))
        assert out.aux is None  # no distillation loss on the actor


# ------------------------------------------------------------------------------------------ ATOD
def _atod_loop(b, rho, kappa):
    A = _dr_grpo(b)
    out = torch.zeros_like(b.mask)
    for t in range(T):
        D = [sum(abs(_delta(b, r, p)) for r, p in _tokens(b, t, k)) / N for k in range(K)]
        U = [sum(float(b.entropy[r, p]) for r, p in _tokens(b, t, k)) / N for k in range(K)]
        x = [d * u for d, u in zip(D, U)]
        u = [1 + kappa * (xi / max(x) if max(x) > 0 else 0.0) for xi in x]
        u = [ui / (sum(u) / K) for ui in u]
        for k in range(K):
            for r, p in _tokens(b, t, k):
                out[r, p] = rho * A[t] + (1 - rho) * u[k] * _delta(b, r, p)
    return out


def test_atod_equals_the_spec_loop_and_its_endpoints():
    for seed in range(4):
        b = _random_batch(seed)
        rho = rising_schedule(0.1, b.training_step, 60)
        out = get_credit("atod")(b, rho0=0.1, rho_steps=60, kappa=1.5, normalize_std=False)
        torch.testing.assert_close(out.advantages, _atod_loop(b, rho, 1.5), atol=1e-5, rtol=0)
        # rho = 1: GRPO exactly; rho = 0 with uniform turns: the OPD per-token reward of §7
        assert torch.equal(get_credit("atod")(b, rho0=1.0).advantages, _grpo(b))
        pure = CreditBatch(**{**b.__dict__, "training_step": 0})
        torch.testing.assert_close(
            get_credit("atod")(pure, rho0=0.0, kappa=0.0).advantages,
            get_credit("opsd")(pure, mode="reward").advantages,
        )
    assert rising_schedule(0.0, 50, 100) == 0.5 and rising_schedule(0.0, 50, 100, "cosine") == pytest.approx(0.5)
    assert rising_schedule(0.2, 25, 100, "cosine") == pytest.approx(0.2 + 0.8 * (1 - math.cos(math.pi / 4)) / 2)
    assert rising_schedule(0.0, 500, 100) == 1.0


# ------------------------------------------------------------------------------------------ TRIAGE
def test_triage_equals_the_spec_loop_and_is_grpo_when_off():
    c = {"progress": 0.9, "exploration": 0.2, "infrastructure": 0.0, "regression": -1.5}
    for seed in range(4):
        b = _random_batch(seed)
        out = get_credit("triage")(
            b, beta=0.5, c_progress=0.9, c_exploration=0.2, c_regression=-1.5, c_max=1.0, normalize_std=False
        )
        A = _dr_grpo(b)
        want = torch.zeros_like(b.mask)
        for t in range(T):
            for k in range(K):
                role = b.roles[t][k]
                bonus = max(-1.0, min(1.0, c[role]))
                if role == "exploration" and bool(b.success[t]):
                    bonus = 0.0  # exploration is paid in failed rollouts only
                for r, p in _tokens(b, t, k):
                    want[r, p] = A[t] + 0.5 * bonus
        torch.testing.assert_close(out.advantages, want, atol=1e-6, rtol=0)
        assert torch.equal(get_credit("triage")(b, beta=0.0).advantages, _grpo(b))


def test_oracle_and_llm_judges():
    def st(k, **kw):
        base = dict(index=k, observation=f"o{k}", action_text="<action>x</action>", action="x", valid=True)
        return StepRecord(**{**base, "reward": 0.0, "terminated": False, "truncated": False, **kw})

    steps = [
        st(0),
        st(1, valid=False, action=None),
        st(2, info={"commitment": "right", "decisive": True}),
        st(3, info={"commitment": "wrong", "decisive": True}),
        st(4, reward=1.0),
    ]
    traj = Trajectory(
        env_id="e", task_id="t", subset="s", group_id="g", steps=steps, outcome=1.0, success=True, truncated=False
    )
    assert oracle_judge([traj]) == [("exploration", "infrastructure", "progress", "regression", "progress")]
    assert parse_role("I think: Regression.") == "regression" and parse_role("no idea") == "infrastructure"
    seen = []

    def generate(prompts):
        seen.extend(prompts)
        return ["progress", "exploration!", "blah", "REGRESSION", "infrastructure"]

    assert llm_judge(generate)([traj]) == [
        ("progress", "exploration", "infrastructure", "regression", "infrastructure")
    ]
    assert (
        len(seen) == 5
        and "Action: <action>x</action>" in seen[0]
        and "Outcome of the whole episode: success" in seen[0]
    )


# ------------------------------------------------------------------------------------------ PaW
def test_paw_targets_the_observations_after_high_entropy_steps():
    for seed in range(4):
        b = _random_batch(seed)
        out = get_credit("paw")(b, lam0=0.4, top_frac=0.5)
        assert torch.equal(out.advantages, _grpo(b))
        assert out.aux.coef == pytest.approx(0.4 * (1 - float(b.success.float().mean())))
        ent = {(t, k): sum(float(b.entropy[r, p]) for r, p in _tokens(b, t, k)) / N for t in range(T) for k in range(K)}
        order = sorted(ent, key=lambda tk: (-ent[tk], tk))
        chosen = set(order[: round(0.5 * T * K)])
        want = torch.zeros_like(b.mask)
        for t, k in chosen:  # the observation token right after step k's tokens
            want[t, 1 + k * (N + 1) + N] = 1.0
        torch.testing.assert_close(out.aux.target_mask, want)
        assert get_credit("paw")(b, lam0=0.0).aux is None
    # every trajectory succeeded: lam = 0, GRPO exactly
    won = _random_batch(0, success=[1] * T)
    assert get_credit("paw")(won).aux is None


def test_robust_nll_by_hand():
    lp = torch.tensor([[math.log(0.5), math.log(0.01)]], requires_grad=True)
    gce = robust_nll(lp, lp, torch.ones(1, 2), kind="gce", q=0.5)
    torch.testing.assert_close(gce.detach(), torch.tensor([[(1 - 0.5**0.5) / 0.5, (1 - 0.1) / 0.5]]))
    tr = robust_nll(lp, lp, torch.ones(1, 2), kind="truncated", max_nll=2.0)
    torch.testing.assert_close(tr.detach(), torch.tensor([[math.log(2.0), 2.0]]))
    tr.sum().backward()
    assert lp.grad.tolist() == [[-1.0, 0.0]]  # no gradient beyond the truncation
    # q -> 0 is the plain NLL
    tiny_q = robust_nll(torch.tensor([[math.log(0.3)]]), None, torch.ones(1, 1), kind="gce", q=1e-4)
    assert tiny_q.item() == pytest.approx(-math.log(0.3), rel=1e-3)


# ------------------------------------------------------------------------------------------ UCOB
def _with_view(b: CreditBatch) -> CreditBatch:
    """The batch with a context view (its rows unchanged: the credit function only passes it on)."""
    from stepgym.distill.rescore import ContextView

    ids = torch.zeros(b.mask.shape, dtype=torch.long)
    pos = torch.arange(b.mask.shape[1]).expand(b.mask.shape[0], -1).clone()
    return CreditBatch(**{**b.__dict__, "context_view": ContextView(ids, torch.ones_like(ids), pos)})


def test_ucob_local_teacher_in_either_direction_by_return_to_go():
    for seed in range(4):
        b = _with_view(_random_batch(seed))
        b = CreditBatch(**{**b.__dict__, "step_rewards": tuple((0.3 * t, 0.0, float(b.scores[t])) for t in range(T))})
        out = get_credit("ucob")(b, coef=0.05, w_max=0.8)
        assert torch.equal(out.advantages, _grpo(b)) and out.aux.coef == 0.05 and out.aux.view is b.context_view
        grp = b.group_index.tolist()
        want = torch.zeros_like(b.mask)
        for t in range(T):
            rtg = [sum(b.step_rewards[t][j] for j in range(k, K)) for k in range(K)]
            for k in range(K):
                visits = [
                    sum(b.step_rewards[u][j] for j in range(k2, K))
                    for u in range(T)
                    for k2 in range(K)
                    if grp[u] == grp[t] and b.anchors[u][k2] == b.anchors[t][k]
                ]
                # > 0: below the state's mean, the context view teaches; < 0: above it, the visit teaches it
                w = max(-0.8, min(0.8, sum(visits) / len(visits) - rtg[k])) if len(visits) >= 2 else 0.0
                for r, p in _tokens(b, t, k):
                    want[r, p] = w
        torch.testing.assert_close(out.aux.weight, want, atol=1e-6, rtol=0)
        assert (want > 0).any() and (want < 0).any()  # both directions occur on these batches
        one = get_credit("ucob")(b, coef=0.05, w_max=0.8, directions="to_plain").aux.weight
        torch.testing.assert_close(one, want.clamp(min=0), atol=1e-6, rtol=0)
        other = get_credit("ucob")(b, coef=0.05, w_max=0.8, directions="to_context").aux.weight
        torch.testing.assert_close(other, want.clamp(max=0), atol=1e-6, rtol=0)
        assert get_credit("ucob")(b, coef=0.0).aux is None
    # no target token to teach (e.g. no action span under teacher.target="action"): no term, so no extra forwards
    b = _with_view(_random_batch(0))
    out = get_credit("ucob")(CreditBatch(**{**b.__dict__, "target_mask": torch.zeros_like(b.mask)}))
    assert out.aux is None and out.metrics["taught_tokens"] == 0 and torch.equal(out.advantages, _grpo(b))
    with pytest.raises(ValueError, match="directions"):
        get_credit("ucob")(_with_view(_random_batch(0)), directions="up")
    with pytest.raises(ValueError, match="context_view.*placement='prompt'"):
        get_credit("ucob")(_random_batch(0))


def _topk_kl_loop(ls: list[float], lt: list[float], a: int, top_k: int, divergence: str, beta: float) -> float:
    """One token of the spec by hand: renormalise both over the teacher's top K, KL, SDAR gate at the sampled token."""
    V = len(lt)
    keep = sorted(range(V), key=lambda i: -lt[i])[: top_k or V]
    zt = math.log(sum(math.exp(lt[i]) for i in keep))
    zs = math.log(sum(math.exp(ls[i]) for i in keep))
    p = {i: math.exp(lt[i] - zt) for i in keep}
    q = {i: math.exp(ls[i] - zs) for i in keep}
    if divergence == "forward":
        kl = sum(p[i] * (math.log(p[i]) - math.log(q[i])) for i in keep)
    else:
        kl = sum(q[i] * (math.log(q[i]) - math.log(p[i])) for i in keep)
    return kl / (1.0 + math.exp(-beta * (lt[a] - ls[a])))


@pytest.mark.parametrize("top_k,divergence", [(4, "forward"), (4, "reverse"), (0, "forward")])
def test_ucob_two_view_loss_equals_the_spec_loop(top_k, divergence):
    from stepgym.distill.shaping import ucob_two_view_loss

    g = torch.Generator().manual_seed(3)
    n, V = 7, 11
    lp_rows = torch.log_softmax(torch.randn(n, V, generator=g) * 2, -1).requires_grad_(True)
    lp_view = torch.log_softmax(torch.randn(n, V, generator=g) * 2, -1).requires_grad_(True)
    tokens = torch.randint(0, V, (n,), generator=g)
    weight = torch.tensor([0.5, -0.3, 0.0, 2.0, -2.0, 1.0, -0.1])
    got = ucob_two_view_loss(lp_rows, lp_view, tokens, weight, top_k=top_k, divergence=divergence, beta=5.0)
    R, C = lp_rows.tolist(), lp_view.tolist()
    for i in range(n):
        w, a = float(weight[i]), int(tokens[i])
        if w > 0:  # the context view teaches the plain one
            want = w * _topk_kl_loop(R[i], C[i], a, top_k, divergence, 5.0)
        else:  # the plain view teaches the context one
            want = -w * _topk_kl_loop(C[i], R[i], a, top_k, divergence, 5.0)
        assert float(got[i].detach()) == pytest.approx(want, rel=1e-5, abs=1e-7)
    # each direction moves only its learner: the taught view's rows get gradient, the teacher's none
    got.sum().backward()
    assert lp_rows.grad[weight > 0].abs().sum() > 0 and lp_view.grad[weight > 0].abs().sum() == 0
    assert lp_view.grad[weight < 0].abs().sum() > 0 and lp_rows.grad[weight < 0].abs().sum() == 0
    assert lp_rows.grad[2].abs().sum() == 0 and lp_view.grad[2].abs().sum() == 0


def test_ucob_update_trains_both_views_as_a_from_scratch_forward():
    """The update's two-view term (rows and context-view rows, both with grad) against a forward per row by hand."""
    from stepgym.distill.rescore import context_view, teacher_logprobs
    from stepgym.distill.shaping import ucob_two_view_loss
    from stepgym.trainers.credit import AuxLoss
    from stepgym.trainers.update import UpdateInputs, _two_view_aux
    from trainer_helpers import concat_sequence, tiny_model

    model = tiny_model(0).float()
    rows = [
        concat_sequence([1, 2, 3], [([4, 5], [6]), ([7, 8, 9], [10])], seed=0),
        concat_sequence([1, 2], [([11, 12, 13], [14])], seed=1),
    ]
    hind = [[20, 21, 22], [23]]
    L = max(len(r.ids) for r in rows)
    view = context_view(rows, hind, placement="prompt", length=L)
    # the view's rows are what the rescoring teacher scores: same log-probs of the targets
    logp_t, target = teacher_logprobs(model, rows, hind, placement="prompt")
    ids = torch.zeros(2, L, dtype=torch.long)
    attn = torch.zeros(2, L, dtype=torch.long)
    mask = torch.zeros(2, L)
    for b, r in enumerate(rows):
        ids[b, : len(r.ids)] = torch.tensor(r.ids)
        attn[b, : len(r.ids)] = 1
        mask[b, : len(r.ids)] = torch.tensor(r.loss_mask, dtype=torch.float32)
    with torch.no_grad():
        lv = torch.log_softmax(model(input_ids=view.input_ids, attention_mask=view.attention_mask).logits, -1)
    for b, p in target.nonzero().tolist():
        vp = int(view.position[b, p])
        assert float(lv[b, vp - 1, ids[b, p]]) == pytest.approx(float(logp_t[b, p]), abs=1e-5)
    # row 0 is taught by the context view and row 1 teaches it; or row 0 has no term (and runs no view forward)
    for row_w in ([0.7, -1.3], [0.0, -1.3]):
        weight = target * torch.tensor(row_w)[:, None]
        fn = functools.partial(ucob_two_view_loss, top_k=8, divergence="forward", beta=5.0)
        micro = UpdateInputs(
            input_ids=ids, attention_mask=attn, mask=mask, logp_old=torch.zeros(2, L), advantages=torch.zeros(2, L),
            aux=AuxLoss(fn, 0.05, target, logp_t, weight=weight, view=view),
        )  # fmt: skip
        model.zero_grad()
        got = _two_view_aux(model, micro, target, 1.0)
        got.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        # by hand: one full forward per row and per view row, then the spec loop's term per target token
        model.zero_grad()
        total = 0.0
        for b, r in enumerate(rows):
            lr = torch.log_softmax(model(input_ids=torch.tensor([r.ids])).logits[0], -1)  # [n, V]
            vrow = view.input_ids[b, : int(view.attention_mask[b].sum())]
            lvv = torch.log_softmax(model(input_ids=vrow[None]).logits[0], -1)  # [nv, V]
            for p in target[b].nonzero().flatten().tolist():
                vp = int(view.position[b, p])
                term = fn(lr[p - 1][None], lvv[vp - 1][None], ids[b, p][None], weight[b, p][None])[0]
                assert float(got[b, p].detach()) == pytest.approx(float(term.detach()), rel=1e-4, abs=1e-6)
                total = total + term
        total.backward()
        for g1, p in zip(grads, model.parameters()):
            torch.testing.assert_close(g1, p.grad, atol=1e-5, rtol=1e-4)
        assert any(g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------------ inputs
def test_observation_steps_in_both_layouts_and_providers():
    from stepgym.trainers.credit_inputs import check_providers, observation_steps

    # concat: [p, g0, g0, o, o, g1, pad]; observations are owned by the step before them
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    mask = torch.tensor([[0, 1, 1, 0, 0, 1, 0]], dtype=torch.float32)
    step = torch.tensor([[-1, 0, 0, -1, -1, 1, -1]])
    got = observation_steps(ids, attn, mask, step, torch.tensor([0]))
    assert got.tolist() == [[-1, -1, -1, 0, 0, -1, -1]]
    # per-step: row 1's prompt = row 0 + observation [8, 9]; row 2 starts another trajectory
    ids = torch.tensor([[5, 6, 7, 0, 0, 0], [5, 6, 7, 8, 9, 11], [5, 6, 7, 8, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    mask = torch.tensor([[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]], dtype=torch.float32)
    step = torch.tensor([[-1, 0, 0, -1, -1, -1], [-1, -1, -1, -1, -1, 1], [-1, -1, -1, 0, -1, -1]])
    got = observation_steps(ids, attn, mask, step, torch.tensor([0, 0, 1]))
    assert got.tolist() == [[-1] * 6, [-1, -1, -1, 0, 0, -1], [-1] * 6]
    with pytest.raises(ValueError, match="needs a step judge"):
        check_providers(get_credit("triage"), teacher=None, judge=None)
    with pytest.raises(ValueError, match="needs teacher log-probs"):
        check_providers(get_credit("craft"), teacher=None, judge=None)
    check_providers(get_credit("grpo"), teacher=None, judge=None)


def test_contrast_hindsight_template_and_written():
    from stepgym.distill.hindsight import contrast_hindsight, llm_contrast_hindsight_batch

    def traj(gid, ok, actions):
        steps = [
            StepRecord(
                index=k,
                observation=f"o{k}",
                action_text=a,
                action=a,
                valid=True,
                reward=0.0,
                terminated=False,
                truncated=False,
            )  # fmt: skip
            for k, a in enumerate(actions)
        ]
        return Trajectory(
            env_id="e", task_id="t", subset="s", group_id=gid, steps=steps, outcome=float(ok), success=ok,
            truncated=False,
        )  # fmt: skip

    group = [traj("g", False, ["go", "heat"]), traj("g", True, ["go", "cool"]), traj("h", False, ["x"])]
    text = contrast_hindsight(group[0], group)
    assert text == (
        "sibling_contrast:\nsuccessful sibling actions: go | cool\nfailed sibling actions: go | heat\n"
        "first difference at step 2: the successful sibling did cool, the failed one heat"
    )
    assert contrast_hindsight(group[1], group) == text and contrast_hindsight(group[2], group) is None
    prompts = []

    def write(ps):
        prompts.extend(ps)
        return [" cool, not heat. "]

    out = llm_contrast_hindsight_batch(group, write)
    assert out == ["sibling_contrast:\ncool, not heat.", "sibling_contrast:\ncool, not heat.", None]
    assert len(prompts) == 1 and "action: cool" in prompts[0] and "action: heat" in prompts[0]


def test_ucob_term_in_ppo_update_is_the_gradient_of_coef_times_its_token_mean():
    """ppo_update backpropagates the two-view term on its own (to free its graphs early).

    With zero advantages and plain SGD, the step is exactly -lr * coef * grad of the term's mean over the target
    tokens, in 1 or 2 micro-batches.
    """
    from stepgym.distill.rescore import context_view
    from stepgym.distill.shaping import ucob_two_view_loss
    from stepgym.trainers.config import LossConfig
    from stepgym.trainers.credit import AuxLoss
    from stepgym.trainers.update import UpdateInputs, _two_view_aux, ppo_update
    from trainer_helpers import concat_sequence, tiny_model

    rows = [
        concat_sequence([1, 2, 3], [([4, 5], [6]), ([7, 8, 9], [10])], seed=0),
        concat_sequence([1, 2], [([11, 12, 13], [14])], seed=1),
    ]
    L = max(len(r.ids) for r in rows)
    view = context_view(rows, [[20, 21, 22], [23]], placement="prompt", length=L)
    ids, attn, mask = torch.zeros(2, L, dtype=torch.long), torch.zeros(2, L, dtype=torch.long), torch.zeros(2, L)
    for b, r in enumerate(rows):
        ids[b, : len(r.ids)], attn[b, : len(r.ids)] = torch.tensor(r.ids), 1
        mask[b, : len(r.ids)] = torch.tensor(r.loss_mask, dtype=torch.float32)
    fn = functools.partial(ucob_two_view_loss, top_k=8, divergence="forward", beta=5.0)
    # both rows taught, or only the second (the first then runs no view forward)
    for row_w, micro_batch_size in (([0.7, -1.3], 2), ([0.7, -1.3], 1), ([0.0, -1.3], 2)):
        weight = mask * torch.tensor(row_w)[:, None]
        inputs = UpdateInputs(
            input_ids=ids, attention_mask=attn, mask=mask, logp_old=torch.zeros(2, L), advantages=torch.zeros(2, L),
            aux=AuxLoss(fn, 0.5, mask, torch.zeros(2, L), weight=weight, view=view),
        )  # fmt: skip
        ref = tiny_model(0).float()
        (0.5 * (_two_view_aux(ref, inputs, mask, 1.0) * mask).sum() / mask.sum()).backward()
        model = tiny_model(0).float()
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        out = ppo_update(model, opt, inputs, loss_config=LossConfig(), micro_batch_size=micro_batch_size,
                         max_grad_norm=None)  # fmt: skip
        assert out["loss/aux"] > 0
        for p0, p, r in zip(before, model.parameters(), ref.parameters()):
            torch.testing.assert_close(p0 - p, r.grad, atol=1e-6, rtol=1e-4)
