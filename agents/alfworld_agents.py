"""Scripted ALFWorld agents: the game file's walkthrough as an expert, and a random baseline.

Both are :class:`~stepgym.agents.scripted.TextAgent` implementations that write the env's protocol
(``<action>command</action>``), so they drive ``stepgym/ALFWorld-v0`` directly or through an
:class:`~stepgym.envs.EnvPool`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = ["RandomAdmissibleAgent", "WalkthroughAgent", "read_walkthrough", "won_cleanly"]


def won_cleanly(trajectory: Any) -> bool:
    """Keep-filter of walkthrough demonstrations: the game was won and every step was a valid command.

    The walkthrough wins every game file it comes from (SETUP.md), so a lost or truncated episode means
    the env, the data or a limit (``max_turns``, ``max_total_tokens``) cut it: cloning it would teach
    the model to stop half way. An invalid step would teach it a command the game rejects.
    ``trajectory`` is a :class:`~stepgym.envs.records.Trajectory`.
    """
    return (
        bool(trajectory.success)
        and not trajectory.info.get("truncated_reason")
        and all(s.valid for s in trajectory.steps)
    )


def read_walkthrough(gamefile: str) -> list[str]:
    """The ``walkthrough`` command list stored in an ALFWorld ``game.tw-pddl`` file.

    Raises:
        ValueError: The file has no walkthrough (older 2.1.1 game files); use the env's
            ``info["expert_plan"]``, which falls back to TextWorld's planner.
    """
    with open(gamefile, encoding="utf-8") as f:
        data = json.load(f)
    plan = data.get("walkthrough") if isinstance(data, dict) else None
    if not plan:
        raise ValueError(f"{gamefile} has no 'walkthrough'; use the env's info['expert_plan'] instead")
    return [str(c) for c in plan]


class WalkthroughAgent:
    """Plays the game's walkthrough (ALFWorld's expert plan) one command per step.

    The plan is ``info["expert_plan"]`` from ``reset`` (the game file's walkthrough), else it is read
    from ``info["gamefile"]``. After the plan runs out the agent writes ``fallback`` (``look``).

    Args:
        think: Write a short reasoning sentence before the action, as a model would.
        fallback: Command once the plan is used up.
    """

    def __init__(self, think: bool = False, fallback: str = "look"):
        self.think = think
        self.fallback = fallback
        self.plan: list[str] = []
        self._k = 0

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Take the plan of the new game."""
        plan = info.get("expert_plan")
        if not plan:
            plan = read_walkthrough(info["gamefile"])
        self.plan = [str(c) for c in plan]
        self._k = 0

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """The next walkthrough command, as ``<action>command</action>``."""
        if self._k < len(self.plan):
            command = self.plan[self._k]
            self._k += 1
        else:
            command = self.fallback
        if self.think:
            return f"Step {self._k} of the plan is to {command}.\n<action>{command}</action>"
        return f"<action>{command}</action>"


class RandomAdmissibleAgent:
    """Picks a uniformly random admissible action each step (a baseline and a fuzzer).

    Args:
        seed: Seed of the agent's own generator (episodes differ; the sequence is reproducible).
        exclude: Commands never chosen (when others remain), e.g. ``("help",)``.
    """

    def __init__(self, seed: int = 0, exclude: tuple[str, ...] = ("help",)):
        self.rng = np.random.default_rng(seed)
        self.exclude = set(exclude)
        self._admissible: list[str] = []

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Start an episode (the generator is not re-seeded)."""
        self._admissible = list(info.get("admissible_actions") or [])

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """A random command from ``info["admissible_actions"]`` (last seen list if absent)."""
        admissible = info.get("admissible_actions") or self._admissible
        self._admissible = list(admissible)
        choices = [c for c in admissible if c not in self.exclude] or list(admissible) or ["look"]
        return f"<action>{choices[int(self.rng.integers(len(choices)))]}</action>"
