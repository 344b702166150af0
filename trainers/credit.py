"""The credit registry: every advantage estimator has one signature and one name.

A credit method is a function ``fn(batch: CreditBatch, **kwargs) -> CreditOutput`` registered with
``@register_credit("name")``. The trainer calls every method, built-ins included, through
:func:`get_credit`; unknown names fail with "did you mean", and keyword arguments are checked
against the function's signature (:func:`check_credit_kwargs`) before any rollout.

Methods declare what they need (``register_credit(..., needs=...)``, names in :data:`NEEDS`):
teacher log-probs, a critic's values, the student's entropy, observation tokens, a judge's step roles.
The loop never asks which method runs: one function (``trainers/credit_inputs.py``) fills exactly the
declared inputs of the :class:`CreditBatch`. A method may also set ``config_defaults``: values for
``TrainConfig`` fields the user left unset, where the method's spec departs from the general default
(StepPO's sequence-level ratio, SDAR's live teacher, SGCD's contrast hindsight). Spec: ``shared/ALGORITHMS.md``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from stepgym.distill.rescore import ContextView
from stepgym.distill.segment import step_ids
from stepgym.distill.shaping import (
    discounted_returns,
    gigpo_step_advantages,
    group_normalize,
    linear_schedule,
    opsd_reward_advantages,
    sdar_token_loss,
    shape_advantages,
    step_budget,
    step_gae,
)

__all__ = [
    "AuxLoss",
    "CreditBatch",
    "CreditMethod",
    "CreditOutput",
    "NEEDS",
    "check_credit_kwargs",
    "get_credit",
    "group_advantages",
    "list_credits",
    "register_credit",
]


_TOKEN_FIELDS = (
    "step_index",
    "action_mask",
    "logp_old",
    "logp_teacher",
    "target_mask",
    "values",
    "entropy",
    "obs_step",
)
"""The ``[B, L]`` fields of :class:`CreditBatch` besides ``mask``."""


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
    """[T] float: trajectory score (outcome plus the env's invalid-action penalties, ALGORITHMS.md §1.1)."""
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
    """Training steps completed before this one (for schedules such as StepOPSD's ``lam``)."""
    entropy: torch.Tensor | None = None
    """[B, L] float: the student's entropy at each trainable token (methods needing ``entropy``)."""
    obs_step: torch.Tensor | None = None
    """[B, L] long: on observation tokens, the step ``k`` whose action they follow, else -1 (methods needing
    ``observations``; ``trainers.credit_inputs.observation_steps``)."""
    roles: tuple[tuple[str, ...], ...] | None = None
    """Per trajectory, a judge's role label of each step (methods needing ``judge``)."""
    context_view: ContextView | None = None
    """The rows with the teacher's context block inserted once, as a batch (teacher placements ``prefix``/``prompt``;
    UCOB trains the policy under both views)."""

    def __post_init__(self) -> None:
        shape = tuple(self.mask.shape)
        for name in _TOKEN_FIELDS:
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
    """An auxiliary per-token loss added to the policy loss (SDAR, OPSD, CRAFT, PaW).

    ``fn(logp_theta, logp_teacher, target_mask) -> [b, L]`` per-token loss (``fn(..., weight=w)`` when
    ``weight`` is set); the trainer applies it to each micro-batch's rows and averages over target tokens.
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
    weight: torch.Tensor | None = None
    """[B, L] float: a per-token weight handed to ``fn`` as ``weight=`` (CRAFT's signed credit)."""
    view: ContextView | None = None
    """A second view of the rows that the update runs forward on *with* grad (UCOB). Then ``fn`` is called as
    ``fn(logp_rows [N, V], logp_view [N, V], tokens [N], weight [N]) -> [N]`` on the full log-softmax at the
    ``N`` target tokens (row-major) under the rows and under the view, not on the sampled tokens' log-probs."""


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

NEEDS: dict[str, str] = {
    "teacher": "teacher log-probs of the sampled tokens (CreditBatch.logp_teacher, target_mask)",
    "values": "a critic's values (CreditBatch.values); the loop attaches a value head and trains it on "
    "CreditOutput.returns",
    "entropy": "the student's per-token entropy (CreditBatch.entropy)",
    "observations": "observation tokens as targets, with the step they follow (CreditBatch.obs_step)",
    "judge": "a role label per step (CreditBatch.roles) from the configured judge (distill/judge.py)",
    "context_view": "the teacher's context block as rows that the update runs forward on with grad "
    "(CreditBatch.context_view; teacher placements 'prefix'/'prompt')",
}
"""What a credit method may declare it needs, and what the loop then fills in."""


@dataclass(frozen=True)
class CreditMethod:
    """A registered credit method and what it needs."""

    name: str
    fn: CreditFn
    needs: frozenset[str] = frozenset()
    """Names from :data:`NEEDS`."""
    config_defaults: Mapping[str, object] = field(default_factory=dict, hash=False, compare=False)
    """``"section.field" -> value`` for TrainConfig fields the user left unset (e.g. ``loss.ratio_level``)."""

    @property
    def needs_teacher(self) -> bool:
        """Declares ``"teacher"``."""
        return "teacher" in self.needs

    @property
    def needs_values(self) -> bool:
        """Declares ``"values"``."""
        return "values" in self.needs

    def __call__(self, batch: CreditBatch, **kwargs: object) -> CreditOutput:
        """Run the method on ``batch``."""
        return self.fn(batch, **kwargs)


_REGISTRY: dict[str, CreditMethod] = {}


def register_credit(
    name: str,
    *,
    needs: tuple[str, ...] | frozenset[str] = (),
    needs_teacher: bool = False,
    needs_values: bool = False,
    config_defaults: Mapping[str, object] | None = None,
) -> Callable[[CreditFn], CreditFn]:
    """Register ``fn(batch: CreditBatch, **kwargs) -> CreditOutput`` under ``name``.

    Args:
        name: The registry name.
        needs: Inputs the method reads, names from :data:`NEEDS` (the loop fills exactly these).
        needs_teacher: Shorthand for ``"teacher"`` in ``needs``.
        needs_values: Shorthand for ``"values"`` in ``needs``.
        config_defaults: ``"section.field"`` of ``TrainConfig`` -> the method's own default, applied only
            where the user did not set that field (checked when a config is built).
    """
    declared = set(needs) | ({"teacher"} if needs_teacher else set()) | ({"values"} if needs_values else set())
    unknown = sorted(declared - set(NEEDS))
    if unknown:
        close = [m for u in unknown for m in difflib.get_close_matches(u, NEEDS, n=1)]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"credit method {name!r} declares unknown need(s) {unknown}.{hint} Known: {', '.join(NEEDS)}")

    def deco(fn: CreditFn) -> CreditFn:
        params = list(inspect.signature(fn).parameters.values())
        if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            raise TypeError(f"credit method {name!r} must take the CreditBatch as first positional argument")
        for p in params[1:]:
            if p.kind is not p.KEYWORD_ONLY:
                raise TypeError(f"credit method {name!r}: option {p.name!r} must be keyword-only (after *)")
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"a credit method named {name!r} is already registered")
        _REGISTRY[name] = CreditMethod(name, fn, frozenset(declared), dict(config_defaults or {}))
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
        lower = {n.lower(): n for n in _REGISTRY}  # case-insensitive: "StepOPSD" -> 'stepopsd'
        close = [lower[c] for c in difflib.get_close_matches(name.lower(), lower, n=3)]
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


