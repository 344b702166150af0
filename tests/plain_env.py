"""Plain Gymnasium text envs, written as a user would: no stepgym import, none of its optional attributes.

``PlainGuess-v0``: guess a secret digit drawn from the reset seed; the first observation gives a
parity hint, feedback says higher/lower. The others break one rule each, for the fault tests.
Importing this module registers them (``--env plain_env:PlainGuess-v0`` does just that).
"""

from __future__ import annotations

import random
import re
from typing import Any

import gymnasium as gym
from gymnasium import spaces

PLAIN_ID = "PlainGuess-v0"
NONDETERMINISTIC_ID = "PlainGuessNondeterministic-v0"
FAULTY_ID = "PlainGuessFaulty-v0"

_TEXT = spaces.Text(max_length=10_000, charset=[chr(c) for c in range(32, 127)] + ["\n"])


class PlainGuessEnv(gym.Env):
    """Guess the digit. ``fault`` ("raise" or "nan") breaks ``step`` for the reset seeds in ``fault_seeds``."""

    def __init__(self, max_turns: int = 3, fault: str | None = None, fault_seeds: tuple[int, ...] = ()):
        self.observation_space = _TEXT
        self.action_space = _TEXT
        self.max_turns = max_turns
        self.fault = fault
        self.fault_seeds = set(fault_seeds)
        self._secret = 0
        self._turn = 0
        self._faulty = False

    def _first_observation(self) -> str:
        parity = "even" if self._secret % 2 == 0 else "odd"
        return f"Guess my digit (0-9); it is {parity}. Write <action>guess N</action>."

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._secret = int(self.np_random.integers(10))
        self._turn = 0
        self._faulty = seed in self.fault_seeds
        return self._first_observation(), {}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        self._turn += 1
        if self._faulty and self.fault == "raise":
            raise RuntimeError("the plain env exploded on purpose")
        m = re.search(r"<action>\s*guess\s+(\d)\s*</action>", action)
        truncated = self._turn >= self.max_turns
        reward = float("nan") if self._faulty and self.fault == "nan" else 0.0
        if m is None:
            return "Write <action>guess N</action>.", reward, False, truncated, {}
        guess = int(m.group(1))
        if guess == self._secret:
            return "Correct!", 1.0 if reward == 0.0 else reward, True, False, {}
        return ("Higher." if guess < self._secret else "Lower."), reward, False, truncated, {}


class NondeterministicGuessEnv(PlainGuessEnv):
    """Ignores its seed: the secret comes from the global ``random`` module (the bug purity checks catch)."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        gym.Env.reset(self, seed=seed)
        self._secret = random.randrange(10)
        self._turn = 0
        self._faulty = False
        return f"{self._first_observation()} (game {random.random():.6f})", {}


for _id, _cls in (
    (PLAIN_ID, PlainGuessEnv),
    (NONDETERMINISTIC_ID, NondeterministicGuessEnv),
    (FAULTY_ID, PlainGuessEnv),
):
    if _id not in gym.registry:
        gym.register(_id, entry_point=_cls)
