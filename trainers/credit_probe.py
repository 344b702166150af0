"""The credit-causality AUC measured *during* training, for any registered credit method.

:func:`probed` registers ``"probed_<name>"``: the method ``<name>`` unchanged (same options, same
needs, same advantages and auxiliary loss), plus ``credit/auc_...`` metrics computed on the very
batch it was given (``stepgym.distill.diagnostics``): the AUC with which the per-step mean ``|A|``
-- and, for teacher methods, the per-step mean ``|Delta|`` (``Delta = logp_teacher - logp_old`` on
the target tokens) -- ranks the env's decisive steps above neutral ones, over the failed and the
successful trajectories (within-trajectory pairing). NaN when the batch has no (decisive, neutral)
pair (the null variant; or all failures skipped the decisive step). Next to the AUC, ``credit/share_...``
(:func:`batch_share`): the decisive action tokens' share of the credit, signed, as an effect size against
GRPO, against the same step position and against a placebo (issue 17: the AUC cannot see StepOPSD's
within-step reweighting, nor sign, size or position); for a method with the per-step ``budget`` on,
also ``credit/prebudget_share_{lift,pos_excess}`` of the same shaping with the budget off.

The decisive flags come from the trajectories: the rollout function announces them with
:func:`announce` (``decisive_flags(trajs)``) before the trainer calls the credit method;
:func:`probe_rollout` wraps any :data:`~stepgym.trainers.grpo.RolloutFn` to do so. The credit method
checks that the announced trajectories match the batch (same count) and leaves the AUC out (NaN)
otherwise.

``run_training(config, wrap_rollout=probe_rollout)`` does the announcing inside the runner
(what the credit-sandbox comparison uses); :func:`sandbox_rollout` and :func:`hindsight_teacher`
are small rollout and teacher functions for calling :func:`stepgym.trainers.grpo.train` directly
(the learning test).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from stepgym.distill.diagnostics import credit_causality_auc, decisive_flags, decisive_share, per_step_credit
from stepgym.envs.records import Trajectory
from stepgym.trainers.credit import CreditBatch, CreditOutput, get_credit, register_credit

__all__ = [
    "announce",
    "announced_flags",
    "batch_share",
    "commitment_rate",
    "batch_auc",
    "hindsight_teacher",
    "probe_rollout",
    "probed",
    "right_commitment_rate",
    "sandbox_rollout",
]

_ANNOUNCED: dict[str, Any] = {"flags": None, "right_commitment": math.nan, "commitment": math.nan}


def right_commitment_rate(trajectories: Sequence[Trajectory]) -> float:
    """Share of trajectories whose first commitment (``info["commitment"]``) was the right treatment.

    Also defined in the null variant (where no step is decisive but commitments are still recorded),
    so it shows whether a method moves the decisive *behaviour* when the outcome carries no signal.
    NaN for an empty batch.
    """
    if not trajectories:
        return math.nan
    hits = 0
    for t in trajectories:
        first = next((s.info["commitment"] for s in t.steps if s.info.get("commitment")), None)
        hits += first == "right"
    return hits / len(trajectories)


def commitment_rate(trajectories: Sequence[Trajectory]) -> float:
    """Share of trajectories that made any commitment (applied a treatment to a goal object); NaN if empty.

    :func:`right_commitment_rate` counts a trajectory without a commitment as not right, so it falls when
    commitments become rarer even if right and wrong keep their ratio: read the two together (issue 17).
    """
    if not trajectories:
        return math.nan
    return sum(any(s.info.get("commitment") for s in t.steps) for t in trajectories) / len(trajectories)


def announce(trajectories: Sequence[Trajectory] | None) -> None:
    """Tell the probed credit methods the per-step decisive flags of the next batch (``None`` clears)."""
    _ANNOUNCED["flags"] = None if trajectories is None else decisive_flags(trajectories)
    _ANNOUNCED["right_commitment"] = math.nan if trajectories is None else right_commitment_rate(trajectories)
    _ANNOUNCED["commitment"] = math.nan if trajectories is None else commitment_rate(trajectories)


def announced_flags(num_trajectories: int, method: str) -> list[list[bool]]:
    """The decisive flags announced for this batch; fails when there are none or they are for another batch.

    Raises:
        RuntimeError: Nothing announced, or a different number of trajectories than the batch holds.
    """
    flags = _ANNOUNCED["flags"]
    how = (
        "run it through run_training(config, wrap_rollout=stepgym.trainers.credit_probe.probe_rollout) "
        "or call stepgym.trainers.credit_probe.announce(trajectories) before the credit method"
    )
    if flags is None:
        raise RuntimeError(
            f"credit method {method!r} needs the env's decisive flags of this batch, none were announced; {how}"
        )
    if len(flags) != num_trajectories:
        raise RuntimeError(
            f"credit method {method!r}: the announced decisive flags are for {len(flags)} trajectories but the "
            f"batch has {num_trajectories}; {how}"
        )
    return flags


def batch_share(
    batch: CreditBatch,
    advantages: torch.Tensor,  # [B, L]
    flags: Sequence[Sequence[bool]],
) -> dict[str, float]:
    """``share_*``: :func:`~stepgym.distill.diagnostics.decisive_share` of the advantages on the action tokens.

    Keys: ``share_abs`` (decisive action tokens' share of ``sum |A|``), ``share_tokens`` (their share of the
    tokens, GRPO's ``share_abs``), ``share_lift`` (1 = GRPO), ``share_pos_excess`` (lift over the neutral
    steps at the same position), ``share_placebo_excess`` (chance: 0), ``share_signed_{failed,successful}``.
    """
    tokens = batch.mask * batch.action_mask if bool((batch.action_mask * batch.mask).any()) else batch.mask
    r = decisive_share(advantages, batch.step_index, batch.traj_index, flags, batch.success.tolist(), mask=tokens)
    return {
        "share_abs": r.share,
        "share_tokens": r.token_share,
        "share_lift": r.lift,
        "share_pos_excess": r.position_excess,
        "share_placebo_excess": r.placebo_excess,
        "share_signed_failed": r.signed_lift_failed,
        "share_signed_successful": r.signed_lift_successful,
    }


def batch_auc(
    batch: CreditBatch,
    advantages: torch.Tensor,  # [B, L]
    flags: Sequence[Sequence[bool]],
) -> dict[str, float]:
    """``auc_adv_{failed,successful}`` (and ``auc_delta_...`` when the batch has teacher log-probs).

    Args:
        batch: The credit batch the advantages were computed from.
        advantages: The method's per-token advantages.
        flags: Per trajectory, ``info["decisive"]`` of each step.

    Returns:
        AUCs (NaN without a pair) and ``auc_pairs_{failed,successful}``.
    """
    T = batch.num_trajectories
    success = batch.success.tolist()
    out: dict[str, float] = {}
    values = {"adv": advantages}
    if batch.logp_teacher is not None:
        values["delta"] = (batch.logp_teacher - batch.logp_old) * batch.targets  # [B, L]
    for name, v in values.items():
        credit = per_step_credit(
            v, batch.step_index, batch.traj_index, mask=batch.mask, num_trajectories=T, reduce="mean_abs"
        )
        # align lengths: a step without tokens is NaN, trailing steps without tokens are cut
        aligned = []
        for c, f in zip(credit, flags):
            a = np.full(len(f), np.nan)
            n = min(len(c), len(f))
            a[:n] = c[:n]
            aligned.append(a)
        res = credit_causality_auc(aligned, flags, success)
        for part in ("failed", "successful"):
            out[f"auc_{name}_{part}"] = res[part].auc
            if name == "adv":
                out[f"auc_pairs_{part}"] = float(res[part].n_pairs)
    return out


def probed(name: str) -> str:
    """Register ``"probed_<name>"`` (the method plus AUC metrics) once; returns that name."""
    method = get_credit(name)
    new = f"probed_{method.name}"
    try:
        get_credit(new)
        return new
    except KeyError:
        pass

    # a method with a ``budget`` option (StepOPSD's per-step budget, §4.6) is also measured without it
    param = inspect.signature(method.fn).parameters.get("budget")
    budget_default = param.default if param is not None and param.kind is param.KEYWORD_ONLY else None

    @functools.wraps(method.fn)
    def fn(batch: CreditBatch, **kwargs: Any) -> CreditOutput:
        out = method.fn(batch, **kwargs)
        flags = _ANNOUNCED["flags"]
        if flags is not None and len(flags) == batch.num_trajectories:
            metrics = {
                **out.metrics,
                **batch_auc(batch, out.advantages, flags),
                **batch_share(batch, out.advantages, flags),
            }
            if kwargs.get("budget", budget_default) is True:  # StepOPSD: the same shaping without the budget
                pre = method.fn(batch, **{**kwargs, "budget": False}).advantages
                share = batch_share(batch, pre, flags)
                metrics.update({f"prebudget_{k}": share[k] for k in ("share_lift", "share_pos_excess")})
        else:
            metrics = {
                **out.metrics,
                "auc_adv_failed": math.nan,
                "auc_adv_successful": math.nan,
                "share_lift": math.nan,
            }
        metrics["right_commitment"] = _ANNOUNCED["right_commitment"]
        metrics["commitment"] = _ANNOUNCED["commitment"]
        return CreditOutput(out.advantages, out.returns, out.aux, metrics)

    fn.__module__ = __name__  # a probed method is this module's wrapper, not a built-in of ``credit``
    register_credit(
        new,
        needs=method.needs,
        config_defaults=method.config_defaults,  # the same method: the same defaults (e.g. steppo's GSPO ratio)
    )(fn)
    return new


def probe_rollout(rollout: Any) -> Any:
    """Wrap a ``rollout(model, task_ids, seed)`` so every batch is announced to the probed methods."""

    def wrapped(model: torch.nn.Module, task_ids: list[str], seed: int) -> list[Trajectory]:
        trajs = rollout(model, task_ids, seed)
        announce(trajs)
        return trajs

    return wrapped


def sandbox_rollout(
    pool: Any,
    tokenizer: Any,
    *,
    group_size: int,
    layout: str = "concat",
    max_turns: int = 14,
    max_new_tokens: int = 24,
    temperature: float = 1.0,
    stop: Sequence[str] = ("</action>",),
) -> Any:
    """A rollout function for ``grpo.train``: ``collect`` with an HF policy on the trained model (seeded per step)."""
    from stepgym.agents.hf import HFPolicy
    from stepgym.agents.policy import SamplingParams
    from stepgym.agents.render import ChatRenderer
    from stepgym.agents.rollout import collect

    renderer = ChatRenderer(tokenizer)

    def rollout(model: torch.nn.Module, task_ids: list[str], seed: int) -> list[Trajectory]:
        sampling = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, stop=tuple(stop), seed=seed % (2**31)
        )
        return collect(
            pool,
            HFPolicy(model, tokenizer, seed=seed % (2**31)),
            task_ids,
            group_size=group_size,
            layout=layout,  # type: ignore[arg-type]
            renderer=renderer,
            sampling=sampling,
            max_turns=max_turns,
            seed=seed % (2**31),
            check_drift=False,
        )

    return rollout


def hindsight_teacher(
    tokenizer: Any,
    *,
    parts: Sequence[str] = ("outcome", "peer"),
    target: str = "step",
    placement: str = "inline",
    temperature: float = 1.0,
    batch_size: int | None = 8,
) -> Any:
    """A teacher function for ``grpo.train``: hindsight text (``distill.hindsight``) -> rescored log-probs."""
    from stepgym.distill.hindsight import build_hindsight_batch, render_hindsight
    from stepgym.distill.rescore import teacher_logprobs

    def teacher(model: torch.nn.Module, batch: Any, trajs: list[Trajectory]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = build_hindsight_batch(trajs, parts)
        ids = [render_hindsight(t, tokenizer) for t in texts]
        rows, row_ids = [], []
        for t, traj in enumerate(trajs):
            for seq in traj.sequences:
                rows.append(seq)
                row_ids.append(ids[t])
        lt, tm = teacher_logprobs(
            model,
            rows,
            row_ids,
            target=target,  # type: ignore[arg-type]
            placement=placement,  # type: ignore[arg-type]
            temperature=temperature,
            batch_size=batch_size,
        )
        L = batch.input_ids.shape[1]
        return lt[:, :L], tm[:, :L]

    return teacher
