"""The related 2026 step/turn-level credit methods as registry plug-ins (ALGORITHMS.md §10, all [recon]).

CRAFT, SGCD, PaW, ATOD, TRIAGE and UCOB, each through the
registry's one signature and declaring what it needs (``trainers/credit_inputs.py`` fills it). Only
the papers' abstracts could be read: every formula is our reconstruction, every choice the abstracts
leave open is a keyword option whose default is the one written in the spec (or, where the spec is
silent, ours, marked [recon]). Each method reduces exactly to GRPO with its part switched off
(tested). The math lives in :mod:`stepgym.distill.shaping`.
"""

from __future__ import annotations

import functools

import torch
from stepgym.distill.judge import ROLES
from stepgym.distill.shaping import (
    atod_turn_weights,
    craft_sibling_credit,
    craft_token_loss,
    discounted_returns,
    gated_turn_mean,
    linear_schedule,
    rising_schedule,
    robust_nll,
    sgcd_shape,
    ucob_two_view_loss,
)
from stepgym.trainers.credit import (
    AuxLoss,
    CreditBatch,
    CreditOutput,
    _delta,
    _delta_metrics,
    _need,
    _outcome,
    _steps,
    _summary,
    group_advantages,
    register_credit,
)

__all__ = ["atod", "craft", "paw", "sgcd", "triage", "ucob"]


def _per_step(values: torch.Tensor, sid: torch.Tensor) -> torch.Tensor:  # [S] -> [B, L]
    out = torch.zeros(sid.shape, dtype=values.dtype)
    out[sid >= 0] = values[sid[sid >= 0]]
    return out


@register_credit("craft", needs=("teacher",))
def craft(
    batch: CreditBatch,
    *,
    lam0: float = 0.1,
    lam_steps: int = 0,
    magnitude: str = "abs",
    align: str = "step",
    tau: float = 1.0,
    ratio_max: float = 5.0,
    normalize_std: bool = True,
) -> CreditOutput:
    """CRAFT: signed counterfactual credit from the GRPO siblings (arXiv 2606.29476) [recon].

    The advantage is GRPO's. At each aligned step, ``c = sum_j w_j A_j - mean_j A_j`` over the G-1
    siblings with ``w_j = softmax_j(Delta_j / tau)`` (``Delta_j`` = sibling ``j``'s mean teacher-student
    gap on that step; :func:`~stepgym.distill.shaping.craft_sibling_credit`). An auxiliary
    distillation term acts on the step's target tokens with weight ``lam * c`` (``magnitude="abs"``)
    or ``lam * sign(c)`` (``"sign"``): reverse KL where ``c > 0``, forward KL where ``c < 0``
    (:func:`~stepgym.distill.shaping.craft_token_loss`). ``lam0 = 0`` is GRPO exactly.

    Args:
        batch: The credit batch.
        lam0: Distillation weight (decays linearly to 0 over ``lam_steps``; 0 steps = constant) [recon].
        lam_steps: Decay horizon in optimizer steps (0 = constant).
        magnitude: ``abs`` (``lam * |c|``) or ``sign`` (``lam``) per token.
        align: Siblings are aligned by the same ``step`` index or the same ``anchor`` observation (GiGPO).
        tau: Softmax temperature over the siblings' gaps [recon].
        ratio_max: Clamp of the forward-KL importance ratio ``pi_T / pi`` [recon].
        normalize_std: GRPO's std normalisation (off = Dr.GRPO).

    Not built: the paper's EMA controller trading the distillation weight against the reference-KL
    weight as gate activity grows (a credit method has no state across steps; ``lam0``/``lam_steps``
    schedule it instead).
    """
    if magnitude not in ("abs", "sign"):
        raise ValueError(f"craft magnitude must be 'abs' or 'sign', got {magnitude!r}")
    if align not in ("step", "anchor"):
        raise ValueError(f"craft align must be 'step' or 'anchor', got {align!r}")
    adv = _outcome(batch, normalize_std)  # [B, L]
    lam = lam0 if lam_steps <= 0 else linear_schedule(lam0, batch.training_step, lam_steps)
    if lam == 0:
        return CreditOutput(adv, metrics={**_summary(adv, batch.mask), "lam": 0.0})
    delta = _delta(batch, "craft")  # [B, L]
    sid, step_traj, step_k = _steps(batch)
    tgt = batch.targets > 0  # [B, L]
    step_delta = gated_turn_mean(delta, tgt, sid, step_traj.shape[0])  # [S]
    groups = batch.group_index[step_traj]  # [S]
    if align == "step":
        keys = [(int(g), int(k)) for g, k in zip(groups, step_k)]
    else:
        anchors = _need(batch, "anchors", "craft")
        keys = [(int(g), anchors[int(t)][int(k)]) for g, t, k in zip(groups, step_traj, step_k)]
    ids: dict[object, int] = {}
    step_key = torch.tensor([ids.setdefault(k, len(ids)) for k in keys], dtype=torch.long)  # [S]
    traj_adv = group_advantages(batch.scores, batch.group_index, normalize_std=normalize_std)  # [T]
    c = craft_sibling_credit(traj_adv, step_delta, step_traj, step_key, tau=tau)  # [S]
    c_tok = _per_step(c if magnitude == "abs" else torch.sign(c), sid)  # [B, L]
    weight = lam * c_tok * batch.targets  # [B, L]
    aux = AuxLoss(
        functools.partial(craft_token_loss, ratio_max=ratio_max),
        1.0,
        batch.targets,
        _need(batch, "logp_teacher", "craft"),
        weight=weight,
    )
    on = tgt & (weight != 0)
    metrics = {
        "lam": lam,
        "c_mean": float(c.mean()) if c.numel() else 0.0,
        "c_pos_frac": float((c > 0).float().mean()) if c.numel() else 0.0,
        "gate_active": float(on.float().sum() / tgt.float().sum().clamp(min=1)),
        **_delta_metrics(batch, delta),
    }
    return CreditOutput(adv, aux=aux, metrics={**_summary(adv, batch.mask), **metrics})


