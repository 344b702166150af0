"""Hindsight builders: privileged text the teacher sees and the student did not.

Each builder is a small function of a :class:`~stepgym.envs.records.Trajectory` (and its group)
returning text, or ``None`` when it has nothing to say. :func:`build_hindsight` combines them by
name (config), and :func:`render_hindsight` turns the text into token ids with the caller's
tokenizer (rescoring itself works on ids only).

Sources (ALGORITHMS.md §4.2): ``final_correctness: correct|incorrect``; for a failed trajectory in a
mixed group, the first successful trajectory of the same ``group_id`` as
``peer_correct_trajectory``; the gold answer (Search-QA: ``info["reset_info"]["golden_answers"]``)
or the expert plan (ALFWorld: ``info["reset_info"]["expert_plan"]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from stepgym.envs.records import Trajectory

__all__ = [
    "HINDSIGHT_BUILDERS",
    "DEFAULT_TEMPLATE",
    "build_hindsight",
    "build_hindsight_batch",
    "contrast_hindsight",
    "contrast_prompt",
    "llm_contrast_hindsight_batch",
    "expert_plan_hindsight",
    "gold_answer_hindsight",
    "outcome_hindsight",
    "peer_hindsight",
    "render_hindsight",
    "render_trajectory",
    "shuffled_peer_hindsight",
]

DEFAULT_TEMPLATE = "<hindsight>\n{text}\n</hindsight>\n"
"""How the hindsight text is wrapped before tokenization (``{text}`` is replaced)."""


def outcome_hindsight(traj: Trajectory, group: Sequence[Trajectory] = ()) -> str:
    """``final_correctness: correct`` or ``incorrect`` from ``traj.success``."""
    return f"final_correctness: {'correct' if traj.success else 'incorrect'}"


def render_trajectory(traj: Trajectory, *, include_observations: bool = True) -> str:
    """Render a trajectory as its steps: ``step k`` / ``observation:`` / ``action:`` lines."""
    lines = []
    for s in traj.steps:
        lines.append(f"step {s.index + 1}:")
        if include_observations:
            lines.append(f"observation: {s.observation}")
        lines.append(f"action: {s.action_text}")
    return "\n".join(lines)


def peer_hindsight(
    traj: Trajectory, group: Sequence[Trajectory] = (), *, include_observations: bool = True
) -> str | None:
    """The first successful trajectory of the same group, for a failed trajectory.

    Returns ``None`` for a successful trajectory or when no sibling succeeded (the group is not
    mixed). Siblings are the members of ``group`` with ``traj.group_id``, in order.
    """
    if traj.success:
        return None
    for other in group:
        if other.group_id == traj.group_id and other.success and other is not traj:
            body = render_trajectory(other, include_observations=include_observations)
            return f"peer_correct_trajectory:\n{body}"
    return None


def shuffled_peer_hindsight(
    traj: Trajectory, group: Sequence[Trajectory] = (), *, include_observations: bool = True
) -> str | None:
    """A negative control for :func:`peer_hindsight`: a successful trajectory of *another* task group.

    Same header, form and length distribution as the real peer, but it shows how a different task was
    solved, so it carries no information about this trajectory's decisive step (issue 17). For a failed
    trajectory: the first successful member of ``group`` with another ``group_id`` (``None`` when there
    is none, or for a successful trajectory, exactly where the real peer is ``None`` too).
    """
    if traj.success:
        return None
    for other in group:
        if other.group_id != traj.group_id and other.success:
            body = render_trajectory(other, include_observations=include_observations)
            return f"peer_correct_trajectory:\n{body}"
    return None


def _reset_info(traj: Trajectory) -> dict[str, Any]:
    ri = traj.info.get("reset_info")
    return ri if isinstance(ri, dict) else {}


def gold_answer_hindsight(traj: Trajectory, group: Sequence[Trajectory] = ()) -> str | None:
    """``gold_answer: a | b`` from ``traj.info["reset_info"]["golden_answers"]`` (Search-QA)."""
    gold = _reset_info(traj).get("golden_answers")
    if gold is None or gold == [] or gold == "":
        return None
    answers = [gold] if isinstance(gold, str) else [str(g) for g in gold]  # type: ignore[union-attr]
    return "gold_answer: " + " | ".join(answers)


def expert_plan_hindsight(traj: Trajectory, group: Sequence[Trajectory] = ()) -> str | None:
    """``expert_plan:`` and one command a line from ``traj.info["reset_info"]["expert_plan"]`` (ALFWorld)."""
    plan = _reset_info(traj).get("expert_plan")
    if not plan:
        return None
    cmds = [plan] if isinstance(plan, str) else [str(c) for c in plan]  # type: ignore[union-attr]
    return "expert_plan:\n" + "\n".join(f"{i + 1}. {c}" for i, c in enumerate(cmds))


def _contrast_pair(traj: Trajectory, group: Sequence[Trajectory]) -> tuple[Trajectory, Trajectory] | None:
    """The first successful and the first failed member of ``traj``'s group, or ``None`` if it is not mixed."""
    members = [t for t in group if t.group_id == traj.group_id] or [traj]
    ok = next((t for t in members if t.success), None)
    bad = next((t for t in members if not t.success), None)
    return None if ok is None or bad is None else (ok, bad)


