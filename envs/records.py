"""Typed records shared by every layer: what an env did, and what the trainer sees.

All models are frozen pydantic models with ``extra="forbid"`` and no ``Any``. Serialise them only
with ``model_dump_json`` / ``model_validate_json``.

* :class:`StepRecord` -- what the environment saw and did at step ``k``.
* :class:`TokenSequence` -- parallel token arrays; every token knows its step.
* :class:`Trajectory` -- one episode: its steps, outcome and token sequences.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, JsonValue, field_validator, model_validator

__all__ = ["JsonDict", "StepRecord", "TokenSequence", "Trajectory"]

JsonDict = dict[str, JsonValue]
"""A small JSON object (``info`` dictionaries): strings, numbers, booleans, lists, dicts."""


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


class StepRecord(_Record):
    """What the environment saw and did at one agent step."""

    index: int
    """Step number ``k`` within the episode, starting at 0."""
    observation: str
    """Text the agent saw before acting at this step."""
    action_text: str
    """Raw model output for this step (reasoning and action)."""
    action: str | None
    """The command the env parsed out of ``action_text``; ``None`` if it could not be parsed."""
    valid: bool
    """Whether the env accepted the action (``info["valid_action"]``)."""
    reward: float
    """Reward returned by ``env.step`` for this step."""
    terminated: bool
    """The episode reached a terminal state at this step."""
    truncated: bool
    """The episode was cut (turn limit, error) at this step."""
    info: JsonDict = {}
    """Small JSON values from the env's ``info`` (``won``, ``score``, ...)."""

    @field_validator("index")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"index must be >= 0, got {v}")
        return v


class TokenSequence(_Record):
    """One row the trainer sees: parallel per-token arrays of equal length.

    ``loss_mask`` is 1 on model-generated (trainable) tokens; ``logprobs`` holds the rollout-time
    log-prob of generated tokens and 0 elsewhere; ``step_index`` is ``k`` for tokens generated at
    step ``k`` and -1 for prompt, observation, template and padding tokens; ``action_mask`` is 1 on
    the tokens of the action span (e.g. inside ``<action>...</action>``).
    """

    ids: list[int]
    """Token ids, exactly as the engine produced and consumed them."""
    loss_mask: list[int]
    """1 = model-generated and trainable, 0 = everything else."""
    logprobs: list[float]
    """Rollout-time log-probs of generated tokens; 0.0 elsewhere."""
    step_index: list[int]
    """Step ``k`` for tokens generated at step ``k``; -1 for all other tokens."""
    action_mask: list[int]
    """1 on the tokens of the action span of a step, 0 elsewhere."""

    @model_validator(mode="after")
    def _check(self) -> TokenSequence:
        n = len(self.ids)
        for name in ("loss_mask", "logprobs", "step_index", "action_mask"):
            m = len(getattr(self, name))
            if m != n:
                raise ValueError(f"{name} has {m} entries but ids has {n}")
        for name in ("loss_mask", "action_mask"):
            bad = [v for v in getattr(self, name) if v not in (0, 1)]
            if bad:
                raise ValueError(f"{name} must hold only 0 and 1, found {bad[0]!r}")
        for pos, (m, k) in enumerate(zip(self.loss_mask, self.step_index)):
            if m == 1 and k < 0:
                raise ValueError(
                    f"token {pos} is trainable (loss_mask=1) but has step_index {k}; "
                    "every generated token must belong to a step"
                )
        for pos, (a, k) in enumerate(zip(self.action_mask, self.step_index)):
            if a == 1 and k < 0:
                raise ValueError(f"token {pos} is in an action span but has step_index {k}")
        return self

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_generated(self) -> int:
        """Number of trainable (model-generated) tokens."""
        return sum(self.loss_mask)

    @property
    def steps(self) -> list[int]:
        """Sorted distinct step indices present in this sequence."""
        return sorted({k for k in self.step_index if k >= 0})


class Trajectory(_Record):
    """One episode of one task: its steps, outcome and token sequences."""

    env_id: str
    """Registered Gymnasium id of the env, e.g. ``stepgym/SearchQA-v0``."""
    task_id: str
    """Identifier of the task (question id, game path, ...)."""
    subset: str
    """Evaluation subset of the task (``nq``, ``heat``, ...)."""
    group_id: str
    """Shared by the G rollouts of the same task in one batch."""
    seed: int | None = None
    """Seed the env was reset with."""
    steps: list[StepRecord]
    """The agent steps, in order."""
    outcome: float
    """Final score of the episode (exact match, won, ...)."""
    success: bool
    """Whether the episode solved its task."""
    truncated: bool
    """The episode was cut before a terminal state (turn or token limit, error)."""
    sequences: list[TokenSequence] = []
    """Token sequences for the trainer (one per step, or one per trajectory)."""
    info: JsonDict = {}
    """Extra run-time facts: timings, prompt truncation, errors."""

    @model_validator(mode="after")
    def _check(self) -> Trajectory:
        for pos, step in enumerate(self.steps):
            if step.index != pos:
                raise ValueError(f"steps[{pos}] has index {step.index}; expected {pos}")
        n = len(self.steps)
        for seq in self.sequences:
            if seq.steps and seq.steps[-1] >= n:
                raise ValueError(f"a token sequence refers to step {seq.steps[-1]} but the trajectory has {n} steps")
        return self

    @property
    def num_steps(self) -> int:
        """Number of agent steps."""
        return len(self.steps)

    @property
    def total_reward(self) -> float:
        """Sum of the per-step rewards."""
        return float(sum(s.reward for s in self.steps))