@register_credit("sgcd", needs=("teacher",), config_defaults={"teacher.hindsight": ("outcome", "contrast")})
def sgcd(batch: CreditBatch, *, kappa: float = 0.5, eps: float = 0.2, normalize_std: bool = True) -> CreditOutput:
    """SGCD: sibling-contrast hindsight reshapes the advantage (arXiv 2606.12634) [recon].

    The teacher sees the contrast of the group's successful and failed siblings (hindsight parts
    ``("outcome", "contrast")`` unless ``teacher.hindsight`` is set; ``contrast`` is the template,
    ``teacher.contrast="policy"`` has the policy write it). ``d`` = the detached teacher-student
    gap, mean-normalised per trajectory; ``A~ = A * clip(1 + kappa * sign(A) * d, 1-eps, 1+eps)``
    (:func:`~stepgym.distill.shaping.sgcd_shape`); no distillation loss on the actor. ``kappa = 0``
    is GRPO exactly.

    Args:
        batch: The credit batch.
        kappa: Strength of the reshaping [recon: 0.5].
        eps: Clip of the factor around 1 [recon: 0.2, as StepOPSD's alpha_clip].
        normalize_std: GRPO's std normalisation (off = Dr.GRPO).
    """
    adv = _outcome(batch, normalize_std)  # [B, L]
    if kappa == 0:
        return CreditOutput(adv, metrics=_summary(adv, batch.mask))
    delta = _delta(batch, "sgcd")  # [B, L]
    shaped, d = sgcd_shape(adv, delta, batch.targets, batch.traj_index, kappa=kappa, eps=eps)  # [B, L]
    tgt = batch.targets > 0
    raw = 1.0 + kappa * torch.sign(adv) * d  # [B, L]
    clipped = ((raw < 1 - eps) | (raw > 1 + eps)) & tgt & (adv != 0)
    metrics = {
        "clip_frac": float(clipped.float().sum() / (tgt & (adv != 0)).float().sum().clamp(min=1)),
        **_delta_metrics(batch, delta),
    }
    return CreditOutput(shaped, metrics={**_summary(shaped, batch.mask), **metrics})


