"""Evaluation per task subset: a fixed task sample, rollouts with one policy, metrics per subset.

Used by the training loop (periodic ``eval/<subset>/...`` metrics) and by ``benchmarks/run.py``
(checkpoint comparison tables). The sample of tasks is a pure function of the env's task list and
``seed``, so the same checkpoint evaluated twice with greedy decoding gives the same numbers.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
from stepgym.agents.policy import Policy, SamplingParams
from stepgym.agents.render import ChatRenderer
from stepgym.agents.rollout import Layout, collect, env_faults
from stepgym.envs.capabilities import SEED_SUBSET, Task, env_task_ids, env_task_subset
from stepgym.envs.pool import EnvPool, PoolBackend
from stepgym.envs.records import Trajectory

__all__ = ["SubsetResult", "evaluate", "sample_tasks", "subset_results", "task_subsets"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubsetResult:
    """Evaluation metrics of one subset."""

    subset: str
    n: int
    """Episodes evaluated."""
    success: float
    """Fraction of successful episodes (won / exact match)."""
    outcome: float
    """Mean outcome score."""
    f1: float | None
    """Mean token F1 of the final answers, where the env reports one (Search-QA)."""
    num_steps: float
    """Mean agent steps per episode."""
    invalid_rate: float
    """Fraction of invalid actions over all steps."""
    truncated: float
    """Fraction of episodes cut before a terminal state."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return asdict(self)


def task_subsets(
    env_id: str, env_kwargs: Mapping[str, Any] | None = None, *, seeds: Sequence[int] | None = None
) -> dict[str, list[Task]]:
    """Every task of the env, grouped by subset (in the env's own task order).

    An env without ``task_ids`` (any plain Gymnasium env) has one subset,
    :data:`~stepgym.envs.capabilities.SEED_SUBSET`, whose tasks are the reset ``seeds``
    (``stepgym.envs.seed_tasks(n, "train" | "eval")`` keeps training and evaluation apart).

    Raises:
        ValueError: The env has no task ids and no ``seeds`` were given.
    """
    env = gym.make(env_id, disable_env_checker=True, **dict(env_kwargs or {}))
    try:
        ids = env_task_ids(env)
        if ids is None:
            if seeds is None:
                raise ValueError(
                    f"env {env_id} has no task_ids, so its tasks are reset seeds; pass seeds= "
                    "(stepgym.envs.seed_tasks(n, 'train' or 'eval'))"
                )
            return {SEED_SUBSET: list(seeds)}
        out: dict[str, list[Task]] = {}
        for t in ids:
            out.setdefault(env_task_subset(env, t), []).append(t)
        return out
    finally:
        env.close()


def _stable_key(seed: int, task_id: Task) -> str:
    return hashlib.sha256(f"{seed}:{task_id}".encode()).hexdigest()


def sample_tasks(
    by_subset: Mapping[str, Sequence[Task]],
    n_per_subset: int | None,
    *,
    seed: int = 0,
    subsets: Sequence[str] | None = None,
) -> dict[str, list[Task]]:
    """A fixed sample of ``n_per_subset`` task ids per subset (all when ``None``).

    Raises:
        KeyError: A requested subset does not exist (the message lists the ones that do).
    """
    names = list(by_subset) if subsets is None else list(subsets)
    unknown = [s for s in names if s not in by_subset]
    if unknown:
        raise KeyError(f"unknown subset(s) {unknown}; this env has {sorted(by_subset)}")
    out = {}
    for s in names:
        ids = sorted(by_subset[s], key=lambda t: _stable_key(seed, t))
        out[s] = ids if n_per_subset is None else ids[:n_per_subset]
    return out


def subset_results(trajectories: Sequence[Trajectory]) -> dict[str, SubsetResult]:
    """Aggregate trajectories into one :class:`SubsetResult` per subset (sorted by name)."""
    by: dict[str, list[Trajectory]] = {}
    for t in trajectories:
        by.setdefault(t.subset, []).append(t)
    out = {}
    for subset in sorted(by):
        ts = by[subset]
        n = len(ts)
        steps = sum(t.num_steps for t in ts)
        last = [t.steps[-1].info.get("f1") for t in ts if t.steps]
        f1s = [float(v) for v in last if isinstance(v, (int, float))]
        out[subset] = SubsetResult(
            subset=subset,
            n=n,
            success=sum(t.success for t in ts) / n,
            outcome=sum(t.outcome for t in ts) / n,
            f1=(sum(f1s) / n) if f1s else None,
            num_steps=steps / n,
            invalid_rate=sum(not s.valid for t in ts for s in t.steps) / max(steps, 1),
            truncated=sum(t.truncated for t in ts) / n,
        )
    return out


