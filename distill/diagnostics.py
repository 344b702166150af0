"""Credit-causality diagnostic: does per-step credit land on the steps that decided the outcome?

Given one credit value per step (e.g. the mean ``|advantage|`` over the step's tokens, or the mean
shaped gap ``Delta``) and the env's per-step ``decisive`` flags (``stepgym/Sandbox-*-v0``), the
diagnostic is the **AUC** with which credit ranks decisive steps above neutral ones: the
Mann-Whitney statistic ``P(c_dec > c_neu) + 0.5 * P(c_dec == c_neu)`` over (decisive, neutral)
step pairs (Mann & Whitney, 1947; Hanley & McNeil, 1982, eq. 1 for AUC = U / (n_pos * n_neg)).
0.5 = credit ignores decisiveness (GRPO's trajectory-constant advantage gives exactly 0.5 with
within-trajectory pairing), 1 = every decisive step out-credits every neutral one. It is reported
separately over failed and over successful trajectories.

Rules (the same everywhere below):

* ``pairing="within"`` (default) pairs a decisive step only with neutral steps of the *same*
  trajectory, so per-trajectory scale (|A| differs between trajectories) cannot fake a signal;
  every pair weighs the same: ``AUC = sum_t U_t / sum_t n_dec_t * n_neu_t``.
  ``pairing="pooled"`` pairs every decisive step with every neutral step of the selection.
* Steps whose credit is NaN (steps without tokens, see :func:`per_step_credit`) are left out.
* **No pair -> NaN.** When the selection has no (decisive, neutral) pair -- no decisive step (the
  null variant; failures that skipped the decisive step), no neutral step, or no trajectory at all
  -- the AUC is ``float("nan")`` and ``n_pairs == 0``; average such results with ``nanmean`` and
  report ``n_pairs`` next to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AucResult",
    "ShareResult",
    "credit_causality_auc",
    "decisive_auc",
    "decisive_flags",
    "decisive_share",
    "mann_whitney_u",
    "per_step_credit",
]


@dataclass(frozen=True)
class AucResult:
    """An AUC and the counts it rests on."""

    auc: float
    """The AUC; NaN when ``n_pairs == 0``."""
    n_pairs: int
    """(decisive, neutral) pairs compared."""
    n_decisive: int
    """Decisive steps with a credit value in the selection."""
    n_neutral: int
    """Neutral steps with a credit value in the selection."""


def _to_numpy(x: Any, dtype: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; torch stays optional
        x = x.detach().cpu()
        x = x.double() if np.dtype(dtype).kind == "f" else x
        x = x.numpy()
    return np.asarray(x, dtype=dtype)


def mann_whitney_u(pos: np.ndarray, neg: np.ndarray) -> float:
    """``U = #{(p, n): p > n} + 0.5 * #{(p, n): p == n}`` via average ranks, O(n log n).

    With ranks ``r`` of the pooled values (ties get their average rank), the sum of the positives'
    ranks minus its minimum ``n_pos (n_pos + 1) / 2`` counts exactly the pairs a positive wins, ties
    counting half (Mann & Whitney, 1947).
    """
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    if pos.size == 0 or neg.size == 0:
        return 0.0
    allv = np.concatenate([pos, neg])  # [n]
    order = np.argsort(allv, kind="mergesort")
    sorted_v = allv[order]
    # average 1-based rank of each run of equal values
    starts = np.flatnonzero(np.r_[True, sorted_v[1:] != sorted_v[:-1]])
    ends = np.r_[starts[1:], sorted_v.size]
    avg = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(allv.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return float(ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0)


def decisive_auc(
    credit: Sequence[Sequence[float]],
    decisive: Sequence[Sequence[bool]],
    *,
    pairing: str = "within",
) -> AucResult:
    """AUC with which ``credit`` ranks decisive steps above neutral ones (rules in the module docstring).

    Args:
        credit: Per trajectory, one credit value per step (NaN = step without a value).
        decisive: Per trajectory, one flag per step (``info["decisive"]`` of the step).
        pairing: ``"within"`` (pairs inside each trajectory) or ``"pooled"`` (all pairs).

    Returns:
        The :class:`AucResult`.
    """
    if pairing not in ("within", "pooled"):
        raise ValueError(f"pairing={pairing!r} is not known; use 'within' or 'pooled'")
    if len(credit) != len(decisive):
        raise ValueError(f"credit has {len(credit)} trajectories but decisive has {len(decisive)}")
    pos_all, neg_all = [], []
    u_sum, pairs = 0.0, 0
    for t, (c, d) in enumerate(zip(credit, decisive)):
        c = np.asarray(c, dtype=np.float64)  # [K]
        d = np.asarray(d, dtype=bool)  # [K]
        if c.shape != d.shape:
            raise ValueError(f"trajectory {t}: {c.size} credit values but {d.size} decisive flags")
        keep = ~np.isnan(c)
        pos, neg = c[keep & d], c[keep & ~d]
        pos_all.append(pos)
        neg_all.append(neg)
        if pairing == "within":
            u_sum += mann_whitney_u(pos, neg)
            pairs += pos.size * neg.size
    pos = np.concatenate(pos_all) if pos_all else np.zeros(0)
    neg = np.concatenate(neg_all) if neg_all else np.zeros(0)
    if pairing == "pooled":
        u_sum, pairs = mann_whitney_u(pos, neg), pos.size * neg.size
    auc = u_sum / pairs if pairs else math.nan
    return AucResult(auc=auc, n_pairs=int(pairs), n_decisive=int(pos.size), n_neutral=int(neg.size))


def credit_causality_auc(
    credit: Sequence[Sequence[float]],
    decisive: Sequence[Sequence[bool]],
    success: Sequence[bool],
    *,
    pairing: str = "within",
) -> dict[str, AucResult]:
    """:func:`decisive_auc` over the failed, the successful and all trajectories.

    Returns:
        ``{"failed": ..., "successful": ..., "all": ...}``.
    """
    if len(success) != len(credit):
        raise ValueError(f"success has {len(success)} entries but credit has {len(credit)} trajectories")
    out = {}
    for name, keep in (("failed", [not s for s in success]), ("successful", list(success)), ("all", None)):
        idx = [i for i in range(len(credit)) if keep is None or keep[i]]
        out[name] = decisive_auc([credit[i] for i in idx], [decisive[i] for i in idx], pairing=pairing)
    return out


def per_step_credit(
    values: Any,
    step_index: Any,
    traj_index: Any,
    *,
    mask: Any = None,
    num_trajectories: int | None = None,
    reduce: str = "mean_abs",
) -> list[np.ndarray]:
    """Reduce token-level values ``[B, L]`` to one value per (trajectory, step).

    Works for both layouts: a row may hold one step (per-step layout) or a whole trajectory
    (concatenated layout); tokens are grouped by ``(traj_index[b], step_index[b, l])``.

    Args:
        values: ``[B, L]`` token values (advantages, Delta, ...), numpy or torch.
        step_index: ``[B, L]`` step of each token, ``-1`` = none (prompt / observation tokens).
        traj_index: ``[B]`` trajectory of each row.
        mask: Optional ``[B, L]`` token mask (e.g. the trainable-token mask); 0 drops the token.
        num_trajectories: Length of the output (default ``max(traj_index) + 1``).
        reduce: ``"mean_abs"`` (mean of ``|value|``) or ``"mean"`` over the step's tokens.

    Returns:
        Per trajectory, an array over steps ``0 .. max step`` of that trajectory; a step without
        tokens is NaN (the AUC leaves it out); a trajectory without tokens gives an empty array.
    """
    if reduce not in ("mean_abs", "mean"):
        raise ValueError(f"reduce={reduce!r} is not known; use 'mean_abs' or 'mean'")
    sums_abs, sums, counts = _step_sums(values, step_index, traj_index, mask, num_trajectories)  # [T, S] each
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, (sums_abs if reduce == "mean_abs" else sums) / np.maximum(counts, 1), np.nan)
    out = []
    for t in range(means.shape[0]):
        present = np.flatnonzero(counts[t])
        out.append(means[t, : present[-1] + 1].copy() if present.size else np.zeros(0))
    return out


def _step_sums(
    values: Any, step_index: Any, traj_index: Any, mask: Any, num_trajectories: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (trajectory, step): sum of ``|value|``, sum of ``value`` and token count, each ``[T, S]``."""
    v = _to_numpy(values, np.float64)  # [B, L]
    s = _to_numpy(step_index, np.int64)  # [B, L]
    tr = _to_numpy(traj_index, np.int64)  # [B]
    if v.shape != s.shape or v.ndim != 2 or tr.shape != (v.shape[0],):
        raise ValueError(f"shapes disagree: values {v.shape}, step_index {s.shape}, traj_index {tr.shape}")
    keep = s >= 0  # [B, L]
    if mask is not None:
        keep &= _to_numpy(mask, np.float64) != 0
    n_traj = int(num_trajectories if num_trajectories is not None else (tr.max() + 1 if tr.size else 0))
    n_steps = max(int(s[keep].max()) + 1 if keep.any() else 0, 1)
    t_tok = np.broadcast_to(tr[:, None], s.shape)[keep]  # [N]
    key = t_tok * n_steps + s[keep]  # [N]
    size = n_traj * n_steps
    x = v[keep]  # [N]
    sums_abs = np.bincount(key, weights=np.abs(x), minlength=size)[:size].reshape(n_traj, n_steps)  # [T, S]
    sums = np.bincount(key, weights=x, minlength=size)[:size].reshape(n_traj, n_steps)  # [T, S]
    counts = np.bincount(key, minlength=size)[:size].reshape(n_traj, n_steps)  # [T, S]
    return sums_abs, sums, counts