_BUILTIN_MODULES: tuple[str, ...] = ("stepgym.trainers.credit", "stepgym.trainers.credit_2026")
"""Modules whose import registers the built-in methods (the related 2026 methods of §10 live in ``credit_2026``)."""


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
    if leave_one_out:
        scores = scores.to(torch.float64)
        G = int(group_index.max().item()) + 1 if group_index.numel() else 0
        counts = torch.zeros(G, dtype=torch.float64).index_add_(0, group_index, torch.ones_like(scores))  # [G]
        sums = torch.zeros(G, dtype=torch.float64).index_add_(0, group_index, scores)  # [G]
        n = counts[group_index]  # [T]
        others = (sums[group_index] - scores) / (n - 1).clamp(min=1)  # [T]
        adv = torch.where(n > 1, scores - others, scores)
        return adv.to(torch.float32)
    return group_normalize(scores, group_index, normalize_std=normalize_std, singleton="keep", eps=eps)


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


# =========================================================================== step-aware methods
# Shared pieces: the outcome advantage, the teacher gap Delta and the metrics every method reports.
def _outcome(batch: CreditBatch, normalize_std: bool = True) -> torch.Tensor:  # [B, L]
    return _broadcast(group_advantages(batch.scores, batch.group_index, normalize_std=normalize_std), batch)


