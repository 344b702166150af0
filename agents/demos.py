"""Demonstrators: which scripted agent makes an env's SFT demonstrations, and which of its episodes to keep.

The recipe (:mod:`stepgym.trainers.recipe`) warm-starts a model by SFT on episodes a scripted
:class:`~stepgym.agents.scripted.TextAgent` plays through the same rollout code as RL
(:func:`stepgym.trainers.sft.collect_demonstrations`), so it never needs to know the env: it looks the
env id up here. A :class:`Demonstrator` is two functions:

* ``make_agent(episode_key) -> TextAgent`` -- a fresh agent per episode (``TextAgentPolicy`` calls it);
* ``keep(trajectory) -> bool`` -- the filter applied to each finished episode. A demonstration that
  wins for the wrong reason teaches the wrong thing: Search-QA's oracle answers the gold even when
  the passages it retrieved do not contain it, which would teach the model to guess, so only
  episodes whose answer is *supported by the retrieved text* are kept.

Register one for your own env with :func:`register_demonstrator` (ALFWorld's walkthrough expert is
registered by :mod:`stepgym.agents.alfworld_agents`' author the same way)::

    register_demonstrator("my/Env-v0", Demonstrator(make_agent=lambda key: MyExpert(), keep=lambda t: t.success))

Demonstrations come from the training split only: the recipe makes them with the training
``env_kwargs``; nothing here chooses a split.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stepgym.agents.alfworld_agents import WalkthroughAgent, won_cleanly
from stepgym.envs.records import Trajectory
from stepgym.envs.searchqa.metrics import normalize_answer

__all__ = [
    "DEMONSTRATORS",
    "Demonstrator",
    "SupportedAnswerAgent",
    "get_demonstrator",
    "register_demonstrator",
    "searchqa_supported",
]


@dataclass(frozen=True)
class Demonstrator:
    """How to make demonstrations for one env id."""

    make_agent: Callable[[Any], Any]
    """A fresh :class:`~stepgym.agents.scripted.TextAgent` per episode (called with the episode key)."""
    keep: Callable[[Trajectory], bool]
    """Whether a finished demonstration episode is trained on."""
    description: str = ""
    """One line for the run log: what the agent does and what is kept."""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra ``gym.make`` kwargs the agent needs (e.g. to expose an expert plan in ``info``), over the training ones."""


DEMONSTRATORS: dict[str, Demonstrator] = {}
"""``env id -> Demonstrator``; fill it with :func:`register_demonstrator`."""


def register_demonstrator(env_id: str, demonstrator: Demonstrator, *, overwrite: bool = False) -> Demonstrator:
    """Make ``demonstrator`` the one the recipe uses for ``env_id`` (a registered Gymnasium id).

    Raises:
        ValueError: ``env_id`` already has one and ``overwrite`` is False.
    """
    if env_id in DEMONSTRATORS and not overwrite:
        raise ValueError(f"{env_id!r} already has a demonstrator; pass overwrite=True to replace it")
    DEMONSTRATORS[env_id] = demonstrator
    return demonstrator


def get_demonstrator(env_id: str) -> Demonstrator:
    """The demonstrator of ``env_id``.

    Raises:
        KeyError: None is registered (did-you-mean over the registered ids; the fix is to register one).
    """
    if env_id not in DEMONSTRATORS:
        close = difflib.get_close_matches(env_id, list(DEMONSTRATORS), n=2, cutoff=0.8)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise KeyError(
            f"no demonstrator for env {env_id!r}; {hint}registered: {sorted(DEMONSTRATORS) or 'none'}. "
            "The SFT warm start needs one: register_demonstrator(env_id, Demonstrator(make_agent, keep)) "
            "from stepgym.agents.demos, or run without the SFT stage (--no-sft.enabled)"
        )
    return DEMONSTRATORS[env_id]


# =========================================================================== Search-QA
class SupportedAnswerAgent:
    """Search-QA demonstrator: searches the question, then answers the gold alias the passages contain.

    Of the golden answers it picks the first whose normalised text (SQuAD normalisation, the one EM
    uses) occurs in the normalised observation; when none does it answers ``golden_answers[0]``
    (such an episode is dropped by :func:`searchqa_supported`). The text is only the tags -- no
    filler sentence -- so the warm-started model spends its few tokens per turn on the action.
    """

    def reset(self, observation: str, info: dict[str, Any]) -> None:
        """Remember the question and its golden answers."""
        self.question = str(info["question"]).strip()
        self.golden = [str(g) for g in info["golden_answers"]]
        self.searched = False

    def act(self, observation: str, info: dict[str, Any]) -> str:
        """``<search>question</search>`` first, then ``<answer>alias</answer>``."""
        if not self.searched:
            self.searched = True
            return f"<search>{self.question}</search>"
        seen = normalize_answer(observation)
        found = [g for g in self.golden if normalize_answer(g) and f" {normalize_answer(g)} " in f" {seen} "]
        return f"<answer>{(found or self.golden)[0]}</answer>"


def searchqa_supported(traj: Trajectory) -> bool:
    """Keep a Search-QA episode that answered correctly with an answer the retrieved passages contain.

    "Contains" is on whole normalised words: the normalised answer, padded with spaces, occurs in a
    normalised ``<information>`` observation the agent saw before answering.
    """
    if not traj.success or not traj.steps or traj.steps[-1].action is None:
        return False
    answer = normalize_answer(traj.steps[-1].action)
    if not answer:
        return False
    seen = [normalize_answer(s.observation) for s in traj.steps if "<information>" in s.observation]
    return any(f" {answer} " in f" {text} " for text in seen)


register_demonstrator(
    "stepgym/SearchQA-v0",
    Demonstrator(
        make_agent=lambda key: SupportedAnswerAgent(),
        keep=searchqa_supported,
        description="search the question, answer the gold alias found in the passages; keep only answers the "
        "retrieved passages contain",
    ),
)


# =========================================================================== ALFWorld (agents/alfworld_agents.py)
register_demonstrator(
    "stepgym/ALFWorld-v0",
    Demonstrator(
        make_agent=lambda key: WalkthroughAgent(),
        keep=won_cleanly,
        description="play the game file's walkthrough (ALFWorld's expert plan); keep won episodes whose every "
        "command was valid",
    ),
)
