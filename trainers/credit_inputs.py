"""Filling a credit method's declared inputs: the one place where needs become tensors.

A credit method declares what it reads (``register_credit(..., needs=...)``, names in
:data:`~stepgym.trainers.credit.NEEDS`); :func:`fill_credit_inputs` computes exactly those parts of
the :class:`~stepgym.trainers.credit.CreditBatch` -- recomputed ``logp_old`` with the critic's values
and the student's entropy from the same forward, teacher log-probs, observation tokens, a judge's
step roles -- so the training loop never asks which method runs. :func:`check_providers` fails at
start-up when a declared need has nothing to fill it, and :func:`attach_critic` gives the policy a
value head when (and only when) the method needs values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from stepgym.envs.records import Trajectory
from stepgym.trainers.credit import CreditBatch, CreditMethod, CreditOutput
from stepgym.trainers.update import _is_fsdp, compute_logprobs_and_values
from stepgym.trainers.value import ValueHead, attach_value_head, step_value_mask

if TYPE_CHECKING:
    from stepgym.trainers.batch import RolloutBatch
    from stepgym.trainers.config import TrainConfig

__all__ = [
    "CreditInputSpec",
    "CreditInputs",
    "attach_critic",
    "check_providers",
    "fill_credit_inputs",
    "observation_steps",
]


@dataclass(frozen=True)
class CreditInputSpec:
    """The config fields the filler reads, taken once from the :class:`TrainConfig` (:meth:`from_config`)."""

    micro_batch_size: int
    """Rows per scoring forward."""
    temperature: float
    """Rollout temperature (logits are divided by it)."""
    recompute_old_logprobs: bool
    """Replace the engine's ``logp_old`` with the trainer's forward."""

    @classmethod
    def from_config(cls, config: TrainConfig) -> CreditInputSpec:
        """The spec of a run."""
        return cls(
            micro_batch_size=config.micro_batch_size,
            temperature=config.sampling.temperature,
            recompute_old_logprobs=config.recompute_old_logprobs,
        )


@dataclass(frozen=True)
class CreditInputs:
    """A filled credit batch, plus what the critic's loss needs when the method has one."""

    credit: CreditBatch
    values_old: torch.Tensor | None = None
    """[B, L] the critic's values before the update, token-aligned (for value clipping)."""
    value_mask: torch.Tensor | None = None
    """[B, L] the positions whose value is regressed (each step's first trainable token)."""

    def critic_targets(self, out: CreditOutput) -> dict[str, torch.Tensor | None]:
        """``returns``/``values_old``/``value_mask`` for ``UpdateInputs`` (empty without a critic)."""
        if self.value_mask is None:
            return {}
        return {"returns": out.returns, "values_old": self.values_old, "value_mask": self.value_mask}


def check_providers(method: CreditMethod, *, teacher: Any, judge: Any) -> None:
    """Fail before any rollout when a need of ``method`` has nothing to fill it.

    Raises:
        ValueError: What is missing and how to provide it.
    """
    if method.needs_teacher and teacher is None:
        raise ValueError(f"credit method {method.name!r} needs teacher log-probs; pass teacher=... to train()")
    if "judge" in method.needs and judge is None:
        raise ValueError(
            f"credit method {method.name!r} needs a step judge; pass judge=... to train() "
            "(stepgym.distill.judge.oracle_judge, or llm_judge over any generator)"
        )


def attach_critic(model: torch.nn.Module, method: CreditMethod) -> ValueHead | None:
    """A zero-initialised value head on ``model`` when ``method`` needs values (after LoRA), else ``None``."""
    return attach_value_head(model) if method.needs_values else None


def observation_steps(
    input_ids: torch.Tensor,  # [B, L] long
    attention_mask: torch.Tensor,  # [B, L]
    mask: torch.Tensor,  # [B, L]
    step_index: torch.Tensor,  # [B, L] long
    traj_index: torch.Tensor,  # [B] long
) -> torch.Tensor:  # [B, L] long
    """For each observation token, the step ``k`` whose action it follows; -1 on every other token.

    Observation tokens are what the env (and the chat template around it) wrote after an action:
    in a row, the real non-trainable tokens after a trainable one (the concat layout), owned by the
    latest step before them; across the rows of one trajectory (the per-step layout, rows in step
    order), the tokens of a row's prompt after its longest common prefix with the previous row,
    owned by the previous row's step.
    """
    B, L = mask.shape
    trained = mask > 0  # [B, L]
    real = attention_mask > 0  # [B, L]
    latest = torch.cummax(torch.where(trained, step_index, torch.full_like(step_index, -1)), dim=1).values  # [B, L]
    out = torch.where(real & ~trained & (latest >= 0), latest, torch.full_like(latest, -1))  # [B, L]
    for b in range(1, B):
        if traj_index[b] != traj_index[b - 1] or not trained[b].any() or not trained[b - 1].any():
            continue
        first = int(trained[b].nonzero()[0, 0])  # the row's first generated token
        n = min(first, int(real[b - 1].sum()))
        diff = (input_ids[b, :n] != input_ids[b - 1, :n]).nonzero()
        lcp = int(diff[0, 0]) if diff.numel() else n
        prev_step = int(step_index[b - 1][trained[b - 1]].max())
        span = torch.arange(L) >= lcp
        span &= torch.arange(L) < first
        out[b] = torch.where(span & real[b], torch.full_like(out[b], prev_step), out[b])
    return out


