"""Optional env capabilities: discovered on the unwrapped env, never required.

The only thing stepgym needs from an env is Gymnasium's API: ``reset(*, seed, options) -> (obs,
info)`` and ``step(text) -> (obs, reward, terminated, truncated, info)``. Everything else is a
capability that stepgym looks for and uses when it is there:

* **task ids** -- ``env.task_ids`` (a sequence of ``str``); the env is then reset with
  ``options={"task_id": t}``. Without it a task *is* its reset seed (an ``int``): the env picks the
  task from the seed, as any seeded Gymnasium env does.
* **subsets** -- ``env.task_subset(task_id)``; without it every task is in :data:`SEED_SUBSET`
  (one row in the result tables).
* **instructions** -- ``env.protocol``, the text that tells the model how to write actions;
  without it ``TrainConfig.instructions`` (else the first observation alone).
* **episode facts in info** -- ``info["task_id"]`` / ``info["subset"]`` (group purity is checked on
  them, else on the first observation), ``info["admissible_actions"]``, ``info["won"]`` /
  ``info["score"]``, ``info["decisive"]``: read with ``info.get``, never required.

Tasks of a seed-only env: training draws from the seeds ``[0, n)`` and evaluation from ``[n, 2n)``
(:func:`seed_tasks`), so the two never share a task. An env with its own split keyword argument
can be evaluated on its held-out split through ``EvalConfig.env_kwargs`` instead (or as well).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["SEED_SUBSET", "Task", "env_instructions", "env_task_ids", "env_task_subset", "seed_tasks"]

Task = str | int
"""A task: a task id (``str``) of an env with task ids, or a reset seed (``int``) of one without."""

SEED_SUBSET = "all"
"""The one subset of an env that names no subsets."""


def env_task_ids(env: Any) -> list[str] | None:
    """The env's task ids (``env.unwrapped.task_ids``), or ``None`` when it has none (tasks are seeds).

    Raises:
        TypeError: ``task_ids`` exists but is not a sequence of strings (a wrong capability is an
            error, not a reason to ignore it).
    """
    inner = getattr(env, "unwrapped", env)
    ids = getattr(inner, "task_ids", None)
    if ids is None:
        return None
    if isinstance(ids, str) or not isinstance(ids, Sequence) or not all(isinstance(t, str) for t in ids):
        raise TypeError(
            f"{type(inner).__name__}.task_ids must be a sequence of str task ids (reset with "
            f"options={{'task_id': t}}); got {type(ids).__name__}. Remove it to let reset seeds pick the tasks."
        )
    return list(ids)


def env_task_subset(env: Any, task_id: str) -> str:
    """The subset of ``task_id`` (``env.unwrapped.task_subset``), or :data:`SEED_SUBSET` without that method."""
    inner = getattr(env, "unwrapped", env)
    fn = getattr(inner, "task_subset", None)
    return SEED_SUBSET if fn is None else str(fn(task_id))


def env_instructions(env: Any) -> str:
    """The env's action-format instructions (``env.unwrapped.protocol``), ``""`` without one."""
    inner = getattr(env, "unwrapped", env)
    return str(getattr(inner, "protocol", "") or "")


def seed_tasks(n: int, split: Literal["train", "eval"]) -> list[int]:
    """Reset seeds that stand for the tasks of an env without task ids: ``train`` ``[0, n)``, ``eval`` ``[n, 2n)``."""
    if n < 1:
        raise ValueError(f"the number of seed tasks must be >= 1, got {n}")
    if split not in ("train", "eval"):
        raise ValueError(f"unknown split {split!r}; use 'train' or 'eval'")
    return list(range(n)) if split == "train" else list(range(n, 2 * n))