def contrast_hindsight(traj: Trajectory, group: Sequence[Trajectory] = ()) -> str | None:
    """SGCD's sibling contrast, as a template (arXiv 2606.12634; the cheap option of ALGORITHMS.md §10) [recon].

    For a mixed group (some siblings succeeded, some failed): the actions of its first successful
    and first failed member, and the first step where they differ. The same text for every member
    of the group; ``None`` when the group is not mixed.
    """
    pair = _contrast_pair(traj, group)
    if pair is None:
        return None
    ok, bad = pair
    a_ok, a_bad = [s.action_text for s in ok.steps], [s.action_text for s in bad.steps]
    k = next((i for i, (x, y) in enumerate(zip(a_ok, a_bad)) if x != y), min(len(a_ok), len(a_bad)))
    lines = [
        "sibling_contrast:",
        "successful sibling actions: " + " | ".join(a_ok),
        "failed sibling actions: " + " | ".join(a_bad),
    ]
    if k < max(len(a_ok), len(a_bad)):
        got = a_bad[k] if k < len(a_bad) else "(stopped)"
        want = a_ok[k] if k < len(a_ok) else "(stopped)"
        lines.append(f"first difference at step {k + 1}: the successful sibling did {want}, the failed one {got}")
    return "\n".join(lines)


CONTRAST_PROMPT = (
    "Two attempts at the same task: one succeeded, one failed.\n"
    "Successful attempt:\n{success}\n\nFailed attempt:\n{failure}\n\n"
    "In two or three sentences, say which decision made the difference and what the failed attempt should have done."
)
"""The prompt asking a model to write SGCD's contrast; fields ``success`` and ``failure`` (rendered trajectories)."""


def contrast_prompt(success: Trajectory, failure: Trajectory, *, template: str = CONTRAST_PROMPT) -> str:
    """The prompt for an LLM-written contrast of a successful and a failed sibling."""
    return template.format(success=render_trajectory(success), failure=render_trajectory(failure))


def llm_contrast_hindsight_batch(
    trajs: Sequence[Trajectory], write: Callable[[list[str]], list[str]], *, template: str = CONTRAST_PROMPT
) -> list[str | None]:
    """SGCD's contrast written by a model (the policy itself, or any generator) [recon].

    One prompt per mixed group (:func:`contrast_prompt` of its first successful and first failed
    member), one batched ``write(prompts) -> texts`` call; every member of the group gets
    ``sibling_contrast:`` and the text, other trajectories ``None``.
    """
    prompts: list[str] = []
    slot: dict[str, int] = {}
    for t in trajs:
        pair = _contrast_pair(t, trajs)
        if pair is not None and t.group_id not in slot:
            slot[t.group_id] = len(prompts)
            prompts.append(contrast_prompt(*pair, template=template))
    texts = write(prompts) if prompts else []
    if len(texts) != len(prompts):
        raise RuntimeError(f"the contrast writer returned {len(texts)} texts for {len(prompts)} prompts")
    return [f"sibling_contrast:\n{texts[slot[t.group_id]].strip()}" if t.group_id in slot else None for t in trajs]


HINDSIGHT_BUILDERS: dict[str, Callable[..., str | None]] = {
    "outcome": outcome_hindsight,
    "peer": peer_hindsight,
    "shuffled_peer": shuffled_peer_hindsight,
    "gold": gold_answer_hindsight,
    "expert_plan": expert_plan_hindsight,
    "contrast": contrast_hindsight,
}
"""Builders by config name; each is ``fn(traj, group) -> str | None``."""


def build_hindsight(
    traj: Trajectory, group: Sequence[Trajectory] = (), parts: Sequence[str] = ("outcome", "peer")
) -> str | None:
    """Join the named builders' texts with newlines (``None`` if none has content).

    Args:
        traj: The trajectory the teacher rescores.
        group: All trajectories of the batch (siblings are found by ``group_id``).
        parts: Builder names from :data:`HINDSIGHT_BUILDERS`, in output order. The StepOPSD default
            is ``("outcome", "peer")``.
    """
    texts = []
    for name in parts:
        if name not in HINDSIGHT_BUILDERS:
            raise KeyError(f"unknown hindsight part {name!r}; choose from {sorted(HINDSIGHT_BUILDERS)}")
        t = HINDSIGHT_BUILDERS[name](traj, group)
        if t:
            texts.append(t)
    return "\n".join(texts) if texts else None


def build_hindsight_batch(trajs: Sequence[Trajectory], parts: Sequence[str] = ("outcome", "peer")) -> list[str | None]:
    """:func:`build_hindsight` for every trajectory, each with the whole batch as its group."""
    return [build_hindsight(t, trajs, parts) for t in trajs]


def render_hindsight(text: str | None, tokenizer: Any, *, template: str = DEFAULT_TEMPLATE) -> list[int] | None:
    """Tokenize hindsight text wrapped in ``template`` (no special tokens added); ``None`` stays ``None``.

    Args:
        text: Output of :func:`build_hindsight`.
        tokenizer: Anything with ``encode(text, add_special_tokens=False)`` (a HF tokenizer).
        template: Wrapper with a ``{text}`` field.
    """
    if text is None:
        return None
    return list(tokenizer.encode(template.format(text=text), add_special_tokens=False))