@contextlib.contextmanager
def _unsharded(model: torch.nn.Module) -> Iterator[None]:
    """Gather an FSDP2 root's own parameters (embeddings, final norm, LM head) while the body runs.

    For code that calls the decoder and the LM head directly instead of ``model(...)`` (teacher
    rescoring); the sharded layers gather themselves in their own forward hooks.
    """
    if not _is_fsdp(model):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def fill_credit_inputs(
    method: CreditMethod,
    batch: RolloutBatch,
    trajectories: Sequence[Trajectory],
    *,
    spec: CreditInputSpec,
    model: torch.nn.Module,
    value_head: torch.nn.Module | None,
    teacher_model: torch.nn.Module | None,
    teacher: Any,
    judge: Any,
) -> CreditInputs:
    """Fill the parts of ``batch.credit`` that ``method`` declared, and nothing else.

    Args:
        method: The credit method (its ``needs``).
        batch: The step's padded rows.
        trajectories: The trajectories the rows came from (for the teacher and the judge).
        spec: Config fields read here.
        model: The trained policy.
        value_head: The critic head (:func:`attach_critic`), when the method needs values.
        teacher_model: The teacher snapshot or separate teacher; ``None`` = the live policy teaches.
        teacher: ``(scorer, batch, trajectories) -> (logp_teacher, target_mask)``.
        judge: ``(trajectories) -> roles`` (``stepgym.distill.judge.JudgeFn``).
    """
    credit = batch.credit
    values_old = value_mask = None
    with_entropy = "entropy" in method.needs
    if spec.recompute_old_logprobs or value_head is not None or with_entropy:
        # one forward gives logp_old, the critic's values and the entropy, all token-aligned (values_old[b, l] =
        # V of the state before token l); CreditBatch.values is position-aligned (values[b, l] = V of state l)
        logp_old, values_old, entropy = compute_logprobs_and_values(
            model,
            value_head,
            batch.input_ids,
            batch.attention_mask,
            micro_batch_size=spec.micro_batch_size,
            temperature=spec.temperature,
            score_mask=credit.mask,
            with_entropy=with_entropy,
        )
        if spec.recompute_old_logprobs:
            credit = replace(credit, logp_old=logp_old * credit.mask)
        if entropy is not None:
            credit = replace(credit, entropy=entropy * credit.mask)
        if values_old is not None:
            values = torch.cat([values_old[:, 1:], torch.zeros_like(values_old[:, :1])], dim=1)  # [B, L]
            credit = replace(credit, values=values)
            value_mask = step_value_mask(credit.mask, credit.step_index)
    if method.needs_teacher:
        scorer = teacher_model if teacher_model is not None else model
        with torch.no_grad(), _unsharded(scorer):
            scored = teacher(scorer, batch, list(trajectories))
        logp_teacher, target_mask = scored[:2]
        view = scored[2] if len(scored) > 2 else None  # the context block as rows (prefix/prompt placements)
        credit = replace(credit, logp_teacher=logp_teacher, target_mask=target_mask, context_view=view)
    if "observations" in method.needs:
        ids, attn = batch.input_ids, batch.attention_mask
        credit = replace(
            credit, obs_step=observation_steps(ids, attn, credit.mask, credit.step_index, credit.traj_index)
        )
    if "judge" in method.needs:
        roles = judge(trajectories)
        for t, (traj, r) in enumerate(zip(trajectories, roles)):
            if len(r) != len(traj.steps):
                raise ValueError(f"the judge gave {len(r)} roles for trajectory {t}, which has {len(traj.steps)} steps")
        credit = replace(credit, roles=tuple(tuple(r) for r in roles))
    return CreditInputs(credit, values_old=values_old, value_mask=value_mask)
