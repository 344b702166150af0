"""Advantage-shaping math: pure tensor functions, one per equation of ``shared/ALGORITHMS.md``.

No trainer state, no model: every function takes tensors and returns tensors, with ``# [..]``
shapes on tensor lines. Advantage math is meant to run under ``torch.no_grad`` (the SDAR token loss
is the one function that carries a gradient, through ``logp_theta``).

Shapes: ``B`` rows, ``L`` positions, ``S`` steps (dense step ids from
:func:`stepgym.distill.segment.step_ids`), ``T`` trajectories.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "WeightKind",
    "discounted_returns",
    "gigpo_step_advantages",
    "linear_schedule",
    "opsd_reward_advantages",
    "sdar_token_loss",
    "shape_advantages",
    "sign_preserving_weight",
    "step_budget",
    "step_gae",
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


def gigpo_step_advantages(
    returns: torch.Tensor,  # [S] discounted step return G
    cluster: torch.Tensor,  # [S] long id of (group, anchor observation)
    *,
    normalize_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:  # [S]
    """GiGPO step-level advantage (arXiv 2505.10978, §4.2, eq. 7).

    Within each anchor-state cluster: ``A_S = (G - mean_c) / (std_c + eps)`` with the unbiased std
    (or ``G - mean_c`` without std). Singleton clusters give 0.
    """
    G = returns.to(torch.float64)
    C = int(cluster.max().item()) + 1 if cluster.numel() else 0
    n = torch.zeros(C, dtype=torch.float64).index_add_(0, cluster, torch.ones_like(G))  # [C]
    mean = torch.zeros(C, dtype=torch.float64).index_add_(0, cluster, G) / n.clamp(min=1)  # [C]
    dev = G - mean[cluster]  # [S]
    adv = dev
    if normalize_std:
        var = torch.zeros(C, dtype=torch.float64).index_add_(0, cluster, dev**2) / (n - 1).clamp(min=1)  # [C]
        adv = dev / (var.sqrt()[cluster] + eps)  # [S]
    adv = torch.where((n[cluster] <= 1) | (dev.abs() < 1e-12), torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


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
