"""``stepgym/ALFWorld-v0``: ALFWorld's text household games, one game file per episode.

The env drives single ``game.tw-pddl`` files through TextWorld's PDDL backend with ALFWorld's own
wrappers (``AlfredDemangler`` names objects "desk 1", "alarmclock 2"; ``AlfredInfos`` adds the
game file), the same stack ``alfworld.agents.environment.AlfredTWEnv`` registers for its batch
env, but without that env's random game sampling: ``reset(seed=...)`` picks a game through the
seeded ``np_random`` of :class:`~stepgym.envs.base.TextEnv` and ``options={"task_id": ...}`` picks
one game. A game file stays loaded between episodes of the same game (a reload costs ~0.5-1 s).

Data layout (``<data>/alfworld``, as ``alfworld-download`` writes it)::

    json_2.1.1/<split folder>/<task type>-<params>/<trial>/game.tw-pddl

with split folders ``valid_train`` (split ``"train"``), ``valid_seen`` and ``valid_unseen``.
Task ids are the trial paths relative to ``json_2.1.1``
(``"valid_unseen/pick_and_place_simple-.../trial_T2019..."``); subsets are the six task types.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
from stepgym.envs.base import TextEnv, parse_tagged_action
from stepgym.envs.data import MalformedDataError, resolve_data_dir

__all__ = ["SPLITS", "SUBSETS", "TASK_TYPE_OF_FOLDER", "ALFWorldEnv", "list_games"]

logger = logging.getLogger(__name__)

SPLITS: dict[str, str] = {"train": "valid_train", "valid_seen": "valid_seen", "valid_unseen": "valid_unseen"}
"""Split name -> folder under ``json_2.1.1``."""

TASK_TYPE_OF_FOLDER: dict[str, str] = {
    # ALFWorld's TASK_TYPES (alfworld/agents/environment/alfred_tw_env.py) -> stepgym subset name
    "pick_and_place_simple": "pick",
    "look_at_obj_in_light": "look",
    "pick_clean_then_place_in_recep": "clean",
    "pick_heat_then_place_in_recep": "heat",
    "pick_cool_then_place_in_recep": "cool",
    "pick_two_obj_and_place": "pick_two",
}
"""Task-folder prefix (ALFRED ``task_type``) -> subset name."""

SUBSETS: tuple[str, ...] = ("pick", "look", "clean", "heat", "cool", "pick_two")
"""The six task types, in ALFWorld's order (task types 1-6)."""

GAME_FILE = "game.tw-pddl"
_GAME_KEYS = ("pddl_domain", "grammar", "pddl_problem")
_GOAL_RE = re.compile(r"Your task is to:\s*(.*?)\s*$", re.DOTALL)
_LAYOUT = (
    "expected layout: <data>/alfworld/json_2.1.1/{valid_train,valid_seen,valid_unseen}/"
    "<task type>-<params>/<trial>/game.tw-pddl (get it with `alfworld-download`, or see the data README)"
)


def _dependency_error(e: BaseException) -> gym.error.DependencyNotInstalled:
    return gym.error.DependencyNotInstalled(
        f"stepgym/ALFWorld-v0 needs the alfworld engine (textworld with its PDDL backend): "
        f"pip install 'stepgym[alfworld]' ({type(e).__name__}: {e})"
    )


def _subset_of(task_id: str) -> str:
    folder = task_id.split("/")[1]
    return TASK_TYPE_OF_FOLDER[folder.split("-", 1)[0]]