def _need(batch: CreditBatch, field_name: str, method: str) -> torch.Tensor:
    t = getattr(batch, field_name)
    if t is None:
        how = {
            "logp_teacher": "rescore the rows with stepgym.distill.rescore.teacher_logprobs (needs_teacher=True)",
            "values": "run the value head (stepgym.trainers.value) over the rows (needs_values=True)",
            "anchors": "fill CreditBatch.anchors with each step's StepRecord.observation",
            "entropy": "declare needs=('entropy',) so the loop fills CreditBatch.entropy",
            "obs_step": "declare needs=('observations',) so the loop finds the observation tokens",
            "roles": "declare needs=('judge',) so the configured judge labels every step",
            "context_view": "declare needs=('teacher', 'context_view') and set teacher.placement='prompt' (or "
            "'prefix'), so the teacher returns its context block as rows",
        }[field_name]
        raise ValueError(f"credit method {method!r} needs CreditBatch.{field_name}, which is None; {how}")
    return t


def _delta(batch: CreditBatch, method: str) -> torch.Tensor:  # [B, L]
    """``Delta = logp_t - logp_s`` on target tokens, 0 elsewhere (ALGORITHMS.md §4.4)."""
    return (_need(batch, "logp_teacher", method) - batch.logp_old) * batch.targets  # [B, L]


def _delta_metrics(batch: CreditBatch, delta: torch.Tensor) -> dict[str, float]:
    """Mean |Delta| over target tokens of successful / failed trajectories."""
    ok = batch.success[batch.traj_index].unsqueeze(1) & (batch.targets > 0)  # [B, L]
    bad = ~batch.success[batch.traj_index].unsqueeze(1) & (batch.targets > 0)  # [B, L]
    out = {}
    for name, sel in (("delta_abs_success", ok), ("delta_abs_failed", bad)):
        out[name] = float(delta[sel].abs().mean()) if sel.any() else 0.0
    return out


