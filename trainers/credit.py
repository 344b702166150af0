"""The credit registry: every advantage estimator has one signature and one name.

A credit method is a function ``fn(batch: CreditBatch, **kwargs) -> CreditOutput`` registered with
``@register_credit("name")``. The trainer calls every method, built-ins included, through
:func:`get_credit`; unknown names fail with "did you mean", and keyword arguments are checked
against the function's signature (:func:`check_credit_kwargs`) before any rollout.

Methods declare what they need: ``needs_teacher`` (teacher log-probs, filled by ``distill``
rescoring) and ``needs_values`` (a value head). Spec: ``shared/ALGORITHMS.md``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = [
    "AuxLoss",
    "CreditBatch",
    "CreditMethod",
    "CreditOutput",
    "check_credit_kwargs",
    "get_credit",
    "group_advantages",
    "list_credits",
    "register_credit",
]


@dataclass(frozen=True)
class CreditBatch:
    """Everything a credit method may read, for ``B`` token rows of ``T`` trajectories.

    Rows are :class:`~stepgym.envs.records.TokenSequence` s padded to length ``L`` (one row per step
    in the per-step layout, one per trajectory in the concat layout). Padding has ``mask == 0``
    and ``step_index == -1``.
    """

    mask: torch.Tensor
    """[B, L] float: 1 on trainable (model-generated) tokens."""
    step_index: torch.Tensor
    """[B, L] long: step ``k`` of each generated token, -1 elsewhere."""
    action_mask: torch.Tensor
    """[B, L] float: 1 on action-span tokens."""
    traj_index: torch.Tensor
    """[B] long: the trajectory (0..T-1) each row belongs to."""
    group_index: torch.Tensor
    """[T] long: the task group (0..G-1) of each trajectory."""
    scores: torch.Tensor
    """[T] float: trajectory score (outcome, minus invalid-action penalties when enabled)."""
    success: torch.Tensor
    """[T] bool: trajectory solved its task."""
    truncated: torch.Tensor
    """[T] bool: trajectory was cut before a terminal state."""
    step_rewards: tuple[tuple[float, ...], ...]
    """Per trajectory, the reward of each step (ragged)."""
    logp_old: torch.Tensor
    """[B, L] float: student log-prob of each sampled token (before the update), 0 elsewhere."""
    anchors: tuple[tuple[str, ...], ...] | None = None
    """Per trajectory, the anchor observation (env state text, no history) of each step."""
    logp_teacher: torch.Tensor | None = None
    """[B, L] float: teacher log-prob of the same tokens under the teacher context (target tokens)."""
    target_mask: torch.Tensor | None = None
    """[B, L] float: tokens the teacher rescored (the step or action span); defaults to ``mask``."""
    values: torch.Tensor | None = None
    """[B, L] float: critic values (methods with ``needs_values``)."""
    training_step: int = 0
    """Optimizer steps taken so far (for schedules)."""

    def __post_init__(self) -> None:
        shape = tuple(self.mask.shape)
        for name in ("step_index", "action_mask", "logp_old", "logp_teacher", "target_mask", "values"):
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)} but mask has shape {shape}")
        T = self.group_index.shape[0]
        for name in ("scores", "success", "truncated"):
            n = getattr(self, name).shape[0]
            if n != T:
                raise ValueError(f"{name} has {n} entries but group_index has {T}")
        if len(self.step_rewards) != T:
            raise ValueError(f"step_rewards has {len(self.step_rewards)} entries but there are {T} trajectories")
        if self.traj_index.shape[0] != shape[0]:
            raise ValueError(f"traj_index has {self.traj_index.shape[0]} entries but mask has {shape[0]} rows")

    @property
    def num_trajectories(self) -> int:
        """T."""
        return int(self.group_index.shape[0])

    @property
    def targets(self) -> torch.Tensor:
        """[B, L] the rescored target tokens (``target_mask``, else ``mask``)."""
        return self.mask if self.target_mask is None else self.target_mask


@dataclass(frozen=True)
class AuxLoss:
    """An auxiliary per-token loss added to the policy loss (SDAR, OPSD).

    ``fn(logp_theta, logp_teacher, target_mask) -> [b, L]`` per-token loss; the trainer applies it
    to each micro-batch's rows and averages over target tokens.
    """

    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    coef: float
    """Weight of the term in the total loss."""
    target_mask: torch.Tensor
    """[B, L] float: tokens the term acts on."""
    logp_teacher: torch.Tensor
    """[B, L] float: teacher log-probs (no grad)."""
    replaces_policy_loss: bool = False
    """True drops the policy-gradient term (OPSD alone)."""


@dataclass(frozen=True)
class CreditOutput:
    """What a credit method returns."""

    advantages: torch.Tensor
    """[B, L] float: per-token advantages, 0 where ``mask == 0``."""
    returns: torch.Tensor | None = None
    """[B, L] float: value targets for a critic (StepPO)."""
    aux: AuxLoss | None = None
    """An auxiliary loss, if the method has one."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Scalars to log under ``credit/``."""


