"""``textarena/<game>``: TextArena's single-player games, one adapter for all of them.

The adapter plays the game's raw env (``textarena.make("<game>-raw")``, without TextArena's LLM prompt
wrappers: stepgym renders prompts itself) and keeps TextArena's own rules, action format and scoring:

* **Action format** -- the game's own: its first observation states it (most games want the move in
  square brackets, e.g. ``[apple]`` or ``[3]``). The model's raw text, minus ``<think>`` blocks, goes to
  the game unchanged; the game parses it.
* **Invalid moves** -- TextArena's: a move the game rejects is reported in the next observation and may be
  retried once (``error_allowance=1``); a second invalid move in a row ends the game with the game's
  penalty. ``info["valid_action"]`` is False for a rejected move.
* **Reward** -- 0 on every step but the last, which gets the game's final reward (``rewards[0]`` of
  ``env.close()``: 1 for a win, a game-specific partial score or penalty otherwise). ``info["score"]``
  holds it on the last step and ``info["won"]`` is True when it is at least 1.

Tasks are seeds: task ``"<split>-<k>"`` resets the game with seed ``k`` (train) or ``10**6 + k`` (test),
so a task is the same game every time. TextArena draws from Python's global ``random``; the adapter swaps
in its own generator state around every call into the game, so envs sharing a process stay independent
and the caller's ``random`` is left untouched.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import gymnasium as gym
from stepgym.envs.adapters import ADAPTERS, check_known, dependency_error
from stepgym.envs.adapters.catalog import TEXTARENA_NLTK_GAMES
from stepgym.envs.base import TextEnv, strip_thinking

__all__ = ["TEST_SEED_OFFSET", "TextArenaEnv"]

TEST_SEED_OFFSET = 1_000_000
"""Test task ``k`` uses seed ``TEST_SEED_OFFSET + k`` (train task ``k`` uses ``k``)."""

_NLTK_HINT = "python -m nltk.downloader words averaged_perceptron_tagger_eng"


class TextArenaEnv(TextEnv):
    """One TextArena single-player game as a stepgym text env.

    ``reset`` info: ``game``, ``seed``. ``step`` info: ``valid_action``, ``action`` (the text sent, or
    ``None`` when the game rejected it), ``won``, and on the last step ``score`` and ``reason`` (the game's
    explanation of the outcome).

    Args:
        game: A TextArena env id (``"Sudoku-v0"``); ids are listed in
            :data:`stepgym.envs.adapters.catalog.TEXTARENA_GAMES`.
        num_tasks: Tasks (seeds) per split.
        split: ``"train"`` or ``"test"`` (disjoint seeds).
        game_kwargs: Extra keyword arguments for the game's constructor (over the registered ones).
        render_mode: ``"ansi"`` or ``None``.
    """

    held_out_kwargs: ClassVar[dict[str, Any]] = {"split": "test"}
    """``gym.make`` kwargs over the training ones that select held-out tasks (for evaluation)."""

    protocol: ClassVar[str] = (
        "You are playing a text game. Read the rules in the first message and answer each turn with one move, "
        "written exactly in the format the rules ask for (most games want the move in square brackets, e.g. "
        "[apple] or [3]). You may reason briefly before the move."
    )

    def __init__(
        self,
        game: str,
        num_tasks: int = 1000,
        split: str = "train",
        game_kwargs: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        check_known("TextArena game", game, ADAPTERS["textarena"].names)
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} is not known; use 'train' or 'test'")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.game = game
        self.split = split
        self._ids = [f"{split}-{k}" for k in range(num_tasks)]
        self._rng_state: Any = None
        self._ta_env = self._make(game, dict(game_kwargs or {}))
        self._done = False

    @staticmethod
    def _make(game: str, game_kwargs: dict[str, Any]) -> Any:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                import textarena  # noqa: F401 -- registers TextArena's ids; it prints NLTK download attempts
                from textarena.envs.registration import make
        except ImportError as e:
            raise dependency_error("textarena", e) from e
        try:
            return make(f"{game}-raw", **game_kwargs)
        except (LookupError, ImportError) as e:  # NLTK raises LookupError for a missing corpus
            if game in TEXTARENA_NLTK_GAMES:
                raise gym.error.DependencyNotInstalled(
                    f"textarena/{game} reads NLTK corpora that are not installed; install them with `{_NLTK_HINT}` "
                    f"(needs network once) ({type(e).__name__}: {str(e).strip()[:200]})"
                ) from e
            raise

    # ----------------------------------------------------------------- TextEnv
    @property
    def task_ids(self) -> Sequence[str]:
        """``"<split>-<k>"`` for ``k < num_tasks``."""
        return self._ids

    def task_subset(self, task_id: str) -> str:
        """Every task of a game is in one subset, named after the game."""
        return self.game

    def task_seed(self, task_id: str) -> int:
        """The TextArena seed of a task."""
        k = int(task_id.rsplit("-", 1)[1])
        return k if self.split == "train" else TEST_SEED_OFFSET + k

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        seed = self.task_seed(task_id)
        self._rng_state = random.Random(seed).getstate()
        with self._own_random():
            self._ta_env.reset(num_players=1, seed=seed)
            _, messages = self._ta_env.get_observation()
        self._done = False
        return _render(messages), {"game": self.game, "seed": seed, "won": False}

    def _step(self, action_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise gym.error.ResetNeeded("the TextArena game is over; call reset()")
        move = strip_thinking(action_text).strip()
        with self._own_random():
            done, _ = self._ta_env.step(move)
            _, messages = self._ta_env.get_observation()
        state = self._ta_env.state
        valid = state.error_count == 0 and not state.game_info[0].get("invalid_move", False)
        info: dict[str, Any] = {"valid_action": valid, "action": move if valid else None, "won": False}
        obs = _render(messages)
        if not done:
            return obs, 0.0, False, False, info
        self._done = True
        rewards, game_info = self._ta_env.close()
        reward = float((rewards or {}).get(0, 0.0))
        reason = str(game_info[0].get("reason") or "")
        info.update(score=reward, won=reward >= 1.0, reason=reason)
        return "\n".join(x for x in (obs, reason) if x), reward, True, False, info

    # ----------------------------------------------------------------- internals
    @contextlib.contextmanager
    def _own_random(self) -> Iterator[None]:
        """Run a call into TextArena with this env's state of the global ``random`` generator."""
        outer = random.getstate()
        random.setstate(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)


def _render(messages: Sequence[tuple[int, str, Any]]) -> str:
    """TextArena's pending messages as one observation; the agent's own move echoed back is left out."""
    lines = [str(text).strip() for _, text, kind in messages if getattr(kind, "name", "") != "PLAYER_ACTION"]
    return "\n".join(x for x in lines if x)