def list_games(
    data_root: str | Path, split: str, subsets: Sequence[str] | None = None, *, skip_bad_games: bool = False
) -> list[str]:
    """List the task ids of one split, sorted, optionally only some task types.

    Args:
        data_root: The ``alfworld`` data folder (holding ``json_2.1.1``).
        split: ``"train"``, ``"valid_seen"`` or ``"valid_unseen"``.
        subsets: Task types to keep (names from :data:`SUBSETS`); ``None`` keeps all six.
        skip_bad_games: Check every game file (valid JSON with a PDDL domain, grammar and problem)
            and leave out broken ones with a warning, instead of failing on them.

    Returns:
        Task ids (trial paths relative to ``json_2.1.1``).

    Raises:
        MalformedDataError: The split folder is missing or empty, or (without ``skip_bad_games``)
            a trial folder has no game file or an unknown task type.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown ALFWorld split {split!r}; use one of {sorted(SPLITS)}")
    keep = set(SUBSETS if subsets is None else subsets)
    if not keep <= set(SUBSETS):
        raise ValueError(f"unknown ALFWorld subsets {sorted(keep - set(SUBSETS))}; use names from {list(SUBSETS)}")
    base = Path(data_root) / "json_2.1.1"
    split_dir = base / SPLITS[split]
    if not split_dir.is_dir():
        raise MalformedDataError(f"ALFWorld split {split!r}: {split_dir} does not exist; {_LAYOUT}")
    ids = []
    for task_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        prefix = task_dir.name.split("-", 1)[0]
        if prefix not in TASK_TYPE_OF_FOLDER:
            msg = f"{task_dir}: unknown ALFWorld task type {prefix!r} (known: {sorted(TASK_TYPE_OF_FOLDER)}); {_LAYOUT}"
            if skip_bad_games:
                warnings.warn(f"skipping {msg}", stacklevel=2)
                continue
            raise MalformedDataError(msg)
        if TASK_TYPE_OF_FOLDER[prefix] not in keep:
            continue
        for trial in sorted(p for p in task_dir.iterdir() if p.is_dir()):
            game = trial / GAME_FILE
            problem = None if game.is_file() else f"{game} is missing"
            if problem is None and skip_bad_games:
                problem = _check_game_file(game)
            if problem is not None:
                if skip_bad_games:
                    warnings.warn(f"skipping ALFWorld game: {problem}", stacklevel=2)
                    continue
                raise MalformedDataError(f"{problem}; {_LAYOUT}")
            ids.append(f"{SPLITS[split]}/{task_dir.name}/{trial.name}")
    if not ids and subsets is None:
        raise MalformedDataError(f"ALFWorld split {split!r}: no games under {split_dir}; {_LAYOUT}")
    return ids


def _check_game_file(path: Path) -> str | None:
    """Why ``path`` is not a usable game file, or ``None`` when it looks fine."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{path} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(data, dict) or any(k not in data for k in _GAME_KEYS):
        return f"{path} is not an ALFWorld game file (needs the keys {list(_GAME_KEYS)})"
    return None


