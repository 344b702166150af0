"""Advantage-shaping math: pure tensor functions, one per equation of ``shared/ALGORITHMS.md``.

No trainer state, no model: every function takes tensors and returns tensors, with ``# [..]``
shapes on tensor lines. Advantage math is meant to run under ``torch.no_grad`` (the SDAR token loss
is the one function that carries a gradient, through ``logp_theta``).

Shapes: ``B`` rows, ``L`` positions, ``S`` steps (dense step ids from
:func:`stepgym.distill.segment.step_ids`), ``T`` trajectories.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = [
    "WeightKind",
    "discounted_returns",
    "gigpo_step_advantages",
    "group_normalize",
    "linear_schedule",
    "opsd_reward_advantages",
    "sdar_token_loss",
    "shape_advantages",
    "sign_preserving_weight",
    "step_budget",
    "step_gae",
    # the related 2026 methods (ALGORITHMS.md §10, all [recon])
    "atod_turn_weights",
    "craft_sibling_credit",
    "craft_token_loss",
    "gated_turn_mean",
    "rising_schedule",
    "robust_nll",
    "sgcd_shape",
    "ucob_two_view_loss",
    "ucob_view_divergence",
]

WeightKind = Literal["sigmoid", "exp"]


def linear_schedule(lam0: float, t: int, T: int) -> float:
    """``lam(t) = lam0 * max(0, 1 - t/T)`` (StepOPSD §4.7, RLSD §5). ``T <= 0`` keeps ``lam0``."""
    if T <= 0:
        return float(lam0)
    return float(lam0) * max(0.0, 1.0 - t / T)


def sign_preserving_weight(
    adv: torch.Tensor,  # [B, L]
    delta: torch.Tensor,  # [B, L]
    alpha_clip: float,
    kind: WeightKind = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token weight of StepOPSD (arXiv 2605.27140, §4.5) / RLSD (§5).

    ``sigmoid``: ``w = clip(2*sigmoid(sign(A)*Delta), 1-a, 1+a)``; ``exp`` (RLSD):
    ``w = clip(exp(sign(A)*Delta), 1-a, 1+a)``. Both give ``w = 1`` at ``Delta = 0`` and ``w > 0``
    always, hence ``sign(w*A) == sign(A)``.

    Returns:
        ``(w [B, L], clipped [B, L] bool)`` -- ``clipped`` marks weights that hit a bound.
    """
    if not 0 <= alpha_clip < 1:
        raise ValueError(f"alpha_clip must be in [0, 1) so the weight stays positive, got {alpha_clip}")
    z = torch.sign(adv) * delta  # [B, L]
    if kind == "sigmoid":
        raw = 2.0 * torch.sigmoid(z)  # [B, L]
    elif kind == "exp":
        raw = torch.exp(z)  # [B, L]
    else:
        raise ValueError(f"weight kind must be 'sigmoid' or 'exp', got {kind!r}")
    lo, hi = 1.0 - alpha_clip, 1.0 + alpha_clip
    w = raw.clamp(lo, hi)  # [B, L]
    return w, (raw < lo) | (raw > hi)