@register_credit("paw", needs=("observations", "entropy"))
def paw(
    batch: CreditBatch,
    *,
    lam0: float = 0.1,
    top_frac: float = 0.5,
    loss: str = "gce",
    q: float = 0.7,
    max_nll: float = 5.0,
    normalize_std: bool = True,
) -> CreditOutput:
    """PaW: the policy is also a world model of the next observation (arXiv 2606.02388) [recon].

    ``L = L_RL + lam(Rbar) * L_WM`` with GRPO's advantage for ``L_RL``. ``L_WM`` is a robust NLL
    (:func:`~stepgym.distill.shaping.robust_nll`: GCE or truncated) of the observation tokens that
    follow a step (either layout: ``CreditBatch.obs_step``), for the steps whose mean action entropy
    is in the batch's top ``top_frac``; ``lam = lam0 * (1 - Rbar)`` falls as the batch success rate ``Rbar`` rises.
    ``lam0 = 0`` is GRPO exactly.

    Args:
        batch: The credit batch.
        lam0: World-model weight at zero success [recon: 0.1].
        top_frac: Share of the batch's steps (by action entropy) whose observations are predicted [recon: 0.5].
        loss: ``gce`` or ``truncated`` [recon: gce].
        q: GCE exponent [recon: 0.7, GCE's default].
        max_nll: Truncation of the ``truncated`` loss [recon: 5].
        normalize_std: GRPO's std normalisation (off = Dr.GRPO).
    """
    if not 0 < top_frac <= 1:
        raise ValueError(f"paw top_frac must be in (0, 1], got {top_frac}")
    adv = _outcome(batch, normalize_std)  # [B, L]
    rbar = float(batch.success.float().mean()) if batch.num_trajectories else 0.0
    lam = lam0 * (1.0 - rbar)
    metrics = {"lam": lam, "success_rate": rbar}
    if lam == 0:
        return CreditOutput(adv, metrics={**_summary(adv, batch.mask), **metrics})
    obs_step = _need(batch, "obs_step", "paw")  # [B, L] long
    entropy = _need(batch, "entropy", "paw")  # [B, L]
    sid, step_traj, step_k = _steps(batch)
    S = step_traj.shape[0]
    ent = gated_turn_mean(entropy, batch.mask > 0, sid, S)  # [S] mean action entropy per step
    n_top = max(1, round(top_frac * S)) if S else 0
    chosen = {
        (int(step_traj[s]), int(step_k[s])) for s in torch.argsort(ent, descending=True, stable=True)[:n_top].tolist()
    }
    rows, pos = (obs_step >= 0).nonzero(as_tuple=True)
    target = torch.zeros_like(batch.mask)  # [B, L] observations following a chosen step
    for r, p in zip(rows.tolist(), pos.tolist()):
        if (int(batch.traj_index[r]), int(obs_step[r, p])) in chosen:
            target[r, p] = 1.0
    fn = functools.partial(robust_nll, kind=loss, q=q, max_nll=max_nll)
    aux = AuxLoss(fn, lam, target, torch.zeros_like(target))
    metrics["wm_tokens"] = float(target.sum())
    return CreditOutput(adv, aux=aux, metrics={**_summary(adv, batch.mask), **metrics})


