"""The base class of stepgym text environments and the shared action-parsing rules.

A :class:`TextEnv` is a ``gymnasium.Env[str, str]``: ``reset(seed=..., options={"task_id": ...})``
returns ``(observation, info)``; ``step(action_text)`` takes the *raw* model output and returns the
Gymnasium 5-tuple. The env owns its action protocol: it parses the raw text itself and reports
``info["valid_action"]`` (and ``info["action"]``, the parsed command or ``None``). Every ``info``
carries ``task_id`` and ``subset``.

Subclasses implement :meth:`TextEnv.task_ids`, :meth:`TextEnv.task_subset`,
:meth:`TextEnv._reset_task` and :meth:`TextEnv._step`.
"""

from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
from stepgym.envs.spaces import TextSpace

__all__ = ["ParsedAction", "TextEnv", "parse_tagged_action", "strip_thinking", "think_spans"]

# The one definition of a reasoning block, shared by the envs' parsers and the renderers' action spans.
_THINK_RE = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)


def strip_thinking(text: str) -> str:
    """Remove ``<think>...</think>`` blocks (an unclosed one runs to the end of the text)."""
    return _THINK_RE.sub("", text)


def think_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the ``<think>`` blocks that :func:`strip_thinking` removes."""
    return [m.span() for m in _THINK_RE.finditer(text)]


@dataclass(frozen=True)
class ParsedAction:
    """Result of parsing raw model text: the tag and content, or why it failed."""

    tag: str | None
    """Which tag held the action (``"action"``, ``"search"``, ``"answer"``); ``None`` on failure."""
    content: str | None
    """The stripped text inside the tag; ``None`` on failure."""
    error: str | None = None
    """Why the text could not be parsed; ``None`` on success."""

    @property
    def valid(self) -> bool:
        """True when exactly one non-empty action was found."""
        return self.error is None


def parse_tagged_action(text: str, tags: Sequence[str] = ("action",)) -> ParsedAction:
    """Find exactly one ``<tag>content</tag>`` among ``tags`` in raw model text.

    Reasoning before the action is allowed; ``<think>`` blocks are ignored. The text is invalid when
    it holds no complete tag, more than one action tag, or an empty one.

    Args:
        text: Raw model output.
        tags: The accepted tag names.

    Returns:
        A :class:`ParsedAction`; on failure ``error`` says what was wrong in words the model can read.
    """
    body = strip_thinking(text)
    alternatives = "|".join(re.escape(t) for t in tags)
    found = re.findall(rf"<({alternatives})>(.*?)</\1>", body, flags=re.DOTALL)
    expected = " or ".join(f"<{t}>...</{t}>" for t in tags)
    if not found:
        return ParsedAction(None, None, f"no complete {expected} found")
    if len(found) > 1:
        return ParsedAction(None, None, f"found {len(found)} actions; write exactly one {expected}")
    tag, content = found[0]
    content = content.strip()
    if not content:
        return ParsedAction(None, None, f"the <{tag}> tag is empty")
    return ParsedAction(tag, content)


class TextEnv(gym.Env[str, str]):
    """Base of stepgym's multi-turn text environments.

    Attributes:
        protocol: Instructions that tell an agent how to write actions (used in prompts).
        max_action_chars: Raw action text beyond this many characters is cut before parsing.
        subsets: The evaluation subsets in the order papers report them (optional; reports sort
            subsets by it, unknown ones last). Read from the class like ``protocol``.
        headline_metric: Column name of the env's success measure in reports (``"EM"`` for QA).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}
    protocol: ClassVar[str] = ""
    subsets: ClassVar[tuple[str, ...]] = ()
    headline_metric: ClassVar[str] = "success"
    max_action_chars: ClassVar[int] = 20_000

    def __init__(self, render_mode: str | None = None, max_text_chars: int = 1_000_000):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode={render_mode!r} is not supported; use one of {self.metadata['render_modes']} or None"
            )
        self.render_mode = render_mode
        self.observation_space = TextSpace(max_text_chars)
        self.action_space = TextSpace(max_text_chars)
        self._task_id: str | None = None
        self._last_obs: str = ""
        self._num_steps = 0

    # ----------------------------------------------------------------- to implement
    @property
    @abstractmethod
    def task_ids(self) -> Sequence[str]:
        """All task ids this env instance can be reset to, in a fixed order."""

    @abstractmethod
    def task_subset(self, task_id: str) -> str:
        """The evaluation subset a task belongs to."""

    @abstractmethod
    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        """Start the episode of ``task_id``; return the first observation and info."""

    @abstractmethod
    def _step(self, action_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Apply raw model text; must set ``info["valid_action"]`` and ``info["action"]``."""

    # ----------------------------------------------------------------- Gymnasium API
    @property
    def task_id(self) -> str | None:
        """The task of the current episode (``None`` before the first reset)."""
        return self._task_id

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        """Start an episode: ``options["task_id"]`` picks a task, else ``seed`` picks one."""
        super().reset(seed=seed)
        options = dict(options or {})
        ids = self.task_ids
        if not ids:
            raise RuntimeError(f"{type(self).__name__} has no tasks to reset to")
        task_id = options.pop("task_id", None)
        if task_id is None:
            task_id = ids[int(self.np_random.integers(len(ids)))]
        elif task_id not in self._task_index():
            raise ValueError(
                f"unknown task_id {task_id!r} for {type(self).__name__} ({len(ids)} tasks; first: {list(ids[:3])})"
            )
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; supported: ['task_id']")
        self._task_id = str(task_id)
        self._num_steps = 0
        obs, info = self._reset_task(self._task_id)
        self._last_obs = obs
        info = {**info, "task_id": self._task_id, "subset": self.task_subset(self._task_id)}
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """Apply the raw model text ``action``; returns the Gymnasium 5-tuple."""
        if self._task_id is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"action must be the model's raw text (str), got {type(action).__name__}")
        if len(action) > self.max_action_chars:
            action = action[: self.max_action_chars]
        obs, reward, terminated, truncated, info = self._step(action)
        self._num_steps += 1
        self._last_obs = obs
        info = {**info, "task_id": self._task_id, "subset": self.task_subset(self._task_id)}
        info.setdefault("valid_action", True)
        info.setdefault("action", None)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> str | None:
        """With ``render_mode="ansi"``, the last observation."""
        if self.render_mode == "ansi":
            return self._last_obs
        return None

    # ----------------------------------------------------------------- helpers
    def _task_index(self) -> dict[str, int]:
        cache = getattr(self, "_task_index_cache", None)
        if cache is None or len(cache) != len(self.task_ids):
            cache = {t: i for i, t in enumerate(self.task_ids)}
            self._task_index_cache = cache
        return cache