def shape_advantages(
    adv: torch.Tensor,  # [B, L]
    delta: torch.Tensor,  # [B, L]
    mask: torch.Tensor,  # [B, L]
    *,
    lam: float,
    alpha_clip: float,
    kind: WeightKind = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A_sh = ((1 - lam) + lam * w) * A * mask`` (StepOPSD §4.5, RLSD §5).

    Returns:
        ``(A_sh [B, L], clipped [B, L] bool)``.
    """
    w, clipped = sign_preserving_weight(adv, delta, alpha_clip, kind)  # [B, L]
    return ((1.0 - lam) + lam * w) * adv * mask, clipped  # [B, L]


def step_budget(
    adv: torch.Tensor,  # [B, L] shaped advantages
    sid: torch.Tensor,  # [B, L] long step id, -1 off-step
    step_traj: torch.Tensor,  # [S] long trajectory of each step
    include: torch.Tensor,  # [S] bool steps taking part (present steps)
    *,
    kappa: float = 2.0,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step credit budget (StepOPSD §4.6).

    For each trajectory with >= 2 included steps: ``m_k = mean |A_sh|`` over step ``k``'s tokens,
    ``mbar = mean_k m_k``, ``c_k = clip(mbar / (m_k + eps), 1/kappa, kappa)``, ``A_sh[k] *= c_k``.
    Other steps keep ``c = 1``.

    Returns:
        ``(A_sh * c [B, L], c [S])``.
    """
    if kappa < 1:
        raise ValueError(f"kappa must be >= 1 (c is clipped to [1/kappa, kappa]), got {kappa}")
    S = step_traj.shape[0]
    on = sid >= 0  # [B, L]
    idx = sid[on]  # [N]
    tok_sum = torch.zeros(S, dtype=torch.float64).index_add_(0, idx, adv[on].abs().double())  # [S]
    tok_cnt = torch.zeros(S, dtype=torch.float64).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
    m = tok_sum / tok_cnt.clamp(min=1)  # [S]
    T = int(step_traj.max().item()) + 1 if S else 0
    inc = include.to(torch.float64)  # [S]
    n_steps = torch.zeros(T, dtype=torch.float64).index_add_(0, step_traj, inc)  # [T]
    mbar = torch.zeros(T, dtype=torch.float64).index_add_(0, step_traj, m * inc) / n_steps.clamp(min=1)  # [T]
    c = (mbar[step_traj] / (m + eps)).clamp(1.0 / kappa, kappa)  # [S]
    c = torch.where(include & (n_steps[step_traj] >= 2), c, torch.ones_like(c)).to(adv.dtype)  # [S]
    factor = torch.ones_like(adv)  # [B, L]
    factor[on] = c[idx]
    return adv * factor, c


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:  # [K] -> [K]
    """``G_t = sum_{k>=t} gamma^(k-t) r_k`` (GiGPO §3, arXiv 2505.10978 eq. 6)."""
    out = torch.zeros_like(rewards, dtype=torch.float64)
    running = 0.0
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = float(rewards[t]) + gamma * running
        out[t] = running
    return out


def group_normalize(
    x: torch.Tensor,  # [N]
    group: torch.Tensor,  # [N] long group id of each entry
    *,
    normalize_std: bool = True,
    singleton: Literal["zero", "keep"] = "zero",
    eps: float = 1e-6,
) -> torch.Tensor:  # [N] float32
    """``(x - mean_g) / (std_g + eps)`` within each group (unbiased std), or ``x - mean_g`` without std.

    The one group normalisation of the package: GRPO's outcome advantage (DeepSeekMath, arXiv
    2402.03300; ALGORITHMS.md §1.2-1.3) and GiGPO's step advantage (arXiv 2505.10978, eq. 7; §3).
    A group of one gives 0 (``singleton="zero"``, GiGPO) or keeps ``x`` with ``mean = 0, std = 1``
    (``"keep"``, GRPO's §1.2). Entries within 1e-12 of their group mean are exactly 0, so all-equal
    groups give exactly 0 (no 1e-17 noise from the mean). Computed in float64.
    """
    x = x.to(torch.float64)
    C = int(group.max().item()) + 1 if group.numel() else 0
    n = torch.zeros(C, dtype=torch.float64).index_add_(0, group, torch.ones_like(x))[group]  # [N]
    mean = torch.zeros(C, dtype=torch.float64).index_add_(0, group, x)[group] / n  # [N]
    sq = torch.zeros(C, dtype=torch.float64).index_add_(0, group, (x - mean) ** 2)  # [C]
    std = (sq[group] / (n - 1).clamp(min=1)).sqrt()  # [N] unbiased
    single = n <= 1  # [N]
    if singleton == "keep":
        mean = torch.where(single, torch.zeros_like(mean), mean)
        std = torch.where(single, torch.ones_like(std), std)
    elif singleton != "zero":
        raise ValueError(f"singleton must be 'zero' or 'keep', got {singleton!r}")
    dev = x - mean  # [N]
    out = dev / (std + eps) if normalize_std else dev
    zero = dev.abs() < 1e-12
    if singleton == "zero":
        zero = zero | single
    return torch.where(zero, torch.zeros_like(out), out).to(torch.float32)


def gigpo_step_advantages(
    returns: torch.Tensor,  # [S] discounted step return G
    cluster: torch.Tensor,  # [S] long id of (group, anchor observation)
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:  # [S]
    """GiGPO step-level advantage (arXiv 2505.10978, §4.2, eq. 7).

    Within each anchor-state cluster: ``A_S = (G - mean_c) / (std_c + eps)`` with the unbiased std
    (or ``G - mean_c`` without std). Singleton clusters give 0 (:func:`group_normalize`).
    """
    return group_normalize(returns, cluster, normalize_std=normalize_std, singleton="zero", eps=eps)


def step_gae(
    rewards: torch.Tensor,  # [T, K] step rewards, 0 past each trajectory's last step
    values: torch.Tensor,  # [T, K] critic value before each step
    n_steps: torch.Tensor,  # [T] long number of steps per trajectory
    bootstrap: torch.Tensor,  # [T] value after the last step (0 if terminal)
    *,
    gamma: float = 0.99,
    lam: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-level GAE (StepPO, arXiv 2604.18401; GAE arXiv 1506.02438 eq. 16), vectorised over trajectories.

    Backwards over steps: ``delta_k = r_k + gamma * V_{k+1} - V_k`` (``V_K`` = ``bootstrap``),
    ``A_k = delta_k + gamma * lam * A_{k+1}``, ``G_k = A_k + V_k``.

    Returns:
        ``(A [T, K], G [T, K])``, 0 past each trajectory's last step.
    """
    T, K = rewards.shape
    r, v = rewards.double(), values.double()
    ar = torch.arange(K)
    valid = ar[None, :] < n_steps[:, None]  # [T, K]
    last = ar[None, :] == (n_steps[:, None] - 1)  # [T, K]
    adv = torch.zeros(T, K, dtype=torch.float64)
    next_adv = torch.zeros(T, dtype=torch.float64)  # [T]
    next_v = torch.zeros(T, dtype=torch.float64)  # [T]
    for k in range(K - 1, -1, -1):
        nv = torch.where(last[:, k], bootstrap.double(), next_v)  # [T]
        delta = r[:, k] + gamma * nv - v[:, k]  # [T]
        a = torch.where(last[:, k], delta, delta + gamma * lam * next_adv)  # [T]
        a = torch.where(valid[:, k], a, torch.zeros_like(a))
        adv[:, k] = a
        next_adv, next_v = a, torch.where(valid[:, k], v[:, k], next_v)
    ret = torch.where(valid, adv + v, torch.zeros_like(adv))  # [T, K]
    return adv.float(), ret.float()


def sdar_token_loss(
    logp_theta: torch.Tensor,  # [B, L] current policy log-probs (with grad)
    logp_teacher: torch.Tensor,  # [B, L] teacher log-probs (no grad)
    target_mask: torch.Tensor,  # [B, L]
    *,
    beta: float = 5.0,
) -> torch.Tensor:  # [B, L]
    """SDAR gated self-distillation term (arXiv 2605.15155, §6 of the spec).

    ``g = sigmoid(beta * (logp_t - logp_theta.detach()))`` (no grad), ``ell = g * (logp_t - logp_theta)``
    on target tokens, 0 elsewhere; the gradient flows only through ``logp_theta``:
    ``d ell / d logp_theta = -g``. ``beta = 0`` is GRPO+OPSD's constant gate 0.5.
    """
    lt = logp_teacher.detach()
    g = torch.sigmoid(beta * (lt - logp_theta.detach()))  # [B, L]
    return g * (lt - logp_theta) * target_mask  # [B, L]


def opsd_reward_advantages(
    logp_student: torch.Tensor,  # [B, L]
    logp_teacher: torch.Tensor,  # [B, L]
    mask: torch.Tensor,  # [B, L]
    *,
    coef: float = 1.0,
    gamma: float | None = None,
) -> torch.Tensor:  # [B, L]
    """On-policy (self-)distillation as a per-token reward (tinker-cookbook OPD; spec §7).

    ``rkl = logp_s - logp_t``; ``A = -coef * mask * rkl``. With ``gamma`` the per-token terms are
    summed forward within each row: ``A_l = sum_{l' >= l, mask} gamma^(n(l, l')) r_l'`` where
    ``n`` counts the masked tokens in between.
    """
    r = -coef * (logp_student - logp_teacher) * mask  # [B, L]
    if gamma is None:
        return r
    out = torch.zeros_like(r)
    running = torch.zeros(r.shape[0], dtype=r.dtype)  # [B]
    for pos in range(r.shape[1] - 1, -1, -1):
        on = mask[:, pos] > 0  # [B]
        running = torch.where(on, r[:, pos] + gamma * running, running)
        out[:, pos] = torch.where(on, running, torch.zeros_like(running))
    return out


# =========================================================================== §10: the related 2026 methods
# Every formula below is our reconstruction from the papers' abstracts ([recon]); the choices the
# abstracts leave open are arguments, their defaults are the credit methods' (trainers/credit_2026.py).
def rising_schedule(rho0: float, t: int, T: int, kind: Literal["linear", "cosine"] = "linear") -> float:
    """ATOD's RL weight ``rho_t``, rising from ``rho0`` at ``t = 0`` to 1 at ``t >= T`` (arXiv 2606.27814) [recon].

    ``linear``: ``rho0 + (1 - rho0) * min(1, t/T)``; ``cosine``:
    ``rho0 + (1 - rho0) * (1 - cos(pi * min(1, t/T))) / 2``. ``T <= 0`` gives 1 (pure RL).
    """
    if T <= 0:
        return 1.0
    x = min(1.0, max(0.0, t / T))
    if kind == "linear":
        ramp = x
    elif kind == "cosine":
        ramp = (1.0 - math.cos(math.pi * x)) / 2.0
    else:
        raise ValueError(f"schedule kind must be 'linear' or 'cosine', got {kind!r}")
    return float(rho0) + (1.0 - float(rho0)) * ramp


def gated_turn_mean(
    x: torch.Tensor,  # [B, L]
    sel: torch.Tensor,  # [B, L] bool tokens that count
    sid: torch.Tensor,  # [B, L] long dense step id, -1 off-step
    num_steps: int,
) -> torch.Tensor:  # [S]
    """Mean of ``x`` over each step's selected tokens (0 for a step without any)."""
    on = sel & (sid >= 0)  # [B, L]
    idx = sid[on]  # [N]
    tot = torch.zeros(num_steps, dtype=torch.float64).index_add_(0, idx, x[on].double())  # [S]
    cnt = torch.zeros(num_steps, dtype=torch.float64).index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
    return (tot / cnt.clamp(min=1)).float()


def craft_sibling_credit(
    traj_adv: torch.Tensor,  # [T] outcome advantage of each trajectory
    step_delta: torch.Tensor,  # [S] mean teacher-student gap over each step's target tokens
    step_traj: torch.Tensor,  # [S] long trajectory of each step
    step_key: torch.Tensor,  # [S] long alignment cluster of each step (same group and step index / anchor)
    *,
    tau: float = 1.0,
) -> torch.Tensor:  # [S]
    """CRAFT's signed counterfactual credit of each step (arXiv 2606.29476) [recon].

    For step ``s`` of trajectory ``i``, the siblings ``j != i`` aligned with it (same ``step_key``):
    ``c = sum_j w_j A_j - mean_j A_j`` with ``w_j = softmax_j(Delta_j / tau)``. Positive when the
    siblings the teacher agrees with more did better than the siblings on average. No sibling: 0.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    out = torch.zeros(step_traj.shape[0], dtype=torch.float64)
    a = traj_adv.double()[step_traj]  # [S]
    d = step_delta.double()  # [S]
    for key in torch.unique(step_key).tolist():
        members = (step_key == key).nonzero(as_tuple=True)[0]  # [m]
        for s in members.tolist():
            sib = members[step_traj[members] != step_traj[s]]  # [n] the others
            if sib.numel() == 0:
                continue
            w = torch.softmax(d[sib] / tau, dim=0)  # [n]
            out[s] = (w * a[sib]).sum() - a[sib].mean()
    return out.float()


def craft_token_loss(
    logp_theta: torch.Tensor,  # [B, L] current policy log-probs (with grad)
    logp_teacher: torch.Tensor,  # [B, L] teacher log-probs (no grad)
    target_mask: torch.Tensor,  # [B, L]
    *,
    weight: torch.Tensor,  # [B, L] signed per-token distillation weight (lam * c)
    ratio_max: float = 5.0,
) -> torch.Tensor:  # [B, L]
    """CRAFT's signed distillation term (arXiv 2606.29476) [recon], from sampled tokens only.

    ``weight > 0``: reverse KL ``KL(pi || pi_T)``, score-function form ``sg(logp - logp_T) * logp``
    (gradient ``(logp - logp_T) * grad logp``, mode-seeking); ``weight < 0``: forward KL
    ``KL(pi_T || pi)`` by importance weighting the student's samples, ``-sg(min(exp(logp_T - logp),
    ratio_max)) * logp`` (gradient ``-rho * grad logp``, mass-covering). Each scaled by ``|weight|``.
    """
    lt = logp_teacher.detach()
    lp = logp_theta.detach()
    rkl = (lp - lt) * logp_theta  # [B, L]
    rho = torch.exp(lt - lp).clamp(max=ratio_max)  # [B, L]
    fkl = -rho * logp_theta  # [B, L]
    return (weight.clamp(min=0) * rkl + (-weight).clamp(min=0) * fkl) * target_mask  # [B, L]


def sgcd_shape(
    adv: torch.Tensor,  # [B, L] outcome advantage on trainable tokens
    delta: torch.Tensor,  # [B, L] teacher-student gap, 0 off the targets
    targets: torch.Tensor,  # [B, L] target tokens
    traj_index: torch.Tensor,  # [B] long
    *,
    kappa: float,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SGCD's hindsight-reshaped advantage (arXiv 2606.12634) [recon].

    ``d = Delta / (mean |Delta| over the trajectory's target tokens + 1e-6)`` (mean-normalised per
    trajectory), ``A~ = A * clip(1 + kappa * sign(A) * d, 1 - eps, 1 + eps)`` on target tokens; other
    tokens keep ``A``. The factor is positive for ``eps < 1``, so ``sign(A~) == sign(A)``.

    Returns:
        ``(A~ [B, L], d [B, L])``.
    """
    if not 0 <= eps < 1:
        raise ValueError(f"eps must be in [0, 1) so the factor stays positive, got {eps}")
    T = int(traj_index.max().item()) + 1 if traj_index.numel() else 0
    tgt = targets > 0  # [B, L]
    row_abs = (delta.abs() * tgt).sum(dim=1).double()  # [B]
    row_cnt = tgt.sum(dim=1).double()  # [B]
    scale = torch.zeros(T, dtype=torch.float64).index_add_(0, traj_index, row_abs)  # [T]
    cnt = torch.zeros(T, dtype=torch.float64).index_add_(0, traj_index, row_cnt)  # [T]
    mean_abs = (scale / cnt.clamp(min=1)).float()[traj_index].unsqueeze(1)  # [B, 1]
    d = delta / (mean_abs + 1e-6) * tgt  # [B, L]
    factor = (1.0 + kappa * torch.sign(adv) * d).clamp(1.0 - eps, 1.0 + eps)  # [B, L]
    return torch.where(tgt, adv * factor, adv), d


