"""Each env's place in its episode, and the ticket it waits on.

An env is *free* (no episode), *active* (in an episode, may be stepped) or *lost* (its worker died
between its steps: its next step reports the truncation). While a reset or a step of it is in flight
or answered but not collected, its ticket sits in ``resetting`` or ``stepping`` (at most one of them);
collecting the ticket's result moves the env on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from stepgym.envs.pool.results import EnvStep, died_reset
from stepgym.envs.pool.tickets import Ticket

__all__ = ["Episodes", "Reset"]

logger = logging.getLogger(__name__)

Reset = tuple[str, dict[str, Any]]
"""A collected reset: ``(observation, info)``."""


class Episodes:
    """The episode state of a pool's envs; ``where[i]`` is env ``i``'s ``(worker, local slot)``."""

    def __init__(self, where: Sequence[tuple[int, int]]):
        self.where = list(where)
        self.active = [False] * len(where)
        self.lost: dict[int, str] = {}  # env index -> why its episode ended with a dead worker
        self.resetting: dict[int, Ticket] = {}  # env index -> its reset, sent or answered (not collected)
        self.stepping: dict[int, Ticket] = {}  # env index -> its step, sent or answered (not collected)

    def tickets(self, *, resets: bool, steps: bool) -> list[Ticket]:
        """The reset and/or step tickets not collected yet."""
        return [*(self.resetting.values() if resets else ()), *(self.stepping.values() if steps else ())]

    def owed_by(self, *, resets: bool, steps: bool) -> set[int]:
        """The workers that owe an answer to a reset and/or step ticket."""
        return {t.worker for t in self.tickets(resets=resets, steps=steps) if not t.done}

    def collect_answered(self, *, resets: bool, steps: bool) -> tuple[dict[int, Reset], dict[int, EnvStep]]:
        """Hand over every answered reset and/or step."""
        got_resets = self.collect_resets([i for i, t in self.resetting.items() if t.done]) if resets else {}
        got_steps = self.collect_steps([i for i, t in self.stepping.items() if t.done]) if steps else {}
        return got_resets, got_steps

    def collect_steps(self, idx: Sequence[int]) -> dict[int, EnvStep]:
        """Hand over the answered steps of ``idx``; an episode that ended is no longer active."""
        out = {}
        for i in idx:
            ticket = self.stepping.pop(i)
            result = ticket.value[ticket.indices.index(i)]
            if result.done:
                self.active[i] = False
            out[i] = result
        return out

    def collect_resets(self, idx: Sequence[int]) -> dict[int, Reset]:
        """Hand over the answered resets of ``idx``; an env whose reset succeeded is active."""
        out = {}
        for i in idx:
            ticket = self.resetting.pop(i)
            obs, info = ticket.value[ticket.indices.index(i)]
            self.active[i] = "error" not in info
            out[i] = (obs, info)
        return out

    def forget(self, ticket: Ticket) -> None:
        """Drop a ticket that was never sent."""
        for i in ticket.indices:
            if self.resetting.get(i) is ticket:
                del self.resetting[i]
            if self.stepping.get(i) is ticket:
                del self.stepping[i]

    def worker_died(self, w: int, why: str, covered: set[int]) -> None:
        """The episodes that worker ``w`` took with it, other than those of its failed tickets (``covered``)."""
        for i, (ww, _) in enumerate(self.where):
            if ww != w or i in covered:
                continue
            if i in self.resetting:  # a finished reset not collected yet: that episode is gone too
                ticket = self.resetting[i]
                ticket.value[ticket.indices.index(i)] = died_reset(why)
            elif i in self.stepping and self.stepping[i].value[self.stepping[i].indices.index(i)].done:
                continue  # a finished step not collected yet that ended its episode: nothing is lost
            elif self.active[i]:
                # episodes on the dead worker that were not stepped now are lost too:
                # their next step reports the truncation
                self.active[i] = False
                self.lost[i] = why
                logger.warning("env %d lost its episode: %s", i, why)
