"""``textworld/<game>``: TextWorld's generated games (the ``tw-make`` challenges) as stepgym text envs.

TextWorld's generators (``coin_collector``, ``treasure_hunter``, ``simple``, ``cooking``: the
``textworld.challenges`` that ``tw-make tw-<game>`` builds) make a game from settings and a seed. The
adapter makes task ``"<split>-<k>"`` from seed ``k`` (train) or ``10**6 + k`` (test), compiles it once into
a cache folder (``<games_dir>/<game>/<settings>/<seed>.z8`` with its ``.json``; ~1-3 s per game, written
atomically so parallel workers may share the folder) and plays it with ``textworld.start``.

* **Action format** -- one TextWorld command per turn inside ``<action></action>``; the command goes to the
  game as typed (TextWorld's parser answers unknown ones). ``info["valid_action"]`` is True when the text
  held one tag and the command is admissible; ``info["admissible_actions"]`` lists TextWorld's admissible
  commands.
* **Reward** -- TextWorld's own scoring: the points the step earned (``score`` difference). The episode
  ends (``terminated``) when the game is won or lost and is ``truncated`` after ``max_steps`` steps.
  ``info["score"]`` is the points so far divided by the game's ``max_score`` (the rollout's outcome),
  ``info["points"]`` the raw points, ``info["won"]`` TextWorld's won flag.
* **Observations** -- TextWorld's feedback without its decoration (the ASCII-art title of the first one and
  the interpreter's trailing prompt and status bar).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
from stepgym.envs.adapters import ADAPTERS, check_known, dependency_error
from stepgym.envs.base import TextEnv, parse_tagged_action

__all__ = ["DEFAULT_SETTINGS", "TEST_SEED_OFFSET", "TextWorldEnv", "game_settings"]

_STATUS_LINE = re.compile(r"\n>\s*(-= .* =-\S*)?\s*$")
_BLANK_LINES = re.compile(r"\n{3,}")

TEST_SEED_OFFSET = 1_000_000
"""Test task ``k`` uses seed ``TEST_SEED_OFFSET + k`` (train task ``k`` uses ``k``)."""

DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    # the settings tw-make requires, at their easiest (the others take the challenge's argparse defaults)
    "coin_collector": {"level": 1},
    "treasure_hunter": {"level": 1},
    "simple": {"rewards": "dense", "goal": "detailed"},
    "cooking": {"recipe": 1},
}
"""Per game: the settings used where the caller gives none."""


def _import_textworld() -> Any:
    try:
        import textworld
        import textworld.challenges
    except ImportError as e:
        raise dependency_error("textworld", e) from e
    return textworld


def game_settings(game: str, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Complete and check a challenge's settings with the challenge's own ``tw-make`` arguments.

    Args:
        game: A TextWorld game name (``"coin_collector"``).
        settings: Option names as ``tw-make`` destinations (``"level"``, ``"recipe_seed"``); missing ones
            take :data:`DEFAULT_SETTINGS`, then the challenge's defaults.

    Raises:
        ValueError: An unknown option (with a did-you-mean), a missing required one, or a value outside
            the option's choices.
    """
    check_known("TextWorld game", game, ADAPTERS["textworld"].names)
    textworld = _import_textworld()
    _, _, add_arguments = textworld.challenges.CHALLENGES[f"tw-{game}"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions = {a.dest: a for a in parser._actions if a.dest != "help"}
    given = {**DEFAULT_SETTINGS[game], **(settings or {})}
    for key in given:
        check_known(f"tw-{game} setting", key, actions)
    out = {}
    for dest, action in actions.items():
        if dest not in given and action.required:
            raise ValueError(f"tw-{game} needs the setting {dest!r} ({action.help})")
        value = given.get(dest, action.default)
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"tw-{game} setting {dest}={value!r} must be one of {list(action.choices)}")
        out[dest] = value
    return out


