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

__all__ = ["AucResult", "credit_causality_auc", "decisive_auc", "decisive_flags", "mann_whitney_u", "per_step_credit"]


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
    v = _to_numpy(values, np.float64)  # [B, L]
    s = _to_numpy(step_index, np.int64)  # [B, L]
    tr = _to_numpy(traj_index, np.int64)  # [B]
    if v.shape != s.shape or v.ndim != 2 or tr.shape != (v.shape[0],):
        raise ValueError(f"shapes disagree: values {v.shape}, step_index {s.shape}, traj_index {tr.shape}")
    keep = s >= 0  # [B, L]
    if mask is not None:
        keep &= _to_numpy(mask, np.float64) != 0
    n_traj = int(num_trajectories if num_trajectories is not None else (tr.max() + 1 if tr.size else 0))
    n_steps = int(s.max() + 1) if keep.any() else 0
    t_tok = np.broadcast_to(tr[:, None], s.shape)[keep]  # [N]
    key = t_tok * max(n_steps, 1) + s[keep]  # [N]
    x = np.abs(v[keep]) if reduce == "mean_abs" else v[keep]  # [N]
    size = n_traj * max(n_steps, 1)
    sums = np.bincount(key, weights=x, minlength=size)[:size].reshape(n_traj, -1)  # [T, S]
    counts = np.bincount(key, minlength=size)[:size].reshape(n_traj, -1)  # [T, S]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)  # [T, S]
    out = []
    for t in range(n_traj):
        present = np.flatnonzero(counts[t])
        out.append(means[t, : present[-1] + 1].copy() if present.size else np.zeros(0))
    return out


def decisive_flags(trajectories: Sequence[Any]) -> list[list[bool]]:
    """Per trajectory, ``step.info["decisive"]`` of every step (missing -> False).

    Args:
        trajectories: :class:`~stepgym.envs.records.Trajectory` objects whose steps kept the
            env's ``decisive`` info.
    """
    return [[bool(step.info.get("decisive", False)) for step in traj.steps] for traj in trajectories]