def decisive_flags(trajectories: Sequence[Any]) -> list[list[bool]]:
    """Per trajectory, ``step.info["decisive"]`` of every step (missing -> False).

    Args:
        trajectories: :class:`~stepgym.envs.records.Trajectory` objects whose steps kept the
            env's ``decisive`` info.
    """
    return [[bool(step.info.get("decisive", False)) for step in traj.steps] for traj in trajectories]


# =========================================================================== decisive credit share
# The AUC above ranks per-step mean |A| and so cannot see a method that moves credit *within* the
# equalised steps (StepOPSD's budget, ALGORITHMS.md §4.6), nor the sign or the size of the effect,
# and it is confounded by step position (issue 17). The share below is token-level, signed, sized,
# position-matched and comes with a placebo.
@dataclass(frozen=True)
class ShareResult:
    """Where a trajectory's credit goes: the decisive steps' share, against chance and position.

    The **lift** of step ``k`` of trajectory ``t`` is its tokens' mean ``|A|`` over the trajectory's
    mean ``|A|``: ``lift = (S_k / n_k) / (S / n)`` with ``S`` sums of ``|A|`` and ``n`` token counts.
    GRPO's trajectory-constant advantage gives exactly 1 on every step, so a lift *is* the effect
    size relative to GRPO on the same batch. The signed lift uses the step's mean ``A`` (signed).
    """

    share: float
    """Mean over trajectories of the decisive tokens' share of ``sum |A|`` (``sum_dec |A| / sum |A|``)."""
    token_share: float
    """Mean over the same trajectories of the decisive tokens' share of the tokens: GRPO's ``share``."""
    lift: float
    """Mean lift of the decisive steps (1 = GRPO, 0 = no credit on them, ``n / n_dec`` = all of it)."""
    position_excess: float
    """Mean over decisive steps of ``lift - b_k``: ``b_k`` = mean lift of the *neutral* steps at the same
    position ``k`` in the other trajectories (decisive steps without such a baseline are left out)."""
    placebo_excess: float
    """``position_excess`` with one random neutral step per trajectory flagged instead: chance is 0."""
    signed_lift_failed: float
    """Mean signed lift of the decisive steps of failed trajectories (GRPO: -1; a push against them < -1)."""
    signed_lift_successful: float
    """Mean signed lift of the decisive steps of successful trajectories (GRPO: +1)."""
    n_decisive: int
    """Decisive steps with tokens and a trajectory with ``sum |A| > 0``."""
    n_matched: int
    """Decisive steps that had a position baseline (``position_excess`` rests on these)."""
    n_trajectories: int
    """Trajectories with a decisive step, a neutral step and ``sum |A| > 0``."""