class TextWorldEnv(TextEnv):
    """One TextWorld game generator as a stepgym text env (one generated game per task).

    ``reset`` info: ``game``, ``seed``, ``gamefile``, ``objective``, ``admissible_actions``,
    ``expert_plan`` (TextWorld's winning command sequence), ``max_score``, ``won``, ``score``.
    ``step`` info: ``valid_action``, ``action``, ``admissible_actions``, ``won``, ``lost``, ``score``,
    ``points``.

    Args:
        game: ``"coin_collector"``, ``"treasure_hunter"``, ``"simple"`` or ``"cooking"``.
        settings: The generator's settings (see :func:`game_settings`), e.g. ``{"level": 5}``.
        num_tasks: Games (seeds) per split.
        split: ``"train"`` or ``"test"`` (disjoint seeds).
        max_steps: Steps per episode before ``truncated``.
        games_dir: Folder of compiled games (default ``~/.cache/stepgym/textworld``).
        render_mode: ``"ansi"`` or ``None``.
    """

    held_out_kwargs: ClassVar[dict[str, Any]] = {"split": "test"}
    """``gym.make`` kwargs over the training ones that select held-out tasks (for evaluation)."""

    protocol: ClassVar[str] = (
        "You are playing a text adventure game. Do what the game asks. Each turn, write exactly one command "
        "inside <action></action> tags, for example <action>go north</action> or <action>take coin</action>. "
        "Admissible commands are the ones the game understands in the current state."
    )

    def __init__(
        self,
        game: str,
        settings: dict[str, Any] | None = None,
        num_tasks: int = 100,
        split: str = "train",
        max_steps: int = 50,
        games_dir: str | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        self.settings = game_settings(game, settings)
        if split not in ("train", "test"):
            raise ValueError(f"split={split!r} is not known; use 'train' or 'test'")
        if num_tasks < 1 or max_steps < 1:
            raise ValueError(f"num_tasks={num_tasks} and max_steps={max_steps} must both be >= 1")
        self.game = game
        self.split = split
        self.max_steps = int(max_steps)
        key = hashlib.sha1(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:12]
        root = Path(games_dir) if games_dir else Path.home() / ".cache" / "stepgym" / "textworld"
        self.games_dir = root / game / key
        self._ids = [f"{split}-{k}" for k in range(num_tasks)]
        self._tw_env: Any = None
        self._state: Any = None
        self._done = False

    # ----------------------------------------------------------------- TextEnv
    @property
    def task_ids(self) -> Sequence[str]:
        """``"<split>-<k>"`` for ``k < num_tasks``."""
        return self._ids

    def task_subset(self, task_id: str) -> str:
        """Every task of a generator is in one subset, named after the game."""
        return self.game

    def task_seed(self, task_id: str) -> int:
        """The generator seed of a task."""
        k = int(task_id.rsplit("-", 1)[1])
        return k if self.split == "train" else TEST_SEED_OFFSET + k

    def gamefile(self, task_id: str) -> Path:
        """The compiled game of a task, generated and compiled on first use."""
        seed = self.task_seed(task_id)
        path = self.games_dir / f"{seed}.z8"
        if not path.is_file():
            self._compile(seed, path)
        return path

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        textworld = _import_textworld()
        path = self.gamefile(task_id)
        self.close()
        infos = textworld.EnvInfos(
            admissible_commands=True, won=True, lost=True, score=True, max_score=True, policy_commands=True,
            objective=True,
        )  # fmt: skip
        self._tw_env = textworld.start(str(path), request_infos=infos)
        state = self._state = self._tw_env.reset()
        self._done = False
        info = {
            "game": self.game,
            "seed": self.task_seed(task_id),
            "gamefile": str(path),
            "objective": str(state["objective"] or ""),
            "admissible_actions": list(state["admissible_commands"]),
            "expert_plan": list(state["policy_commands"]),
            "max_score": float(state["max_score"]),
            "won": False,
            "score": 0.0,
        }
        return _clean(state.feedback), info

    def _step(self, action_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._state is None or self._done:
            raise gym.error.ResetNeeded("the TextWorld game is over; call reset()")
        parsed = parse_tagged_action(action_text, ("action",))
        admissible = list(self._state["admissible_commands"])
        truncated = self._num_steps + 1 >= self.max_steps
        if not parsed.valid:
            obs = f"Invalid action: {parsed.error}. Write exactly one <action>command</action>."
            info = {"valid_action": False, "action": None, "admissible_actions": admissible}
            return obs, 0.0, False, truncated, {**info, **self._outcome(self._state)}
        command = str(parsed.content)
        before = float(self._state["score"])
        state, _, done = self._tw_env.step(command)
        self._state = state
        self._done = bool(done)
        reward = float(state["score"]) - before
        info = {
            "valid_action": command.lower() in {c.lower() for c in admissible},
            "action": command,
            "admissible_actions": list(state["admissible_commands"]),
            **self._outcome(state),
        }
        return _clean(state.feedback), reward, self._done, truncated and not self._done, info

    def close(self) -> None:
        """Stop the game interpreter (a later reset starts a new one)."""
        if self._tw_env is not None:
            try:
                self._tw_env.close()
            finally:
                self._tw_env = None
                self._state = None

    # ----------------------------------------------------------------- internals
    @staticmethod
    def _outcome(state: Any) -> dict[str, Any]:
        points = float(state["score"])
        top = float(state["max_score"]) or 1.0
        return {"won": bool(state["won"]), "lost": bool(state["lost"]), "points": points, "score": points / top}

    def _compile(self, seed: int, path: Path) -> None:
        """Generate the game of ``seed`` and compile it to ``path`` (and its ``.json``), atomically."""
        textworld = _import_textworld()
        _, make, _ = textworld.challenges.CHALLENGES[f"tw-{self.game}"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".tmp-") as tmp:
            options = textworld.GameOptions()
            options.seeds = seed
            options.path = str(Path(tmp) / f"{seed}.z8")
            options.file_ext = ".z8"
            options.force_recompile = True
            game = make(dict(self.settings), options)
            built = Path(textworld.generator.compile_game(game, options))
            # the .json (the game's description, which admissible commands come from) first, then the .z8,
            # so a game file that exists always has its .json
            os.replace(built.with_suffix(".json"), path.with_suffix(".json"))
            os.replace(built, path)


def _clean(feedback: str) -> str:
    """TextWorld's feedback without decoration: the ASCII-art title and the trailing prompt and status bar.

    A compiled game opens with a ~1,300-character "TextWorld" title drawn in underscores, bars, dollars and
    spaces, and ends each output with ``>``, ~130 spaces and the status bar (``-= Sauna =-0/2``: room,
    score/moves); neither says anything the text lacks, and together they cost hundreds of prompt tokens.
    """
    lines = _STATUS_LINE.sub("", str(feedback)).split("\n")
    while lines and not any(c.isalnum() for c in lines[0]):  # title art: no letters or digits
        lines.pop(0)
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
