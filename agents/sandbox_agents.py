"""Scripted agents for the credit sandbox (``stepgym/Sandbox-*-v0``).

* :class:`SandboxExpert` follows the env's expert walkthrough (``info["expert_plan"]``) and always
  wins, except in the null variant where the outcome is a coin.
* :class:`NoisyExpert` is the expert that, with probability ``p`` per decisive step, *alters* it
  (applies a wrong treatment instead: a wrong commitment, flagged decisive)
  or *skips* it (never treats the object; no step of the episode is decisive then). It makes the
  mixed-success groups the credit diagnostic needs.
* :class:`RandomAdmissibleAgent` picks uniformly among ``info["admissible_actions"]``.

All randomness comes from a ``random.Random(seed)`` owned by the agent.
"""

from __future__ import annotations

import random
from typing import Any

from stepgym.envs.sandbox.world import APPLIANCE

__all__ = ["NoisyExpert", "RandomAdmissibleAgent", "SandboxExpert"]


def _tag(cmd: str) -> str:
    return f"<action>{cmd}</action>"


class SandboxExpert:
    """Plays ``info["expert_plan"]`` command by command (``look`` once the plan is used up)."""

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Read the plan of the new episode."""
        self.plan = list(info["expert_plan"])
        self._k = 0

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """The next command of the plan, in ``<action>`` tags."""
        cmd = self.plan[self._k] if self._k < len(self.plan) else "look"
        self._k += 1
        return _tag(cmd)


class NoisyExpert(SandboxExpert):
    """The expert with each decisive step altered or skipped with probability ``p``.

    Args:
        p: Probability of corrupting each decisive step of an episode.
        mode: ``"alter"`` (wrong treatment), ``"skip"`` (no treatment) or ``"mixed"`` (either, 50/50).
        seed: Seed of the agent's own random generator.
    """

    def __init__(self, p: float, mode: str = "alter", seed: int = 0):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p} must lie in [0, 1]")
        if mode not in ("alter", "skip", "mixed"):
            raise ValueError(f"mode={mode!r} is not known; use 'alter', 'skip' or 'mixed'")
        self.p, self.mode, self.rng = p, mode, random.Random(seed)
        self.corrupted: list[str] = []
        """What was done to each decisive step of the current episode: ``"kept"``, ``"altered"``, ``"skipped"``."""

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Take the expert plan and corrupt its decisive steps at random."""
        plan = list(info["expert_plan"])
        self.corrupted = []
        for cmd in info["nominal_decisive_commands"]:
            if self.rng.random() >= self.p:
                self.corrupted.append("kept")
                continue
            how = self.mode if self.mode != "mixed" else self.rng.choice(["alter", "skip"])
            treatment, rest = cmd.split(" ", 1)
            obj = rest.split(" with ")[0]
            i = plan.index(cmd)
            if how == "skip":
                del plan[i]
                self.corrupted.append("skipped")
            else:
                wrong = self.rng.choice(sorted(t for t in APPLIANCE if t != treatment))
                plan[i] = f"{wrong} {obj} with {APPLIANCE[wrong]}"
                self.corrupted.append("altered")
        self.plan = plan
        self._k = 0


class RandomAdmissibleAgent:
    """Uniformly random among the admissible commands of the current step."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Nothing to prepare."""

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """A random admissible command in ``<action>`` tags."""
        return _tag(self.rng.choice(info["admissible_actions"]))