@register_credit("atod", needs=("teacher", "entropy"))
def atod(
    batch: CreditBatch,
    *,
    rho0: float = 0.0,
    rho_steps: int = 100,
    schedule: str = "linear",
    kappa: float = 1.0,
    normalize_std: bool = True,
) -> CreditOutput:
    """ATOD: annealed on-policy distillation into RL, with turn reweighting (arXiv 2606.27814) [recon].

    ``L = (1 - rho_t) L_OPD + rho_t L_RL``, both as policy-gradient advantages on the sampled tokens:
    ``A = rho_t * A_GRPO + (1 - rho_t) * u_k * (logp_T - logp_S)`` on target tokens (the OPD term as
    the per-token reward of §7), ``rho_t`` rising from ``rho0`` to 1 over ``rho_steps``
    (:func:`~stepgym.distill.shaping.rising_schedule`). Turn weights ``u_k = 1 + kappa * norm(D_k U_k)``
    renormalised to mean 1 (:func:`~stepgym.distill.shaping.atod_turn_weights`); ``D_k`` the turn's
    mean ``|logp_T - logp_S|``, ``U_k`` its mean student entropy. ``rho0 = 1`` is GRPO exactly.
    The teacher: a separate model (``teacher.model``; set ``teacher.hindsight=[]``), e.g. an SFT'd checkpoint
    of the policy or a larger model with another tokenizer (SmolLM2-135M teaching the tiny model scores the
    rows' text, aligned by character spans: :mod:`stepgym.distill.cross_tokenizer`, [recon]), or the
    hindsight self-teacher.

    Args:
        batch: The credit batch.
        rho0: RL weight at step 0 [spec: ~0].
        rho_steps: Optimizer steps until pure RL [recon: 100].
        schedule: ``linear`` or ``cosine`` [spec: either].
        kappa: Turn-reweighting strength (0 = uniform turns) [recon: 1].
        normalize_std: GRPO's std normalisation (off = Dr.GRPO).
    """
    rho = rising_schedule(rho0, batch.training_step, rho_steps, schedule)  # type: ignore[arg-type]
    adv = _outcome(batch, normalize_std)  # [B, L]
    if rho == 1.0:
        return CreditOutput(adv, metrics={**_summary(adv, batch.mask), "rho": 1.0})
    delta = _delta(batch, "atod")  # [B, L]
    entropy = _need(batch, "entropy", "atod")  # [B, L]
    sid, step_traj, _ = _steps(batch)
    S = step_traj.shape[0]
    D = gated_turn_mean(delta.abs(), batch.targets > 0, sid, S)  # [S]
    U = gated_turn_mean(entropy, batch.mask > 0, sid, S)  # [S]
    u = atod_turn_weights(D, U, step_traj, kappa=kappa)  # [S]
    opd = _per_step(u, sid) * delta  # [B, L] delta is 0 off the targets
    out = rho * adv + (1.0 - rho) * opd * batch.mask  # [B, L]
    metrics = {
        "rho": rho,
        "turn_weight_max": float(u.max()) if S else 1.0,
        "opd_adv_mean": float(opd[batch.targets > 0].mean()) if (batch.targets > 0).any() else 0.0,
        **_delta_metrics(batch, delta),
    }
    return CreditOutput(out, metrics={**_summary(out, batch.mask), **metrics})