def _nanmean(x: Sequence[float]) -> float:
    a = np.asarray(x, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


def decisive_share(
    values: Any,
    step_index: Any,
    traj_index: Any,
    decisive: Sequence[Sequence[bool]],
    success: Sequence[bool],
    *,
    mask: Any = None,
    align: str = "start",
    placebo_seed: int = 0,
) -> ShareResult:
    """The decisive-credit share of token-level values ``[B, L]`` (definitions in :class:`ShareResult`).

    Args:
        values: ``[B, L]`` token advantages (or any token credit), numpy or torch.
        step_index: ``[B, L]`` step of each token, ``-1`` = none.
        traj_index: ``[B]`` trajectory of each row.
        decisive: Per trajectory, one flag per step (``info["decisive"]``).
        success: Per trajectory, whether it solved its task.
        mask: Optional ``[B, L]`` token mask (e.g. trainable action tokens); 0 drops the token.
        align: Step position for the baseline: ``"start"`` (``k``), ``"end"`` (steps before the last) or
            ``"start_length"`` (``k`` within trajectories of the same number of steps; stricter, fewer
            matches). With ``"start"`` a credit that depends on position only leaves a residual when
            trajectory lengths differ (the lift divides by the trajectory's mean).
        placebo_seed: Seed of the placebo's choice of neutral step.

    Returns:
        The :class:`ShareResult`; NaN fields when no trajectory qualifies (e.g. the null variant).
    """
    if align not in ("start", "end", "start_length"):
        raise ValueError(f"align={align!r} is not known; use 'start', 'end' or 'start_length'")
    if len(decisive) != len(success):
        raise ValueError(f"decisive has {len(decisive)} trajectories but success has {len(success)}")
    sums_abs, sums, counts = _step_sums(values, step_index, traj_index, mask, len(decisive))  # [T, S]
    T, S = counts.shape
    flags = np.zeros((T, S), dtype=bool)  # [T, S]
    n_steps = np.zeros(T, dtype=np.int64)  # [T] steps of each trajectory (by its flags)
    for t, f in enumerate(decisive):
        n = min(len(f), S)
        flags[t, :n] = np.asarray(f, dtype=bool)[:n]
        n_steps[t] = len(f)
    tot_abs, tot_n = sums_abs.sum(1), counts.sum(1)  # [T]
    with np.errstate(invalid="ignore", divide="ignore"):
        traj_mean = tot_abs / tot_n  # [T]
        lift = (sums_abs / counts) / traj_mean[:, None]  # [T, S] NaN without tokens / credit
        signed = (sums / counts) / traj_mean[:, None]  # [T, S]
    lift[~np.isfinite(lift)] = np.nan
    signed[~np.isfinite(signed)] = np.nan
    present = ~np.isnan(lift)  # [T, S]
    dec, neu = flags & present, ~flags & present  # [T, S]
    use = dec.any(1) & neu.any(1)  # [T]
    k = np.broadcast_to(np.arange(S)[None, :], (T, S))  # [T, S]
    if align == "start":
        pos = k
    elif align == "end":
        pos = n_steps[:, None] - 1 - k
    else:  # the same step of a trajectory of the same length: a credit that is a function of (k, K) cancels
        pos = k * (int(n_steps.max(initial=0)) + 1) + n_steps[:, None]

    def excess(chosen: np.ndarray) -> tuple[float, int]:
        # baseline b_k: mean lift of neutral steps at position k over the *other* trajectories
        vals = []
        for t, k in zip(*np.nonzero(chosen)):
            same = neu & (pos == pos[t, k])  # [T, S]
            same[t] = False
            if same.any():
                vals.append(lift[t, k] - lift[same].mean())
        return _nanmean(vals), len(vals)

    chosen = dec & use[:, None]  # [T, S]
    pos_ex, matched = excess(chosen)
    rng = np.random.default_rng(placebo_seed)
    placebo = np.zeros_like(flags)
    for t in np.flatnonzero(use):
        placebo[t, rng.choice(np.flatnonzero(neu[t]))] = True
    # the placebo's baseline may include its own position's other neutral steps: chance is exactly 0
    plc_ex, _ = excess(placebo)
    ok = np.asarray(success, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (np.where(chosen, sums_abs, 0).sum(1) / tot_abs)[use]
        tok_share = (np.where(chosen, counts, 0).sum(1) / tot_n)[use]
    return ShareResult(
        share=_nanmean(share),
        token_share=_nanmean(tok_share),
        lift=_nanmean(lift[chosen]),
        position_excess=pos_ex,
        placebo_excess=plc_ex,
        signed_lift_failed=_nanmean(signed[chosen & ~ok[:, None]]),
        signed_lift_successful=_nanmean(signed[chosen & ok[:, None]]),
        n_decisive=int(chosen.sum()),
        n_matched=matched,
        n_trajectories=int(use.sum()),
    )
