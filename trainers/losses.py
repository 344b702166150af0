"""Policy-gradient losses as pure tensor functions (ALGORITHMS.md §2).

Every function takes ``[B, L]`` tensors aligned to token positions and a ``mask`` that is 1 on
trainable (model-generated) tokens and 0 on prompt, observation and padding tokens. Nothing here
touches a model or an optimizer; the update loop in ``trainers/update.py`` composes them:

    per_token = clipped_surrogate(...) + kl_coef * kl_k3(...)          # [B, L]
    loss      = aggregate(per_token, mask, mode, normalizer)           # scalar
              - entropy_coef * aggregate(entropy, mask, "token-mean")

Aggregation normalisers can be passed in explicitly so that a mini-batch split into micro-batches
(gradient accumulation) or across processes gives exactly the same gradient as one big batch.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "Aggregation",
    "RatioLevel",
    "aggregate",
    "aggregation_normalizer",
    "clipped_surrogate",
    "entropy_from_logits",
    "importance_ratio",
    "kl_k3",
    "masked_mean",
]

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
RatioLevel = Literal["token", "sequence"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask == 1`` (0 when the mask is empty)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def importance_ratio(
    logp: torch.Tensor,  # [B, L]
    logp_old: torch.Tensor,  # [B, L]
    mask: torch.Tensor,  # [B, L]
    level: RatioLevel = "token",
) -> torch.Tensor:  # [B, L] (token) or [B, 1] (sequence)
    """Importance ratio ``pi_theta / pi_old``.

    ``token``: ``r[b,l] = exp(logp - logp_old)`` (PPO, arXiv 1707.06347 eq. 6).
    ``sequence``: GSPO (arXiv 2507.18071 eq. 7), the length-normalised sequence ratio
    ``s[b] = exp(mean_l(mask * (logp - logp_old)))``.
    """
    log_ratio = (logp - logp_old) * mask  # [B, L]
    if level == "token":
        return torch.exp(log_ratio)  # [B, L]
    if level == "sequence":
        seq = log_ratio.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1]
        return torch.exp(seq)  # [B, 1]
    raise ValueError(f"unknown ratio level {level!r}; use 'token' or 'sequence'")


def clipped_surrogate(
    logp: torch.Tensor,  # [B, L] current policy log-probs (with grad)
    logp_old: torch.Tensor,  # [B, L] behaviour policy log-probs (no grad)
    advantages: torch.Tensor,  # [B, L]
    mask: torch.Tensor,  # [B, L]
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    dual_clip: float | None = None,
    level: RatioLevel = "token",
) -> tuple[torch.Tensor, torch.Tensor]:  # ([B, L], [B, L])
    """Per-token clipped surrogate loss and a clipped-token indicator.

    PPO-clip (arXiv 1707.06347 eq. 7) with asymmetric bounds (DAPO clip-higher, arXiv 2503.14476
    eq. 10): ``L = -min(r*A, clip(r, 1-eps_lo, 1+eps_hi)*A)``. Dual clip (arXiv 1912.09729 eq. 5)
    for ``A < 0``: ``L = min(L, -c*A)``, i.e. the loss of a negative-advantage token is bounded by
    ``c*|A|`` however large the ratio grows. With ``level="sequence"`` the ratio is GSPO's and is
    shared by every token of the row.

    Returns:
        ``(loss, clipped)``: the per-token loss, 0 where ``mask == 0``, and a float indicator of the
        tokens whose gradient the clip removed (for the ``loss/clip_frac`` metric).
    """
    ratio = importance_ratio(logp, logp_old, mask, level)  # [B, L] or [B, 1]
    clipped_ratio = ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)  # [B, L] or [B, 1]
    loss_unclipped = -ratio * advantages  # [B, L]
    loss_clipped = -clipped_ratio * advantages  # [B, L]
    loss = torch.maximum(loss_unclipped, loss_clipped)  # [B, L] == -min(r*A, clip(r)*A)
    clipped = (loss_clipped > loss_unclipped).float()  # [B, L]
    if dual_clip is not None:
        bound = -dual_clip * advantages  # [B, L]; > 0 where A < 0
        dual = (advantages < 0) & (loss > bound)  # [B, L]
        loss = torch.where(dual, bound, loss)  # [B, L]
        clipped = torch.where(dual, torch.ones_like(clipped), clipped)
    return loss * mask, clipped * mask


def kl_k3(
    logp: torch.Tensor,  # [B, L] current policy
    logp_ref: torch.Tensor,  # [B, L] reference policy
    mask: torch.Tensor,  # [B, L]
    *,
    clamp: float = 10.0,
) -> torch.Tensor:  # [B, L]
    """Schulman's k3 estimator of KL(pi_theta || pi_ref), per token, clamped.

    ``k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1`` (J. Schulman, "Approximating KL
    divergence", 2020; the GRPO paper arXiv 2402.03300 eq. 4), clamped to ``[-clamp, clamp]``
    as verl's ``low_var_kl`` does. The log-ratio is clamped to ``[-20, 20]`` first so ``exp``
    stays finite. 0 where ``mask == 0``.
    """
    d = (logp_ref - logp).clamp(-20.0, 20.0)  # [B, L]
    kl = torch.exp(d) - d - 1.0  # [B, L]
    return kl.clamp(-clamp, clamp) * mask  # [B, L]


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:  # [B, L, V] -> [B, L]
    """Entropy of the categorical distribution at each position: ``logsumexp(z) - sum softmax(z) * z``."""
    logz = torch.logsumexp(logits, dim=-1)  # [B, L]
    p = torch.softmax(logits, dim=-1)  # [B, L, V]
    return logz - (p * logits).sum(-1)  # [B, L]


def aggregation_normalizer(mask: torch.Tensor, mode: Aggregation, *, norm_length: int | None = None) -> float:
    """The denominator :func:`aggregate` uses for ``mask`` when no global one is given.

    ``token-mean``: number of trainable tokens. ``seq-mean-token-mean``: number of rows (the
    per-row token means are then averaged). ``seq-mean-token-sum-norm``: rows x ``norm_length``, a
    constant (Dr.GRPO, arXiv 2503.20783 §3.1): the padded length would make the same tokens' loss depend
    on the longest row of the batch.

    Raises:
        ValueError: ``seq-mean-token-sum-norm`` without ``norm_length``, or an unknown mode.
    """
    if mode == "token-mean":
        return float(mask.sum())
    if mode == "seq-mean-token-mean":
        return float(mask.shape[0])
    if mode == "seq-mean-token-sum-norm":
        if norm_length is None:
            raise ValueError(
                "seq-mean-token-sum-norm divides by a constant norm_length (Dr.GRPO), not the batch's padded "
                "length; pass norm_length (TrainConfig fills loss.norm_length from the generation budget)"
            )
        return float(mask.shape[0] * norm_length)
    raise ValueError(
        f"unknown aggregation {mode!r}; use 'token-mean', 'seq-mean-token-mean' or 'seq-mean-token-sum-norm'"
    )


def aggregate(
    per_token: torch.Tensor,  # [B, L]
    mask: torch.Tensor,  # [B, L]
    mode: Aggregation,
    *,
    normalizer: float | None = None,
    norm_length: int | None = None,
) -> torch.Tensor:  # []
    """Reduce a per-token loss to a scalar.

    * ``token-mean``: ``sum(loss*mask) / sum(mask)`` — every token weighs the same (DAPO,
      arXiv 2503.14476 eq. 8).
    * ``seq-mean-token-mean``: ``mean_b(sum_l(loss*mask) / sum_l(mask))`` — each row weighs the
      same (GRPO, arXiv 2402.03300 eq. 3).
    * ``seq-mean-token-sum-norm``: ``sum(loss*mask) / (B * norm_length)`` — Dr.GRPO's constant
      normaliser (arXiv 2503.20783 §3.1).

    ``normalizer`` replaces the denominator (``sum(mask)``, ``B`` or ``B * norm_length``) by a
    value computed over a larger batch; a batch split into parts, each aggregated with the whole
    batch's normaliser, then sums to exactly the whole batch's loss.
    """
    denom = aggregation_normalizer(mask, mode, norm_length=norm_length) if normalizer is None else normalizer
    denom = max(denom, 1.0)
    if mode == "seq-mean-token-mean":
        row = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)  # [B]
        return row.sum() / denom
    return (per_token * mask).sum() / denom