CreditFn = Callable[..., CreditOutput]


@dataclass(frozen=True)
class CreditMethod:
    """A registered credit method."""

    name: str
    fn: CreditFn
    needs_teacher: bool = False
    needs_values: bool = False

    def __call__(self, batch: CreditBatch, **kwargs: object) -> CreditOutput:
        """Run the method on ``batch``."""
        return self.fn(batch, **kwargs)


_REGISTRY: dict[str, CreditMethod] = {}


def register_credit(
    name: str, *, needs_teacher: bool = False, needs_values: bool = False
) -> Callable[[CreditFn], CreditFn]:
    """Register ``fn(batch: CreditBatch, **kwargs) -> CreditOutput`` under ``name``."""

    def deco(fn: CreditFn) -> CreditFn:
        params = list(inspect.signature(fn).parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            raise TypeError(f"credit method {name!r} must take the CreditBatch as first positional argument")
        for p in params[1:]:
            if p.kind is not p.KEYWORD_ONLY:
                raise TypeError(f"credit method {name!r}: option {p.name!r} must be keyword-only (after *)")
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"a credit method named {name!r} is already registered")
        _REGISTRY[name] = CreditMethod(name, fn, needs_teacher, needs_values)
        return fn

    return deco


def list_credits() -> list[str]:
    """Names of every registered credit method."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_credit(name: str) -> CreditMethod:
    """Look up a credit method by ``"name"`` or ``"package.module:name"`` (imports the module).

    Raises:
        KeyError: Unknown name, with close matches and the full list.
    """
    _load_builtins()
    if ":" in name:
        module, _, short = name.partition(":")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise KeyError(f"credit method {name!r}: cannot import module {module!r} ({e})") from e
        name = short
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown credit method {name!r}.{hint} Registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def check_credit_kwargs(name: str, kwargs: dict[str, object]) -> CreditMethod:
    """Fail early when ``kwargs`` do not match the method's keyword-only options.

    Raises:
        KeyError: Unknown method name.
        TypeError: Unknown option (with "did you mean") or a missing required option.
    """
    method = get_credit(name)
    params = {p.name: p for p in list(inspect.signature(method.fn).parameters.values())[1:]}
    for key in kwargs:
        if key not in params:
            close = difflib.get_close_matches(key, params, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"credit method {method.name!r} has no option {key!r}.{hint} Options: {', '.join(params) or '(none)'}"
            )
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise TypeError(f"credit method {method.name!r} needs option(s) {missing}")
    return method


_BUILTIN_MODULES: tuple[str, ...] = ("stepgym.trainers.credit",)
"""Modules whose import registers the built-in methods (the distill-based ones join here)."""


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


# =========================================================================== outcome baselines
def group_advantages(
    scores: torch.Tensor,  # [T]
    group_index: torch.Tensor,  # [T] long
    *,
    normalize_std: bool = True,
    leave_one_out: bool = False,
    eps: float = 1e-6,
) -> torch.Tensor:  # [T]
    """GRPO / Dr.GRPO / RLOO trajectory advantages (ALGORITHMS.md §1).

    GRPO (DeepSeekMath, arXiv 2402.03300, eq. for outcome supervision): ``(R - mean_g) / (std_g + eps)``
    with the unbiased std; Dr.GRPO (arXiv 2503.20783): ``R - mean_g``; RLOO (arXiv 2402.14740):
    ``R - mean of the other G-1``. A group of one has ``mean = 0`` and ``std = 1``; all-equal
    scores give exactly 0.
    """
    scores = scores.to(torch.float64)
    G = int(group_index.max().item()) + 1 if group_index.numel() else 0
    counts = torch.zeros(G, dtype=torch.float64).index_add_(0, group_index, torch.ones_like(scores))  # [G]
    sums = torch.zeros(G, dtype=torch.float64).index_add_(0, group_index, scores)  # [G]
    n = counts[group_index]  # [T]
    mean = sums[group_index] / n  # [T]
    if leave_one_out:
        others = (sums[group_index] - scores) / (n - 1).clamp(min=1)  # [T]
        adv = torch.where(n > 1, scores - others, scores)
        return adv.to(torch.float32)
    sq = torch.zeros(G, dtype=torch.float64).index_add_(0, group_index, (scores - mean) ** 2)  # [G]
    var = sq[group_index] / (n - 1).clamp(min=1)  # [T] unbiased
    single = n <= 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(var), var.sqrt())
    adv = scores - mean
    if normalize_std:
        adv = adv / (std + eps)
    # exact zeros for all-equal groups (no 1e-17 noise from the mean)
    adv = torch.where((scores - mean).abs() < 1e-12, torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


def _broadcast(traj_adv: torch.Tensor, batch: CreditBatch) -> torch.Tensor:
    """[T] -> [B, L] over trainable tokens."""
    return traj_adv[batch.traj_index].unsqueeze(1) * batch.mask  # [B, L]


def _summary(adv: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    sel = adv[mask > 0]
    if sel.numel() == 0:
        return {"adv_mean": 0.0, "adv_std": 0.0}
    return {"adv_mean": float(sel.mean()), "adv_std": float(sel.std(unbiased=False))}


@register_credit("grpo")
def grpo(batch: CreditBatch, *, normalize_std: bool = True, cross_steps: bool = False) -> CreditOutput:
    """GRPO outcome advantage broadcast to every generated token (ALGORITHMS.md §1).

    Args:
        batch: The credit batch.
        normalize_std: Divide by the group's std (off = Dr.GRPO).
        cross_steps: verl-agent's per-step variant: mean/std over all step *rows* of the group
            instead of one value per trajectory (off by default).
    """
    if cross_steps:
        row_scores = batch.scores[batch.traj_index]  # [B]
        row_groups = batch.group_index[batch.traj_index]  # [B]
        row_adv = group_advantages(row_scores, row_groups, normalize_std=normalize_std)  # [B]
        adv = row_adv.unsqueeze(1) * batch.mask  # [B, L]
    else:
        adv = _broadcast(group_advantages(batch.scores, batch.group_index, normalize_std=normalize_std), batch)
    return CreditOutput(adv, metrics=_summary(adv, batch.mask))


@register_credit("dr_grpo")
def dr_grpo(batch: CreditBatch) -> CreditOutput:
    """Dr.GRPO: ``A = R - mean_group`` (arXiv 2503.20783, §3.2)."""
    return grpo(batch, normalize_std=False)


@register_credit("rloo")
def rloo(batch: CreditBatch) -> CreditOutput:
    """RLOO: baseline = mean of the other G-1 scores (arXiv 2402.14740, eq. 4)."""
    adv = _broadcast(group_advantages(batch.scores, batch.group_index, leave_one_out=True), batch)
    return CreditOutput(adv, metrics=_summary(adv, batch.mask))
