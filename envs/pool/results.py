"""What the pool hands back: a step's result, the results of faults, and the pool's own errors.

A fault never raises out of the pool for an env's sake: an env that raises yields a truncated step
(or a failed reset) whose ``info["error"]`` says what happened; a worker that dies yields the
"worker died" results built here, once, for steps and resets alike.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EnvStep", "PoolStateError", "WorkerDied", "died_reset", "died_step", "error_info"]


class PoolStateError(RuntimeError, ValueError):
    """An env index was used in a state that does not allow it (e.g. stepped while its step is in flight).

    A ``RuntimeError`` (as the pool's state errors always were) and a ``ValueError`` (the caller's
    indices are wrong), so either ``except`` catches it.
    """


class WorkerDied(RuntimeError):
    """A worker stopped answering (its process or actor is gone); the message says which and why."""


@dataclass
class EnvStep:
    """The result of one env step (or of a failed one)."""

    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """The episode is over (terminated or truncated)."""
        return self.terminated or self.truncated


def error_info(where: str, exc: BaseException) -> dict[str, Any]:
    """The ``info`` of a step or reset that raised ``exc`` in ``where`` (``"reset"``, ``"step"``, ...)."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    # the full traceback travels with the error: a run that stops on env faults shows where the env failed
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"error": f"{where}: {text}", "error_type": type(exc).__name__, "error_traceback": tb}


def _died_info(why: str) -> dict[str, Any]:
    return {"error": why, "error_type": "WorkerDied"}


def died_step(why: str) -> EnvStep:
    """The result of a step whose worker died before answering: the episode is truncated."""
    return EnvStep("", 0.0, False, True, _died_info(why))


def died_reset(why: str) -> tuple[str, dict[str, Any]]:
    """The result of a reset whose worker died before the episode was collected: no episode."""
    return "", _died_info(why)