def atod_turn_weights(
    disagreement: torch.Tensor,  # [S] D_k: mean |logp_T - logp_S| over turn k's target tokens
    uncertainty: torch.Tensor,  # [S] U_k: mean student entropy over turn k's tokens
    step_traj: torch.Tensor,  # [S] long
    *,
    kappa: float,
) -> torch.Tensor:  # [S]
    """ATOD's turn weights (arXiv 2606.27814) [recon].

    ``x_k = D_k * U_k``; ``norm(x) = x / max_k x`` within the trajectory (0 when all are 0);
    ``u_k = 1 + kappa * norm(x_k)``, renormalised to mean 1 over the trajectory's turns.
    """
    x = (disagreement * uncertainty).double()  # [S]
    T = int(step_traj.max().item()) + 1 if step_traj.numel() else 0
    mx = torch.zeros(T, dtype=torch.float64).scatter_reduce(0, step_traj, x, "amax", include_self=False)  # [T]
    normed = torch.where(mx[step_traj] > 0, x / mx[step_traj].clamp(min=1e-12), torch.zeros_like(x))  # [S]
    u = 1.0 + kappa * normed  # [S]
    n = torch.zeros(T, dtype=torch.float64).index_add_(0, step_traj, torch.ones_like(u))  # [T]
    mean = torch.zeros(T, dtype=torch.float64).index_add_(0, step_traj, u) / n.clamp(min=1)  # [T]
    return (u / mean[step_traj]).float()