@register_credit("triage", needs=("judge",))
def triage(
    batch: CreditBatch,
    *,
    beta: float = 0.5,
    c_progress: float = 1.0,
    c_exploration: float = 0.25,
    c_infrastructure: float = 0.0,
    c_regression: float = -1.0,
    c_max: float = 1.0,
    exploration_in: str = "failed",
    normalize_std: bool = True,
) -> CreditOutput:
    """TRIAGE: role-typed segment rewards from a judge (arXiv 2606.32017) [recon].

    A judge (``TrainConfig.judge``; :mod:`stepgym.distill.judge`) labels each step ``progress`` /
    ``exploration`` / ``infrastructure`` / ``regression``; ``A_seg = A_GRPO + beta * c(role)`` on the
    step's tokens with ``|c| <= c_max``. ``c(exploration)`` is paid only in failed rollouts
    (``exploration_in="failed"``; ``"all"`` pays it everywhere). ``beta = 0`` is GRPO exactly.

    Args:
        batch: The credit batch.
        beta: Weight of the role bonus [recon: 0.5].
        c_progress: Bonus of a progress step (> 0) [recon: 1].
        c_exploration: Bonus of an exploration step (small, > 0) [recon: 0.25].
        c_infrastructure: Bonus of an infrastructure step [spec: 0].
        c_regression: Bonus of a regression step (< 0) [recon: -1].
        c_max: Clip of ``|c|`` [recon: 1].
        exploration_in: ``failed`` or ``all`` rollouts get the exploration bonus [spec: mostly failed].
        normalize_std: GRPO's std normalisation (off = Dr.GRPO).
    """
    if exploration_in not in ("failed", "all"):
        raise ValueError(f"triage exploration_in must be 'failed' or 'all', got {exploration_in!r}")
    adv = _outcome(batch, normalize_std)  # [B, L]
    if beta == 0:
        return CreditOutput(adv, metrics={**_summary(adv, batch.mask), "beta": 0.0})
    roles = _need(batch, "roles", "triage")
    bonus = {"progress": c_progress, "exploration": c_exploration, "infrastructure": c_infrastructure}
    bonus["regression"] = c_regression
    sid, step_traj, step_k = _steps(batch)
    c = torch.zeros(step_traj.shape[0])  # [S]
    counts = dict.fromkeys(ROLES, 0)
    for s, (t, k) in enumerate(zip(step_traj.tolist(), step_k.tolist())):
        if k >= len(roles[t]):
            raise ValueError(f"trajectory {t} has tokens for step {k} but the judge labelled {len(roles[t])} steps")
        role = roles[t][k]
        if role not in bonus:
            raise ValueError(f"the judge labelled step {k} of trajectory {t} {role!r}; roles are {ROLES}")
        counts[role] += 1
        if role == "exploration" and exploration_in == "failed" and bool(batch.success[t]):
            continue
        c[s] = max(-c_max, min(c_max, bonus[role]))
    out = adv + beta * _per_step(c, sid) * batch.mask  # [B, L]
    n = max(1, step_traj.shape[0])
    metrics = {f"role_{r}": counts[r] / n for r in ROLES}
    return CreditOutput(out, metrics={**_summary(out, batch.mask), "beta": beta, **metrics})