def overall(results: Mapping[str, SubsetResult]) -> SubsetResult:
    """Unweighted mean over subsets (how papers report the average column)."""
    rs = list(results.values())
    k = max(len(rs), 1)
    f1s = [r.f1 for r in rs if r.f1 is not None]

    def mean(attr: str) -> float:
        return sum(getattr(r, attr) for r in rs) / k

    return SubsetResult(
        subset="avg",
        n=sum(r.n for r in rs),
        success=mean("success"),
        outcome=mean("outcome"),
        f1=(sum(f1s) / len(f1s)) if f1s else None,
        num_steps=mean("num_steps"),
        invalid_rate=mean("invalid_rate"),
        truncated=mean("truncated"),
    )


def evaluate(
    policy: Policy,
    renderer: ChatRenderer,
    env_id: str,
    tasks: Mapping[str, Sequence[Task]],
    *,
    env_kwargs: Mapping[str, Any] | None = None,
    sampling: SamplingParams,
    layout: Layout = "concat",
    max_turns: int = 4,
    max_prompt_tokens: int | None = None,
    max_total_tokens: int | None = None,
    max_action_tokens: int | None = None,
    instructions: str | None = None,
    num_envs: int = 8,
    backend: PoolBackend = "inprocess",
    seed: int = 0,
    pool: EnvPool | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, SubsetResult], list[Trajectory]]:
    """Roll out one episode per task of every subset and aggregate per subset.

    Args:
        policy: The policy to evaluate.
        renderer: The policy's chat renderer.
        env_id: Registered env id.
        tasks: Subset -> task ids or reset seeds (e.g. from :func:`sample_tasks`).
        env_kwargs: ``gym.make`` kwargs (split, retriever, ...).
        sampling: Decoding settings (temperature 0 = greedy).
        layout: Token layout of the rollouts.
        max_turns: Agent steps per episode.
        max_prompt_tokens: Prompt cap passed to :func:`~stepgym.agents.rollout.collect`.
        max_total_tokens: Token cap passed to :func:`~stepgym.agents.rollout.collect`.
        max_action_tokens: Completion cap passed to :func:`~stepgym.agents.rollout.collect`.
        instructions: First-prompt text in place of the env's protocol (``collect``).
        num_envs: Envs in the pool (ignored when ``pool`` is given).
        backend: Pool backend (ignored when ``pool`` is given).
        seed: Reset seed base (episodes are deterministic given the task id anyway).
        pool: Reuse an existing pool of ``env_id``.
        progress: Called with the number of finished episodes.

    Returns:
        ``(results per subset, trajectories)``.
    """
    flat = [t for ids in tasks.values() for t in ids]
    subset_of = [s for s, ids in tasks.items() for _ in ids]
    if not flat:
        raise ValueError("nothing to evaluate: every subset has 0 tasks")
    own = pool is None
    if pool is None:
        pool = EnvPool(env_id, max(1, min(num_envs, len(flat))), backend=backend, env_kwargs=env_kwargs)
    try:
        trajs = collect(
            pool,
            policy,
            flat,
            group_size=1,
            layout=layout,
            renderer=renderer,
            sampling=sampling,
            max_turns=max_turns,
            max_prompt_tokens=max_prompt_tokens,
            max_total_tokens=max_total_tokens,
            max_action_tokens=max_action_tokens,
            instructions=instructions,
            seed=seed,
            group_prefix="eval:",
            check_drift=False,
            progress=progress,
        )
    finally:
        if own:
            pool.close()
    # the plan's subset is the truth (an env need not report info["subset"]); one trajectory per task, in order
    trajs = [t if t.subset == s else t.model_copy(update={"subset": s}) for t, s in zip(trajs, subset_of, strict=True)]
    faults = env_faults(trajs)
    if faults:  # counted as failures in the numbers below, so never silently
        logger.warning(
            "evaluation of %s: %d of %d episodes ended on an env fault and count as failures; first (task %r): %s",
            env_id,
            len(faults),
            len(trajs),
            faults[0].task_id,
            faults[0].info.get("error"),
        )
    return subset_results(trajs), trajs


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std over seeds (Bessel's ddof=1; 0 for a single value); NaN for none."""
    if not values:
        return math.nan, math.nan
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / max(len(values) - 1, 1))