def robust_nll(
    logp_theta: torch.Tensor,  # [B, L] current policy log-probs of the observed tokens (with grad)
    logp_teacher: torch.Tensor,  # [B, L] unused (the AuxLoss signature)
    target_mask: torch.Tensor,  # [B, L] observation tokens to predict
    *,
    kind: Literal["gce", "truncated"] = "gce",
    q: float = 0.7,
    max_nll: float = 5.0,
) -> torch.Tensor:  # [B, L]
    """PaW's robust world-model loss on observation tokens (arXiv 2606.02388) [recon].

    ``gce``: generalised cross-entropy ``(1 - p^q) / q`` (``q -> 0`` is the NLL; Zhang & Sabuncu,
    arXiv 1805.07836, eq. 6), bounded so unpredictable observation tokens cannot dominate;
    ``truncated``: ``min(-log p, max_nll)`` (no gradient from tokens beyond ``max_nll``).
    """
    if kind == "gce":
        if not 0 < q <= 1:
            raise ValueError(f"GCE q must be in (0, 1], got {q}")
        loss = (1.0 - torch.exp(q * logp_theta)) / q  # [B, L]
    elif kind == "truncated":
        loss = torch.clamp(-logp_theta, max=max_nll)  # [B, L]
    else:
        raise ValueError(f"robust NLL kind must be 'gce' or 'truncated', got {kind!r}")
    return loss * target_mask  # [B, L]


