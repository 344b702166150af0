"""``reasoning_gym/<dataset>``: reasoning-gym's procedural tasks as multi-turn envs with verifier feedback.

A reasoning-gym task is single-turn: a question, a gold answer and the dataset's verifier
(``dataset.score_answer``, a score in [0, 1]). The adapter turns it into an episode of up to
``max_attempts`` answers: each turn the agent writes ``<answer>...</answer>``; the verifier scores it, and
the next observation is the verdict (correct, or wrong with its score and the attempts left).

**Reward per attempt.** Attempt ``t`` with verifier score ``s_t`` earns the improvement over the best
earlier score, ``r_t = max(0, s_t - max(s_1..s_{t-1}))`` (``max`` of nothing is 0), so an episode's return
is the best score it reached -- exactly the single-turn score when the first answer is right -- and a
partial score is never paid twice. A text without a single non-empty ``<answer>`` tag is an invalid
attempt: it scores 0 and uses up a turn. The episode ends (``terminated``) at the first answer scoring 1
and is ``truncated`` after ``max_attempts`` attempts. ``info["score"]`` is the best score so far (the
rollout's outcome) and ``info["won"]`` whether it is 1.

Tasks are entries: task ``"<k>"`` is entry ``k`` of ``create_dataset(dataset, seed=dataset_seed,
size=num_tasks, **config)``. reasoning-gym draws entry ``k`` from ``Random(seed + k)``, so seeds 0 and 1
share all but one entry: held-out tasks use ``dataset_seed=1_000_000`` (disjoint from seed 0 while
``num_tasks`` stays below a million).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
from stepgym.envs.adapters import ADAPTERS, check_known, dependency_error
from stepgym.envs.base import TextEnv, parse_tagged_action

__all__ = ["ReasoningGymEnv"]


class ReasoningGymEnv(TextEnv):
    """One reasoning-gym dataset as a stepgym text env (answers in ``<answer>`` tags, retries with feedback).

    ``reset`` info: ``dataset``, ``gold_answer`` (for hindsight and oracles; never shown to the agent),
    ``won``, ``score``. ``step`` info: ``valid_action``, ``action`` (the answer or ``None``),
    ``attempt_score`` (this attempt's verifier score), ``score`` (best so far), ``won``.

    Args:
        dataset: A reasoning-gym dataset name (``"leg_counting"``); names are listed in
            :data:`stepgym.envs.adapters.catalog.REASONING_GYM_DATASETS`.
        num_tasks: Entries generated (task ids ``"0"`` .. ``str(num_tasks - 1)``).
        dataset_seed: The dataset's generator seed (entry ``k`` uses ``dataset_seed + k``).
        max_attempts: Answers allowed per episode (1 keeps the task single-turn).
        config: Dataset options (the fields of its ``<Name>Config``, e.g. ``{"min_animals": 2}``).
        render_mode: ``"ansi"`` or ``None``.
    """

    held_out_kwargs: ClassVar[dict[str, Any]] = {"dataset_seed": 1_000_000}
    """``gym.make`` kwargs over the training ones that select held-out tasks (for evaluation)."""

    protocol: ClassVar[str] = (
        "Solve the problem. Think it through if you need to, then write your final answer inside "
        "<answer></answer> tags, e.g. <answer>42</answer>, in the format the problem asks for. If the answer "
        "is wrong you are told so and may try again."
    )

    def __init__(
        self,
        dataset: str,
        num_tasks: int = 1000,
        dataset_seed: int = 0,
        max_attempts: int = 3,
        config: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        check_known("reasoning-gym dataset", dataset, ADAPTERS["reasoning_gym"].names)
        if num_tasks < 1 or max_attempts < 1:
            raise ValueError(f"num_tasks={num_tasks} and max_attempts={max_attempts} must both be >= 1")
        try:
            import reasoning_gym
        except ImportError as e:
            raise dependency_error("reasoning_gym", e) from e
        try:
            self._dataset = reasoning_gym.create_dataset(dataset, seed=dataset_seed, size=num_tasks, **(config or {}))
        except TypeError as e:  # an unknown config field
            raise ValueError(f"reasoning_gym/{dataset}: bad config {config!r} ({e})") from e
        self.dataset = dataset
        self.max_attempts = int(max_attempts)
        self._ids = [str(k) for k in range(num_tasks)]
        self._entry: dict[str, Any] | None = None
        self._best = 0.0
        self._attempts = 0

    # ----------------------------------------------------------------- TextEnv
    @property
    def task_ids(self) -> Sequence[str]:
        """``"0"`` .. ``str(num_tasks - 1)``."""
        return self._ids

    def task_subset(self, task_id: str) -> str:
        """Every task of a dataset is in one subset, named after the dataset."""
        return self.dataset

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        self._entry = self._dataset[int(task_id)]
        self._best = 0.0
        self._attempts = 0
        info = {"dataset": self.dataset, "gold_answer": str(self._entry["answer"]), "won": False, "score": 0.0}
        return str(self._entry["question"]), info

    def _step(self, action_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._entry is None or self._best >= 1.0 or self._attempts >= self.max_attempts:
            raise gym.error.ResetNeeded("the episode is over; call reset()")
        self._attempts += 1
        left = self.max_attempts - self._attempts
        parsed = parse_tagged_action(action_text, ("answer",))
        score = 0.0
        if parsed.valid:
            score = float(self._dataset.score_answer(answer=parsed.content, entry=self._entry))
        reward = max(0.0, score - self._best)
        self._best = max(self._best, score)
        won = self._best >= 1.0
        if not parsed.valid:
            obs = f"Invalid answer: {parsed.error}. Write your final answer inside <answer></answer>."
        elif score >= 1.0:
            obs = "Correct."
        else:
            obs = f"Wrong answer (verifier score {score:.2f})."
        if not won:
            obs += f" {left} attempt{'s' if left != 1 else ''} left." if left else " No attempts left."
        info = {
            "valid_action": parsed.valid,
            "action": parsed.content if parsed.valid else None,
            "attempt_score": score,
            "score": self._best,
            "won": won,
        }
        return obs, reward, won, not won and left == 0, info
