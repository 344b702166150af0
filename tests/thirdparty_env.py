"""A third-party env defined outside stepgym, registered with plain ``gym.register``.

It proves that anything registered with Gymnasium works with the pool, rollouts and training
unchanged. Game: guess a secret digit; feedback says higher/lower.
"""

from __future__ import annotations

import os
import re
from typing import Any

import gymnasium as gym
from stepgym.envs import TextEnv, parse_tagged_action

ENV_ID = "thirdparty/GuessDigit-v0"


class GuessDigitEnv(TextEnv):
    protocol = "Guess the secret digit. Answer with <action>guess N</action>, N in 0..9."

    def __init__(self, max_turns: int = 5, render_mode: str | None = None):
        super().__init__(render_mode=render_mode)
        self.max_turns = max_turns
        self._secret = 0
        self._turn = 0

    @property
    def task_ids(self) -> list[str]:
        return [f"digit-{d}" for d in range(10)]

    def task_subset(self, task_id: str) -> str:
        return "low" if int(task_id[-1]) < 5 else "high"

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        self._secret = int(task_id[-1])
        self._turn = 0
        return f"{self.protocol}\nMake your first guess.", {"admissible_actions": [f"guess {d}" for d in range(10)]}

    def _step(self, action_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._turn += 1
        parsed = parse_tagged_action(action_text)
        trunc = self._turn >= self.max_turns
        m = re.fullmatch(r"guess (\d)", parsed.content or "")
        if parsed.content == "boom":
            raise RuntimeError("the env exploded on purpose")
        if parsed.content == "die":
            os._exit(3)  # only ever sent to a worker process
        if m is None:
            why = parsed.error or f"unknown command {parsed.content!r}"
            return f"Invalid action: {why}.", -0.1, False, trunc, {"valid_action": False, "action": None}
        g = int(m.group(1))
        info = {"valid_action": True, "action": parsed.content}
        if g == self._secret:
            return "Correct!", 1.0, True, False, {**info, "won": True}
        return ("Higher." if g < self._secret else "Lower."), 0.0, False, trunc, {**info, "won": False}


class BisectAgent:
    """Scripted agent: binary search over the digit."""

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        self.lo, self.hi = 0, 9

    def act(self, observation: str, info: dict[str, Any]) -> str:
        if observation.startswith("Higher"):
            self.lo = self.g + 1
        elif observation.startswith("Lower"):
            self.hi = self.g - 1
        self.g = (self.lo + self.hi) // 2
        return f"I think... <action>guess {self.g}</action>"


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=GuessDigitEnv)