def ucob_view_divergence(
    lp_student: torch.Tensor,  # [N, V] log-softmax of the learning view at each target token (with grad)
    lp_teacher: torch.Tensor,  # [N, V] log-softmax of the teaching view at the same token (detached here)
    tokens: torch.Tensor,  # [N] long, the sampled tokens
    *,
    top_k: int = 32,
    divergence: Literal["forward", "reverse"] = "forward",
    beta: float = 5.0,
) -> torch.Tensor:  # [N]
    """UCOB's gated top-K restricted divergence from the teaching view to the learning view (arXiv 2606.29502) [recon].

    ``K`` = the teacher's ``top_k`` most likely tokens at the position (``top_k = 0``: the whole vocabulary);
    both distributions renormalised over ``K``: ``p = softmax_K(lp_T)``, ``q = softmax_K(lp_S)``.
    ``forward``: ``KL(p || q) = sum_K p (log p - log q)`` (mass-covering over the teacher's candidates);
    ``reverse``: ``KL(q || p)``. Gate ``g = sigmoid(beta * (lp_T[a] - lp_S[a]))`` at the sampled token ``a``
    (detached; SDAR's gate, :func:`sdar_token_loss`): the term acts where the teacher prefers the sampled
    token more than the learner does. Returns ``g * KL``; the gradient reaches only ``lp_student``.
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = the whole vocabulary), got {top_k}")
    lt = lp_teacher.detach()
    if top_k and top_k < lt.shape[-1]:
        idx = lt.topk(top_k, dim=-1).indices  # [N, K]
        lt_k, ls_k = lt.gather(-1, idx), lp_student.gather(-1, idx)  # [N, K]
    else:
        lt_k, ls_k = lt, lp_student  # [N, V]
    log_p = torch.log_softmax(lt_k, dim=-1)  # [N, K] renormalised over K
    log_q = torch.log_softmax(ls_k, dim=-1)  # [N, K]
    if divergence == "forward":
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [N]
    elif divergence == "reverse":
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # [N]
    else:
        raise ValueError(f"divergence must be 'forward' or 'reverse', got {divergence!r}")
    a = tokens[:, None]  # [N, 1]
    gate = torch.sigmoid(beta * (lt.gather(-1, a) - lp_student.detach().gather(-1, a))).squeeze(-1)  # [N]
    return gate * kl  # [N]


def ucob_two_view_loss(
    lp_rows: torch.Tensor,  # [N, V] log-softmax under the plain view (the rows as rolled out), with grad
    lp_view: torch.Tensor,  # [N, V] log-softmax under the context view, with grad
    tokens: torch.Tensor,  # [N] long
    weight: torch.Tensor,  # [N] signed: > 0 the context view teaches the plain one, < 0 the reverse
    *,
    top_k: int = 32,
    divergence: Literal["forward", "reverse"] = "forward",
    beta: float = 5.0,
) -> torch.Tensor:  # [N]
    """UCOB's bidirectional distillation between the two views (arXiv 2606.29502) [recon].

    ``w > 0``: ``w * D(view -> rows)`` (the context view is the local teacher, the plain view learns);
    ``w < 0``: ``|w| * D(rows -> view)`` (the plain view teaches the context view); ``D`` is
    :func:`ucob_view_divergence` with the teacher detached, so each direction moves only its learner.
    """
    kw = {"top_k": top_k, "divergence": divergence, "beta": beta}
    to_plain = ucob_view_divergence(lp_rows, lp_view, tokens, **kw)  # [N]
    to_context = ucob_view_divergence(lp_view, lp_rows, tokens, **kw)  # [N]
    return weight.clamp(min=0) * to_plain + (-weight).clamp(min=0) * to_context  # [N]
