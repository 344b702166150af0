"""Env faults during training fail loudly, and nothing is trained on them.

An episode ends on an env fault when the env raised in ``reset``/``step`` or returned a NaN/inf
reward (``stepgym.agents.rollout.ENV_FAULTS``). Scoring such an episode as a failure would teach the
policy that whatever it did caused the crash, so the loop drops those episodes before the credit
computation (their group's other members are still compared with each other), warns with the first
fault's text, and stops the run when their share in one step passes ``max_env_error_share``: a
broken env (a corrupt data file, a bug) should stop a run, not quietly train it on failures.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from stepgym.agents.rollout import env_faults
from stepgym.envs.records import Trajectory

__all__ = ["EnvFaultError", "drop_env_faults"]

logger = logging.getLogger(__name__)


class EnvFaultError(RuntimeError):
    """Too many episodes of a training step ended on a fault of the env (see the module docstring)."""


def _describe(t: Trajectory) -> str:
    return f"task {t.task_id!r} (seed {t.seed}, group {t.group_id!r}): {t.info.get('error', '?')}"


def drop_env_faults(
    trajectories: Sequence[Trajectory], *, env_id: str, max_share: float, step: int, saved: str = ""
) -> list[Trajectory]:
    """The trajectories without env faults; warns about the faulty ones, or raises past ``max_share``.

    Args:
        trajectories: One training step's rollouts.
        env_id: The env, named in the warning and the error.
        max_share: Stop when more than this share of the episodes is faulty (0 = stop on any fault).
        step: The training step (0-based; reported 1-based, like the metrics).
        saved: A sentence on what is on disk, appended to the error.

    Raises:
        EnvFaultError: The faulty share passes ``max_share``, or no episode is left to train on; the
            message holds the first fault's error and traceback.
    """
    faulty = env_faults(trajectories)
    if not faulty:
        return list(trajectories)
    n, bad = len(trajectories), len(faulty)
    if bad / n > max_share or bad == n:
        first = faulty[0]
        tb = first.info.get("error_traceback")
        raise EnvFaultError(
            f"training step {step + 1}: {bad} of {n} episodes ({bad / n:.0%}) ended on a fault of env {env_id}, "
            f"more than max_env_error_share={max_share:g}, so the run stops rather than train on a broken env. "
            f"{saved + ' ' if saved else ''}First fault, {_describe(first)}"
            + (f"\nTraceback of that fault (from the env):\n{tb}" if isinstance(tb, str) else "")
            + "\nFix the env (or its data), or raise max_env_error_share to train past rare faults."
        )
    logger.warning(
        "training step %d: %d of %d episodes ended on a fault of env %s and are left out of the update "
        "(rollout/env_errors, rollout/nonfinite_rewards); first: %s",
        step + 1,
        bad,
        n,
        env_id,
        _describe(faulty[0]),
    )
    dropped = {id(t) for t in faulty}
    return [t for t in trajectories if id(t) not in dropped]