def _steps(batch: CreditBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense step ids over trainable tokens: ``sid [B, L]``, ``step_traj [S]``, ``step_k [S]``."""
    return step_ids(batch.traj_index, batch.step_index, batch.mask)


@register_credit("stepopsd", needs_teacher=True)
def stepopsd(
    batch: CreditBatch,
    *,
    lam0: float = 0.2,
    lam_steps: int = 50,
    alpha_clip: float = 0.2,
    weight: str = "sigmoid",
    budget: bool = True,
    kappa: float = 2.0,
    normalize_std: bool = True,
) -> CreditOutput:
    """StepOPSD: sign-preserving step-aware shaping of the GRPO advantage (arXiv 2605.27140; spec §4).

    ``A_sh = ((1-lam) + lam*w) * A`` with ``w = clip(2*sigmoid(sign(A)*Delta), 1-alpha_clip, 1+alpha_clip)``
    (``weight="exp"``: RLSD's ``exp``), ``lam = lam0 * max(0, 1 - t/lam_steps)``, then the per-step
    budget ``c_k = clip(mbar/m_k, 1/kappa, kappa)`` over the steps (with target tokens) of each
    trajectory with >= 2 steps; ``m_k`` is the mean ``|A_sh|`` over step ``k``'s trainable tokens.
    """
    adv = _outcome(batch, normalize_std)  # [B, L]
    lam = linear_schedule(lam0, batch.training_step, lam_steps)
    delta = _delta(batch, "stepopsd")  # [B, L]
    shaped, clipped = shape_advantages(adv, delta, batch.mask, lam=lam, alpha_clip=alpha_clip, kind=weight)  # [B, L]
    metrics = {"lam": lam, **_delta_metrics(batch, delta)}
    tgt = batch.targets > 0  # [B, L]
    metrics["clip_frac"] = float(clipped[tgt].float().mean()) if tgt.any() else 0.0
    if budget:
        sid, step_traj, _ = _steps(batch)
        n_tgt = torch.zeros(step_traj.shape[0]).index_add_(0, sid[sid >= 0], batch.targets[sid >= 0].float())  # [S]
        shaped, c = step_budget(shaped, sid, step_traj, n_tgt > 0, kappa=kappa)  # [B, L], [S]
        multi = (
            torch.zeros(int(step_traj.max()) + 1 if step_traj.numel() else 0).index_add_(
                0, step_traj, (n_tgt > 0).float()
            )[step_traj]
            >= 2
        )  # [S] steps that the budget acts on
        sel = c[multi & (n_tgt > 0)]
        metrics.update(
            budget_mean=float(sel.mean()) if sel.numel() else 1.0,
            budget_min=float(sel.min()) if sel.numel() else 1.0,
            budget_max=float(sel.max()) if sel.numel() else 1.0,
        )
    return CreditOutput(shaped, metrics={**_summary(shaped, batch.mask), **metrics})


@register_credit("rlsd", needs_teacher=True)
def rlsd(
    batch: CreditBatch, *, lam0: float = 0.5, lam_steps: int = 100, eps_w: float = 0.2, normalize_std: bool = True
) -> CreditOutput:
    """RLSD: ``A_sh = A*((1-lam) + lam*clip(exp(sign(A)*Delta), 1-eps_w, 1+eps_w))``, no steps (spec §5)."""
    adv = _outcome(batch, normalize_std)  # [B, L]
    lam = linear_schedule(lam0, batch.training_step, lam_steps)
    delta = _delta(batch, "rlsd")  # [B, L]
    shaped, clipped = shape_advantages(adv, delta, batch.mask, lam=lam, alpha_clip=eps_w, kind="exp")  # [B, L]
    tgt = batch.targets > 0
    metrics = {"lam": lam, "clip_frac": float(clipped[tgt].float().mean()) if tgt.any() else 0.0}
    return CreditOutput(shaped, metrics={**_summary(shaped, batch.mask), **metrics, **_delta_metrics(batch, delta)})


@register_credit("gigpo")
def gigpo(
    batch: CreditBatch, *, omega: float = 1.0, gamma: float = 0.95, step_std: bool = True, normalize_std: bool = True
) -> CreditOutput:
    """GiGPO: ``A = A_E + omega * A_S`` with anchor-state step groups (arXiv 2505.10978; spec §3).

    Steps of one task group sharing the exact anchor observation form a cluster; ``A_S`` normalises
    the discounted step return ``G_t = sum_{k>=t} gamma^(k-t) r_k`` within it (``step_std=False``:
    mean only). Singleton clusters get ``A_S = 0``.
    """
    anchors = _need(batch, "anchors", "gigpo")
    sid, step_traj, step_k = _steps(batch)
    returns = {
        t: discounted_returns(torch.tensor(r, dtype=torch.float64), gamma) for t, r in enumerate(batch.step_rewards)
    }
    keys: dict[tuple[int, str], int] = {}
    G, cluster = [], []
    for t, k in zip(step_traj.tolist(), step_k.tolist()):
        if k >= len(anchors[t]) or k >= len(returns[t]):
            raise ValueError(
                f"trajectory {t} has tokens for step {k} but only {len(anchors[t])} anchors and "
                f"{len(returns[t])} step rewards; give one anchor and one reward per step"
            )
        G.append(float(returns[t][k]))
        cluster.append(keys.setdefault((int(batch.group_index[t]), anchors[t][k]), len(keys)))
    a_s = gigpo_step_advantages(torch.tensor(G), torch.tensor(cluster, dtype=torch.long), normalize_std=step_std)  # [S]
    step_adv = torch.zeros_like(batch.mask)  # [B, L]
    step_adv[sid >= 0] = a_s[sid[sid >= 0]]
    adv = _outcome(batch, normalize_std) + omega * step_adv * batch.mask  # [B, L]
    sizes = torch.bincount(torch.tensor(cluster, dtype=torch.long)).float() if cluster else torch.zeros(0)
    metrics = {
        "step_adv_mean": float(a_s.mean()) if a_s.numel() else 0.0,
        "step_adv_std": float(a_s.std(unbiased=False)) if a_s.numel() else 0.0,
        "cluster_size_mean": float(sizes.mean()) if sizes.numel() else 0.0,
        "singleton_frac": float((sizes[torch.tensor(cluster)] == 1).float().mean()) if cluster else 0.0,
    }
    return CreditOutput(adv, metrics={**_summary(adv, batch.mask), **metrics})


@register_credit("steppo", needs_values=True, config_defaults={"loss.ratio_level": "sequence"})
def steppo(
    batch: CreditBatch, *, gamma: float = 0.99, lam: float = 1.0, whiten: bool = True, bootstrap_truncated: bool = True
) -> CreditOutput:
    """StepPO: step-level GAE with a critic (arXiv 2604.18401; spec §8).

    ``V_k`` = ``values`` at the token right before step ``k``'s first trainable token (the last prompt
    token in the per-step layout); ``r_k`` = ``step_rewards[traj][k]``. After the last step ``V = 0``,
    or, when the trajectory was truncated and ``bootstrap_truncated``, ``V`` of the last step [recon:
    the value of the state after the cut is unknown; the last one is its estimate]. Returns ``G_k``
    (critic targets) broadcast like ``A``; ``A`` is whitened over steps (not tokens). The policy loss
    is sequence-level (GSPO) unless ``loss.ratio_level`` is set.
    """
    values = _need(batch, "values", "steppo")
    sid, step_traj, step_k = _steps(batch)
    S, (B, L) = step_traj.shape[0], batch.mask.shape
    flat = torch.arange(B * L).view(B, L)  # [B, L]
    first = torch.full((S,), B * L, dtype=torch.long).scatter_reduce(0, sid[sid >= 0], flat[sid >= 0], "amin")  # [S]
    v_step = values[first // L, (first % L - 1).clamp(min=0)]  # [S] value at the token before the step
    T = batch.num_trajectories
    n_steps = torch.bincount(step_traj, minlength=T)  # [T]
    K = int(n_steps.max()) if S else 0
    starts = torch.cumsum(n_steps, 0) - n_steps  # [T]
    slot = torch.arange(S) - starts[step_traj]  # [S] place of each step in its trajectory (steps sorted by (t, k))
    r = torch.zeros(T, K)
    v = torch.zeros(T, K)
    for s, (t, k) in enumerate(zip(step_traj.tolist(), step_k.tolist())):
        r[t, slot[s]] = float(batch.step_rewards[t][k]) if k < len(batch.step_rewards[t]) else 0.0
    v[step_traj, slot] = v_step.float()
    last_v = v[torch.arange(T), (n_steps - 1).clamp(min=0)]  # [T]
    boot = torch.where(batch.truncated & bootstrap_truncated, last_v, torch.zeros_like(last_v))  # [T]
    a, g = step_gae(r, v, n_steps, boot, gamma=gamma, lam=lam)  # [T, K]
    a_s, g_s = a[step_traj, slot], g[step_traj, slot]  # [S]
    if whiten and S >= 2:
        a_s = (a_s - a_s.mean()) / (a_s.std() + 1e-8)
    adv, ret = torch.zeros_like(batch.mask), torch.zeros_like(batch.mask)  # [B, L]
    adv[sid >= 0] = a_s[sid[sid >= 0]]
    ret[sid >= 0] = g_s[sid[sid >= 0]]
    metrics = {"value_mean": float(v_step.mean()) if S else 0.0, "return_mean": float(g_s.mean()) if S else 0.0}
    return CreditOutput(adv, returns=ret, metrics={**_summary(adv, batch.mask), **metrics})


def _gated_aux(batch: CreditBatch, method: str, beta: float, coef: float, replaces: bool) -> tuple[AuxLoss, dict]:
    lt = _need(batch, "logp_teacher", method)
    delta = _delta(batch, method)  # [B, L]
    tgt = batch.targets > 0
    gate = torch.sigmoid(beta * delta)  # [B, L] at logp_theta = logp_old (the rollout policy)
    metrics = {"gate_mean": float(gate[tgt].mean()) if tgt.any() else 0.0, **_delta_metrics(batch, delta)}
    aux = AuxLoss(functools.partial(sdar_token_loss, beta=beta), coef, batch.targets, lt, replaces_policy_loss=replaces)
    return aux, metrics


# SDAR's teacher (spec §6): the same policy's pre-update weights, privileged context prepended to the prompt
_SDAR_TEACHER = {"teacher.mode": "live", "teacher.placement": "prompt"}


@register_credit("sdar", needs_teacher=True, config_defaults=_SDAR_TEACHER)
def sdar(batch: CreditBatch, *, beta: float = 5.0, lam: float = 0.01, normalize_std: bool = True) -> CreditOutput:
    """SDAR: GRPO advantage + gated self-distillation auxiliary loss (arXiv 2605.15155; spec §6).

    Teacher, unless ``teacher.*`` says otherwise: the live policy (pre-update weights) with the
    hindsight prepended to the prompt.

    The aux term is :func:`~stepgym.distill.shaping.sdar_token_loss` with weight ``lam`` (code: 0.01,
    ``beta`` 5; the paper text's 0.1 / 10 are reachable through the options). It acts even where a
    group's advantage is all 0; the trainer skips it in micro-batches without target tokens.
    """
    adv = _outcome(batch, normalize_std)  # [B, L]
    aux, metrics = _gated_aux(batch, "sdar", beta, lam, False)
    return CreditOutput(adv, aux=aux, metrics={**_summary(adv, batch.mask), **metrics})


@register_credit("grpo+opsd", needs_teacher=True, config_defaults=_SDAR_TEACHER)
def grpo_opsd(batch: CreditBatch, *, lam: float = 0.01, normalize_std: bool = True) -> CreditOutput:
    """GRPO+OPSD: SDAR with ``beta = 0`` (constant gate 0.5; spec §6), an auxiliary loss.

    Not §7's per-token reward added to the advantage: that is ``grpo+opd``.
    """
    adv = _outcome(batch, normalize_std)  # [B, L]
    aux, metrics = _gated_aux(batch, "grpo+opsd", 0.0, lam, False)
    return CreditOutput(adv, aux=aux, metrics={**_summary(adv, batch.mask), **metrics})


@register_credit("opsd", needs_teacher=True, config_defaults=_SDAR_TEACHER)
def opsd(batch: CreditBatch, *, mode: str = "aux", coef: float = 1.0, gamma: float | None = None) -> CreditOutput:
    """OPSD alone: self-distillation without the outcome policy gradient (spec §6 and §7).

    ``mode="aux"``: the gate-0.5 distillation loss replaces the policy loss (advantages are 0; §6's
    "OPSD alone"). ``mode="reward"``: tinker-cookbook's per-token reward alone, ``A = -coef * (logp_s -
    logp_t)`` on target tokens, optionally summed forward with discount ``gamma``, without the GRPO
    advantage (§7's ``A +=`` on top of GRPO is ``grpo+opd``).
    """
    if mode == "aux":
        adv = torch.zeros_like(batch.mask)  # [B, L]
        aux, metrics = _gated_aux(batch, "opsd", 0.0, coef, True)
        return CreditOutput(adv, aux=aux, metrics={**_summary(adv, batch.mask), **metrics})
    if mode != "reward":
        raise ValueError(f"opsd mode must be 'aux' or 'reward', got {mode!r}")
    lt = _need(batch, "logp_teacher", "opsd")
    adv = opsd_reward_advantages(batch.logp_old, lt, batch.targets, coef=coef, gamma=gamma)  # [B, L]
    return CreditOutput(adv, metrics={**_summary(adv, batch.mask), **_delta_metrics(batch, _delta(batch, "opsd"))})


@register_credit("grpo+opd", needs_teacher=True)
def grpo_opd(
    batch: CreditBatch, *, coef: float = 1.0, gamma: float | None = None, normalize_std: bool = True
) -> CreditOutput:
    """GRPO advantage plus the OPD per-token reward: ``A += -coef * mask * (logp_s - logp_t)`` (spec §7).

    The reward is tinker-cookbook's on-policy distillation reward (reverse KL to the teacher per sampled
    token), optionally summed forward with discount ``gamma``; it is 0 off the target tokens.
    """
    adv = _outcome(batch, normalize_std)  # [B, L]
    lt = _need(batch, "logp_teacher", "grpo+opd")
    opd = opsd_reward_advantages(batch.logp_old, lt, batch.targets, coef=coef, gamma=gamma)  # [B, L]
    adv = adv + opd * batch.mask  # [B, L]
    metrics = {"opd_reward_mean": float(opd[batch.targets > 0].mean()) if (batch.targets > 0).any() else 0.0}
    return CreditOutput(
        adv, metrics={**_summary(adv, batch.mask), **metrics, **_delta_metrics(batch, _delta(batch, "grpo+opd"))}
    )