class ALFWorldEnv(TextEnv):
    """ALFWorld household tasks as a text env: one ``<action>command</action>`` per step.

    Observations are ALFWorld's own text: the first one is the welcome banner, the room
    description and ``Your task is to: ...``; later ones are the engine's feedback. A step whose
    text has no single ``<action>`` tag, or whose command is not admissible, is an invalid step:
    the game does not move, the observation says what was wrong, ``info["valid_action"]`` is
    ``False`` and the reward is ``-invalid_penalty``. Winning gives ``success_reward`` and ends the
    episode (``terminated``); step ``max_steps`` ends it with ``truncated``.

    ``reset`` info: ``task_type`` (subset name), ``gamefile``, ``goal``, ``admissible_actions``,
    ``expert_plan`` (the game file's walkthrough), ``won``. ``step`` info: ``valid_action``,
    ``action`` (the command or ``None``), ``admissible_actions``, ``won``.

    Args:
        split: ``"train"`` (ALFWorld's ``valid_train``, 200 games), ``"valid_seen"`` (140) or
            ``"valid_unseen"`` (134, the split papers report).
        subsets: Task types to play (from :data:`SUBSETS`); ``None`` plays all six.
        data_dir: Data folder (holding ``alfworld/``); default ``$STEPGYM_DATA`` then
            ``~/.cache/stepgym/data``.
        max_steps: Steps per episode before ``truncated`` (invalid steps count).
        success_reward: Reward for winning (1.0; verl-agent uses 10.0).
        invalid_penalty: Subtracted from the reward of an invalid step.
        skip_bad_games: Check every game file at start and skip broken ones with a warning.
        games: Only these task ids (of the split and subsets), in this order, e.g. a fixed
            training set or one game for a cheap check.
        render_mode: ``"ansi"`` or ``None``.
    """

    protocol: ClassVar[str] = (
        "You are an agent in a household, solving the task by typing text commands. At each step, "
        "first reason briefly about what to do next, then write exactly one command inside "
        "<action></action> tags, for example <action>go to desk 1</action>. The command must be one of "
        "the admissible actions of the current step, copied exactly."
    )
    subsets: ClassVar[tuple[str, ...]] = SUBSETS

    def __init__(
        self,
        split: str = "valid_unseen",
        subsets: Sequence[str] | None = None,
        data_dir: str | None = None,
        max_steps: int = 50,
        success_reward: float = 1.0,
        invalid_penalty: float = 0.1,
        skip_bad_games: bool = False,
        games: Sequence[str] | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if isinstance(subsets, str):
            subsets = [subsets]
        self.split = split
        self.max_steps = int(max_steps)
        self.success_reward = float(success_reward)
        self.invalid_penalty = float(invalid_penalty)
        self.data_root = resolve_data_dir(data_dir, "alfworld")
        self._ids = list_games(self.data_root, split, subsets, skip_bad_games=skip_bad_games)
        if games is not None:
            known = set(self._ids)
            unknown = [g for g in games if g not in known]
            if unknown:
                raise ValueError(
                    f"games {unknown[:3]} are not games of split {split!r} and subsets {subsets}; "
                    f"task ids look like {self._ids[0]!r}"
                )
            self._ids = list(dict.fromkeys(games))
        if not self._ids:
            raise ValueError(f"ALFWorld split {split!r} has no games of the task types {list(subsets or [])}")
        self._subsets = {t: _subset_of(t) for t in self._ids}
        self._tw_env: Any = None  # the wrapped TextWorld env, built on first reset
        self._loaded: str | None = None  # game file currently loaded in it
        self._state: Any = None
        self._admissible: list[str] = []
        self._won = False
        self._import_engine()  # fail early (at gym.make) when alfworld is missing

    # ----------------------------------------------------------------- TextEnv
    @property
    def task_ids(self) -> Sequence[str]:
        """The trial paths of the chosen split and subsets, sorted."""
        return self._ids

    def task_subset(self, task_id: str) -> str:
        """The task type of a game (``pick``, ``look``, ``clean``, ``heat``, ``cool``, ``pick_two``)."""
        return self._subsets[task_id]

    def gamefile(self, task_id: str) -> str:
        """The path of a game's ``game.tw-pddl`` file."""
        return str(self.data_root / "json_2.1.1" / task_id / GAME_FILE)

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        path = self.gamefile(task_id)
        env = self._engine()
        try:
            if self._loaded != path:
                self._loaded = None
                env.load(path)
                self._loaded = path
            state = env.reset()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            # json errors are ValueErrors; a game without the PDDL keys is a KeyError
            self._loaded = None
            raise MalformedDataError(
                f"{path}: cannot load this ALFWorld game file ({type(e).__name__}: {e}); re-download it, "
                f"or pass skip_bad_games=True to leave broken games out"
            ) from e
        self._state = state
        self._won = bool(state["won"])
        self._admissible = list(state["admissible_commands"])
        obs = str(state.feedback)
        goal = _GOAL_RE.search(obs)
        walkthrough = state.get("extra.walkthrough") or []
        info = {
            "task_type": self.task_subset(task_id),
            "gamefile": path,
            "goal": goal.group(1) if goal else "",
            "admissible_actions": list(self._admissible),
            "expert_plan": [str(c) for c in walkthrough],
            "won": self._won,
        }
        return obs, info

    def _step(self, action_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._state is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        parsed = parse_tagged_action(action_text, ("action",))
        command = None
        if not parsed.valid:
            obs = f"Invalid action: {parsed.error}. Write exactly one <action>command</action>."
        else:
            command = self._match_admissible(parsed.content or "")
            if command is None:
                obs = (
                    f"Invalid action: {parsed.content!r} is not an admissible action here. "
                    f"Choose one of the admissible actions."
                )
        truncated = self._num_steps + 1 >= self.max_steps
        if command is None:
            info = {"valid_action": False, "action": None, "admissible_actions": list(self._admissible)}
            info["won"] = self._won
            return obs, -self.invalid_penalty, False, truncated, info
        state, _score, _done = self._tw_env.step(command)
        self._state = state
        self._won = bool(state["won"])
        self._admissible = list(state["admissible_commands"])
        info = {"valid_action": True, "action": command, "admissible_actions": list(self._admissible), "won": self._won}
        reward = self.success_reward if self._won else 0.0
        return str(state.feedback), reward, self._won, truncated and not self._won, info

    def close(self) -> None:
        """Release the TextWorld env (a later reset builds a new one)."""
        if self._tw_env is not None:
            try:
                self._tw_env.close()
            finally:
                self._tw_env = None
                self._loaded = None
                self._state = None

    # ----------------------------------------------------------------- internals
    def _match_admissible(self, command: str) -> str | None:
        """The admissible command ``command`` names (case and spacing ignored), else ``None``."""
        if command in self._admissible:
            return command
        key = " ".join(command.split()).lower()
        for c in self._admissible:
            if c.lower() == key:
                return c
        return None

    @staticmethod
    def _import_engine() -> tuple[Any, Any, Any]:
        try:
            import textworld
            from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
            from textworld.envs.pddl import pddl as tw_pddl
        except ImportError as e:
            raise _dependency_error(e) from e
        if tw_pddl.fast_downward_missing:
            raise _dependency_error(ImportError("fast_downward (textworld[pddl]) is missing"))
        return textworld, AlfredDemangler, AlfredInfos

    def _engine(self) -> Any:
        """The TextWorld PDDL env wrapped like ALFWorld's own (built once, reloaded per game)."""
        if self._tw_env is None:
            textworld, demangler, alfred_infos = self._import_engine()
            from textworld.envs.pddl import PddlEnv

            infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile", "walkthrough"])
            env: Any = PddlEnv(infos)
            # same wrappers as AlfredTWEnv.init_env for evaluation (no name shuffling)
            for wrapper in (demangler(shuffle=False), alfred_infos):
                env = wrapper(env)
            self._tw_env = env
            self._loaded = None
        return self._tw_env