@register_credit(
    "ucob",
    needs=("teacher", "context_view"),
    config_defaults={
        "teacher.hindsight": ("expert_plan", "gold"),
        "teacher.placement": "prompt",
        "teacher.mode": "live",
    },
)
def ucob(
    batch: CreditBatch,
    *,
    coef: float = 0.05,
    beta: float = 5.0,
    w_max: float = 2.0,
    top_k: int = 32,
    divergence: str = "forward",
    directions: str = "both",
    gamma: float = 1.0,
    normalize_std: bool = True,
) -> CreditOutput:
    """UCOB: bidirectional distillation between two context views (arXiv 2606.29502) [recon].

    Views: the plain view is the rows as rolled out; the context view is the same rows with a context
    block in the prompt (the teacher's hindsight parts, default ``("expert_plan", "gold")`` in place of
    the paper's skills; ``teacher.placement="prompt"``), as :class:`~stepgym.distill.rescore.ContextView`
    rows that the update runs forward on with grad, so the policy learns under both views. Both views
    are the current policy (``teacher.mode="live"``).

    Local teacher [recon]: at an anchor state (the steps of one group with the same anchor observation,
    as GiGPO), a visit whose return-to-go ``G`` is below the state's mean ``Gbar`` is taught by the
    context view (weight ``min(w_max, Gbar - G)``); a visit above it teaches the context view (weight
    ``min(w_max, G - Gbar)``). Only the plain view is rolled out, so the context view's return at a state
    is taken to be the state's mean: the view whose behaviour led to the higher return teaches.
    The term (:func:`~stepgym.distill.shaping.ucob_two_view_loss`) is the top-K (32) restricted
    divergence gated as SDAR (gate ``beta`` 5), coefficient 0.05, weight max 2, as in the spec.
    ``coef = 0`` is GRPO exactly; the advantage is always GRPO's.

    Not built: rolling out the context view on-policy (it rescores and trains on the plain view's
    tokens) and the paper's skill memory.

    Args:
        batch: The credit batch.
        coef: Weight of the distillation term [spec: 0.05].
        beta: Gate sharpness [spec: 5].
        w_max: Largest local-teacher weight [spec: 2].
        top_k: Size of the teacher's candidate set the divergence is restricted to (0 = full vocabulary) [spec: 32].
        divergence: ``forward`` (``KL(teacher || learner)`` over the top K) or ``reverse`` [recon: forward].
        directions: ``both``, ``to_plain`` (only the context view teaches) or ``to_context`` [spec: both].
        gamma: Discount of the return-to-go [recon: 1].
        normalize_std: GRPO's std normalisation (off = Dr.GRPO).
    """
    if directions not in ("both", "to_plain", "to_context"):
        raise ValueError(f"ucob directions must be 'both', 'to_plain' or 'to_context', got {directions!r}")
    if divergence not in ("forward", "reverse"):
        raise ValueError(f"ucob divergence must be 'forward' or 'reverse', got {divergence!r}")
    if top_k < 0:
        raise ValueError(f"ucob top_k must be >= 0 (0 = the whole vocabulary), got {top_k}")
    adv = _outcome(batch, normalize_std)  # [B, L]
    if coef == 0:
        return CreditOutput(adv, metrics=_summary(adv, batch.mask))
    anchors = _need(batch, "anchors", "ucob")
    view = _need(batch, "context_view", "ucob")
    sid, step_traj, step_k = _steps(batch)
    rtg = {t: discounted_returns(torch.tensor(r, dtype=torch.float64), gamma) for t, r in enumerate(batch.step_rewards)}
    keys: dict[tuple[int, str], int] = {}
    G, cluster = [], []
    for t, k in zip(step_traj.tolist(), step_k.tolist()):
        if k >= len(anchors[t]) or k >= len(rtg[t]):
            raise ValueError(f"trajectory {t} has tokens for step {k} but fewer anchors or step rewards")
        G.append(float(rtg[t][k]))
        cluster.append(keys.setdefault((int(batch.group_index[t]), anchors[t][k]), len(keys)))
    g = torch.tensor(G, dtype=torch.float64)  # [S]
    c = torch.tensor(cluster, dtype=torch.long)  # [S]
    n = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, c, torch.ones_like(g))  # [C]
    gbar = (torch.zeros(len(keys), dtype=torch.float64).index_add_(0, c, g) / n.clamp(min=1))[c]  # [S]
    w = torch.where(n[c] >= 2, (gbar - g).clamp(min=-w_max, max=w_max), torch.zeros_like(g)).float()  # [S] signed
    if directions == "to_plain":
        w = w.clamp(min=0)
    elif directions == "to_context":
        w = w.clamp(max=0)
    weight = _per_step(w, sid) * batch.targets  # [B, L]
    fn = functools.partial(ucob_two_view_loss, top_k=top_k, divergence=divergence, beta=beta)
    aux = AuxLoss(fn, coef, batch.targets, _need(batch, "logp_teacher", "ucob"), weight=weight, view=view)
    if not bool((weight != 0).any()):  # no target token is taught: the term is 0, skip its two forwards per micro-batch
        aux = None
    metrics = {
        "taught_tokens": float((weight != 0).sum()),
        "teach_frac": float((w != 0).float().mean()) if w.numel() else 0.0,
        "to_plain_frac": float((w > 0).float().mean()) if w.numel() else 0.0,
        "to_context_frac": float((w < 0).float().mean()) if w.numel() else 0.0,
        "weight_mean": float(w.abs().mean()) if w.numel() else 0.0,
        **_delta_metrics(batch, _delta(batch, "ucob")),
    }
    return CreditOutput(adv, aux=aux, metrics={**_summary(adv, batch.mask), **metrics})
