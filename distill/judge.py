"""Step judges for TRIAGE: a role label for every env-facing step of a trajectory.

TRIAGE (arXiv 2606.32017; ALGORITHMS.md §10, [recon] from the abstract) has a judge label each
segment ``progress`` / ``exploration`` / ``infrastructure`` / ``regression``. A judge here is any
``judge(trajectories) -> roles`` with one tuple of labels per trajectory, one label per step
(:data:`JudgeFn`). Built-ins:

* :func:`oracle_judge` -- labels from env-provided signals (no model): the credit sandbox's
  ``decisive``/``commitment`` flags, invalid actions, and the sign of the step reward;
* :func:`llm_judge` -- a prompt per step (:func:`judge_prompt`) answered by any text generator
  (``generate(prompts) -> texts``; the runner wires the policy's own backend), parsed by
  :func:`parse_role`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from stepgym.envs.records import StepRecord, Trajectory

__all__ = [
    "JUDGES",
    "ROLES",
    "JudgeFn",
    "judge_prompt",
    "llm_judge",
    "oracle_judge",
    "oracle_role",
    "parse_role",
]

ROLES: tuple[str, ...] = ("progress", "exploration", "infrastructure", "regression")
"""The four TRIAGE segment roles."""

JudgeFn = Callable[[Sequence[Trajectory]], list[tuple[str, ...]]]
"""``(trajectories) -> per trajectory, one role (from :data:`ROLES`) per step``."""


def oracle_role(step: StepRecord) -> str:
    """The role of one step from what the env reported [recon: the mapping is ours].

    ``regression``: a wrong commitment (sandbox ``info["commitment"] == "wrong"``) or a negative step
    reward; ``progress``: a right commitment or a positive step reward; ``infrastructure``: an action
    the env rejected (``valid`` False: nothing happened in the world); ``exploration``: the rest.
    """
    commitment = step.info.get("commitment")
    if commitment == "wrong" or step.reward < 0:
        return "regression"
    if commitment == "right" or step.reward > 0:
        return "progress"
    if not step.valid:
        return "infrastructure"
    return "exploration"


def oracle_judge(trajectories: Sequence[Trajectory]) -> list[tuple[str, ...]]:
    """:func:`oracle_role` of every step of every trajectory."""
    return [tuple(oracle_role(s) for s in t.steps) for t in trajectories]


JUDGE_TEMPLATE = (
    "You judge one step of an agent acting in a text environment.\n"
    "Task: {task}\n"
    "Observation before the step: {observation}\n"
    "Action: {action}\n"
    "Outcome of the whole episode: {outcome}\n"
    "Label the step with exactly one word: progress (it moves the task forward), exploration (it gathers "
    "information), infrastructure (it does nothing in the world, e.g. an invalid or formatting action), "
    "or regression (it makes the task harder or impossible).\n"
    "Label:"
)
"""The LLM judge's prompt; fields ``task``, ``observation``, ``action``, ``outcome``."""


def judge_prompt(traj: Trajectory, k: int, *, template: str = JUDGE_TEMPLATE) -> str:
    """The judge prompt for step ``k`` of ``traj`` (the task is the first observation)."""
    step = traj.steps[k]
    return template.format(
        task=traj.steps[0].observation if traj.steps else "",
        observation=step.observation,
        action=step.action_text,
        outcome="success" if traj.success else "failure",
    )


_ROLE_RE = re.compile(r"\b(" + "|".join(ROLES) + r")\b", re.IGNORECASE)


def parse_role(text: str, *, default: str = "infrastructure") -> str:
    """The first role word in ``text`` (case-insensitive), else ``default`` (a judge that said nothing usable)."""
    m = _ROLE_RE.search(text)
    return m.group(1).lower() if m else default


def llm_judge(
    generate: Callable[[list[str]], list[str]], *, template: str = JUDGE_TEMPLATE, default: str = "infrastructure"
) -> JudgeFn:
    """A judge asking a text generator about every step, one batched call per batch of trajectories.

    Args:
        generate: ``prompts -> completions`` in order (any backend: the HF or vLLM policy, an
            OpenAI-compatible server).
        template: The prompt (:data:`JUDGE_TEMPLATE` fields).
        default: The role of a step whose answer names no role (``infrastructure``: no credit change).
    """
    if default not in ROLES:
        raise ValueError(f"default role must be one of {ROLES}, got {default!r}")

    def judge(trajectories: Sequence[Trajectory]) -> list[tuple[str, ...]]:
        prompts = [judge_prompt(t, k, template=template) for t in trajectories for k in range(len(t.steps))]
        answers = generate(prompts) if prompts else []
        if len(answers) != len(prompts):
            raise RuntimeError(f"the judge's generator returned {len(answers)} answers for {len(prompts)} prompts")
        it = iter(answers)
        return [tuple(parse_role(next(it), default=default) for _ in t.steps) for t in trajectories]

    return judge


JUDGES: dict[str, str] = {
    "oracle": "env-provided signals (oracle_judge)",
    "llm": "the policy answering judge_prompt for every step (llm_judge)",
}
"""Judge names accepted by ``TrainConfig.judge``."""
