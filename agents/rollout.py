"""Rollouts: an env pool plus a policy -> token-exact :class:`~stepgym.envs.records.Trajectory` records.

:func:`collect` runs ``group_size`` episodes of every task on a ragged :class:`EnvPool` (finished
envs take the next queued episode), with one batched ``policy.generate`` call per turn over every
running episode. The ids in each :class:`TokenSequence` are the rendered prompt/observation ids and
the ids the engine returned, appended, never re-encoded:

* ``concat``: one sequence per trajectory: ``prompt, completion_0, obs_1, completion_1, ...``.
* ``per-step``: one sequence per step: ``prompt_k, completion_k``.

Masks: ``loss_mask`` and ``step_index = k`` only on step ``k``'s generated ids; ``action_mask`` on
the generated ids that overlap the step's single ``<tag>...</tag>`` (tags included, see
:mod:`stepgym.agents.render`); prompt, observation and template ids get 0 / -1.

Limits and truncation (all recorded in ``Trajectory.info``, never silent):

* ``max_turns`` steps per episode; the last step is marked truncated (``truncated_reason="max_turns"``).
* ``sampling.max_new_tokens`` per turn.
* ``max_prompt_tokens``: per-step prompts drop their oldest history steps, then are left-truncated to
  their last ``max_prompt_tokens`` ids (``info["prompt_truncation"]``). In concat only the first
  prompt can be left-truncated that way; a later turn whose context would exceed it ends the
  episode (``truncated_reason="max_prompt_tokens"``), because cutting the middle of the
  sequence would make the trainer score different tokens than the engine saw.
* ``max_total_tokens``: concat: sequence length (a turn runs only if the context plus
  ``max_new_tokens`` fits); per-step: generated ids summed over steps. Exceeding ends the episode
  (``truncated_reason="max_total_tokens"``).
* ``max_action_tokens`` (default ``sampling.max_new_tokens``): a longer completion (a policy that
  ignores ``max_new_tokens``, a scripted action) is cut to its first ``max_action_tokens`` ids before
  anything is rendered or masked (``info["action_cut_tokens"]`` on the step, ``finish_reason="length"``).
* A policy error ends the affected episodes (``truncated_reason="policy_error"``, ``info["error"]``).

Tasks and groups: a ``str`` task is reset with ``options={"task_id": task}`` (its members get
distinct seeds, for randomness the env keeps within a task); an ``int`` task is a reset seed (the env
picks the task from it: any plain Gymnasium env), and all ``group_size`` members of its group are
reset with that same seed and no options, so a deterministic env gives G rollouts of one task; the
policy's sampling makes them differ. The group's purity is checked, never assumed: its members must
report the same ``info["task_id"]`` (or, without one, the same first observation), and a named task
must come back as the ``info["task_id"]`` asked for; else :class:`GroupPurityError` names the env and
the fix.

Env faults are the env's, and are marked so the trainer leaves them out: an env that raised (the
pool's truncated step or reset with ``info["error"]``; ``truncated_reason="env_error"``) or returned a
NaN/inf reward (``"nonfinite_reward"``, the reward recorded as 0.0 and the raw value in the step's
``info["nonfinite_reward"]``). ``info["error"]`` says what, ``info["error_traceback"]`` where;
:func:`env_faults` lists them.

Outcome: the last step's ``info["score"]`` when present, else ``info["won"]`` as 0/1, else the last
reward when that step was valid, else 0: an invalid step's reward is the env's invalid-action penalty,
which the trainer adds to the score once (``trainers/batch.py``), never an outcome (an episode the
rollout cuts on an invalid Search-QA step has outcome 0, not -0.01). Success: ``info["won"]`` /
``info["success"]`` when present, else ``outcome > 0``.
Timing: ``time_generate_s`` / ``time_env_s`` are each trajectory's share of the batched generate /
env calls it took part in (the call's wall time divided by its rows).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from stepgym.agents.policy import Completion, Policy, SamplingParams
from stepgym.agents.render import ChatRenderer, action_token_mask, concat_drift, per_step_drift
from stepgym.envs.capabilities import SEED_SUBSET, Task
from stepgym.envs.pool import EnvPool
from stepgym.envs.records import StepRecord, TokenSequence, Trajectory

__all__ = [
    "DEFAULT_ACTION_TAGS",
    "DEFAULT_STOP",
    "ENV_FAULTS",
    "GroupPurityError",
    "Layout",
    "collect",
    "env_faults",
    "jsonable",
    "rollout_metrics",
]

logger = logging.getLogger(__name__)

Layout = Literal["concat", "per-step"]
DEFAULT_ACTION_TAGS: tuple[str, ...] = ("action", "search", "answer")
"""Tags whose span is the action (``action_mask``)."""
DEFAULT_STOP: tuple[str, ...] = ("</action>", "</search>", "</answer>")
"""Stop strings that end a turn."""
ENV_FAULTS: tuple[str, ...] = ("env_error", "nonfinite_reward")
"""``truncated_reason`` values that mean the env failed (not the policy): never trained on."""


class GroupPurityError(RuntimeError):
    """The members of a group were reset to different tasks: the env's reset is not deterministic."""


def jsonable(value: Any) -> Any:
    """A JSON-able copy of ``value``: dict keys as strings, tuples as lists, unknown objects dropped."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            j = jsonable(v)
            if j is not _DROP:
                out[str(k)] = j
        return out
    if isinstance(value, (list, tuple)):
        return [j for j in (jsonable(v) for v in value) if j is not _DROP]
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError):
            return _DROP
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return _DROP


_DROP = object()


@dataclass
class _Episode:
    key: int
    task: Task
    group_id: str
    seed: int | None
    slot: int = -1
    first_obs: str = ""
    obs: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    reset_info: dict[str, Any] = field(default_factory=dict)
    steps: list[StepRecord] = field(default_factory=list)
    history: list[tuple[str, str]] = field(default_factory=list)
    # concat
    ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    step_index: list[int] = field(default_factory=list)
    action_mask: list[int] = field(default_factory=list)
    completions: list[list[int]] = field(default_factory=list)
    shown_obs: list[str] = field(default_factory=list)
    # per-step
    sequences: list[TokenSequence] = field(default_factory=list)
    prompt_texts: list[str] = field(default_factory=list)
    generated: int = 0
    truncation: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    reason: str | None = None
    error: str | None = None
    error_traceback: str | None = None
    t_gen: float = 0.0
    t_env: float = 0.0
    # the turn in flight
    prompt: list[int] = field(default_factory=list)
    prompt_text: str = ""

    def append(self, ids: Sequence[int], *, gen: Completion | None = None, step: int = -1, amask: Sequence[int] = ()):
        self.ids.extend(ids)
        n = len(ids)
        self.loss_mask.extend([1 if gen else 0] * n)
        self.logprobs.extend(gen.logprobs if gen else [0.0] * n)
        self.step_index.extend([step if gen else -1] * n)
        self.action_mask.extend(amask if gen else [0] * n)


def _shorten(text: str, n: int = 120) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _check_purity(
    seen: dict[str, tuple[_Episode, str, str]], ep: _Episode, obs: str, info: dict[str, Any], env_id: str
) -> None:
    """Raise :class:`GroupPurityError` when ``ep`` was reset to another task than its group's first member."""
    if isinstance(ep.task, str) and "task_id" in info and str(info["task_id"]) != ep.task:
        raise GroupPurityError(
            f"env {env_id} was asked for task {ep.task!r} (reset options={{'task_id': {ep.task!r}}}) but reports "
            f"info['task_id']={info['task_id']!r}: its reset ignores options['task_id']. Honour the option in "
            "reset(), or remove the env's task_ids attribute so tasks are reset seeds."
        )
    kind, ident = ("info['task_id']", str(info["task_id"])) if "task_id" in info else ("first observation", obs)
    first = seen.setdefault(ep.group_id, (ep, kind, ident))
    if first[0] is ep or (first[1], first[2]) == (kind, ident):
        return
    if isinstance(ep.task, str):
        how = f"options={{'task_id': {ep.task!r}}} (seeds {first[0].seed} and {ep.seed})"
    else:
        how = f"seed={ep.seed} and no options"
    raise GroupPurityError(
        f"env {env_id} is not deterministic in its reset: two members of group {ep.group_id!r} were both reset "
        f"with {how} but got different tasks ({first[1]} {_shorten(first[2])} vs {kind} "
        f"{_shorten(ident)}), so GRPO would compare rollouts of different tasks. Make reset() choose the task "
        "only from its seed and options (draw from self.np_random after super().reset(seed=seed)), and report "
        "info['task_id'] if the first observation varies for the same task."
    )


def _outcome(ep: _Episode) -> tuple[float, bool]:
    if not ep.steps:
        return 0.0, False
    last = ep.steps[-1]
    info = last.info
    if isinstance(info.get("score"), (int, float)):
        outcome = float(info["score"])  # type: ignore[arg-type]
    elif "won" in info:
        outcome = float(bool(info["won"]))
    else:
        outcome = float(last.reward) if last.valid else 0.0  # an invalid step's reward is its penalty
    for key in ("won", "success"):
        if key in info:
            return outcome, bool(info[key])
    return outcome, outcome > 0


def collect(
    pool: EnvPool,
    policy: Policy,
    tasks: Sequence[Task],
    *,
    group_size: int = 1,
    layout: Layout = "concat",
    renderer: ChatRenderer,
    sampling: SamplingParams,
    max_turns: int = 10,
    max_prompt_tokens: int | None = None,
    max_total_tokens: int | None = None,
    max_action_tokens: int | None = None,
    instructions: str | None = None,
    action_tags: Sequence[str] = DEFAULT_ACTION_TAGS,
    seed: int | None = None,
    group_prefix: str = "",
    check_drift: bool = True,
    progress: Callable[[int], None] | None = None,
) -> list[Trajectory]:
    """Roll out ``group_size`` episodes of each task and return them as trajectories.

    Args:
        pool: The envs (any Gymnasium text env; its optional ``protocol`` attribute starts the first prompt).
        policy: Any :class:`Policy`; one with an ``observe(rows)`` method (e.g.
            :class:`~stepgym.agents.scripted.TextAgentPolicy`) also gets ``(episode key, observation,
            info, is_first)`` rows before each ``generate``; one with ``reset_cache()`` (the KV engine of
            :class:`~stepgym.agents.hf.HFPolicy`) has its cached sequences dropped at the start and the end.
        tasks: Task ids (``str``: reset with ``options={"task_id": t}``) or seeds (``int``: the env
            picks the task from the seed); every member of a task's group gets the same seed and options.
        group_size: Episodes per task (``G``); they share ``group_id``.
        layout: ``"concat"`` or ``"per-step"`` (see the module docstring).
        renderer: Chat renderer of the policy's tokenizer.
        sampling: Decoding settings; ``sampling.seed`` (if set) is offset by the turn number.
        max_turns: Agent steps per episode.
        max_prompt_tokens: Prompt cap (truncation rule in the module docstring).
        max_total_tokens: Token cap per trajectory (see the module docstring).
        max_action_tokens: Completions are cut to this many ids before rendering; ``None`` =
            ``sampling.max_new_tokens``.
        instructions: Text that starts the first prompt in place of the env's ``protocol``; ``None``
            = the env's ``protocol`` (``""`` when it has none).
        action_tags: Tags marking the action span.
        seed: Reset seed of the first episode with a ``str`` task (episode ``e`` gets ``seed + e``);
            ``None`` leaves those resets unseeded. ``int`` tasks are their own seed (the whole group's).
        group_prefix: Prepended to every ``group_id`` (``f"{prefix}{task_number}:{task}"``).
        check_drift: Re-render every trajectory and record retokenization drift in ``info``.
        progress: Called with the number of newly finished episodes (e.g. ``tqdm.update``).

    Returns:
        One trajectory per episode, ordered by task then group member.

    Raises:
        GroupPurityError: Two members of a group were reset to different tasks.
    """
    if layout not in ("concat", "per-step"):
        raise ValueError(f"unknown layout {layout!r}; use 'concat' or 'per-step'")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if max_turns < 1:
        raise ValueError(f"max_turns must be >= 1, got {max_turns}")
    action_limit = sampling.max_new_tokens if max_action_tokens is None else max_action_tokens
    if action_limit < 1:
        raise ValueError(f"max_action_tokens must be >= 1, got {action_limit}")
    if instructions is not None:
        protocol = instructions
    else:
        try:
            protocol = str(pool.get_attr("protocol", [0])[0] or "")
        except Exception:  # noqa: BLE001 - protocol is optional: a plain Gymnasium env has none
            protocol = ""
    env_id = pool.spec.id
    queue: deque[_Episode] = deque()
    for t, task in enumerate(tasks):
        for _ in range(group_size):
            # a seed task: one seed for the whole group (G resets of one task, not G tasks); a named task is
            # fixed by options, and its members keep distinct seeds for the env's own randomness within a task
            key = len(queue)
            ep_seed = task if isinstance(task, int) else (None if seed is None else seed + key)
            queue.append(_Episode(key, task, f"{group_prefix}{t}:{task}", ep_seed))
    purity: dict[str, tuple[_Episode, str, str]] = {}  # group_id -> (first member, what identifies its task)
    episodes = list(queue)
    free = list(range(pool.num_envs))[::-1]
    running: dict[int, _Episode] = {}
    finished: dict[int, Trajectory] = {}
    observe = getattr(policy, "observe", None)
    # an engine that keeps KV caches between calls (agents/engine.py) starts and ends each rollout empty
    reset_cache = getattr(policy, "reset_cache", None)
    if callable(reset_cache):
        reset_cache()
    turn = 0

    def finish(ep: _Episode, reason: str | None = None) -> None:
        if reason is not None:
            ep.truncated, ep.reason = True, reason
        if ep.slot in running and running[ep.slot] is ep:
            del running[ep.slot]
        free.append(ep.slot)
        finished[ep.key] = _to_trajectory(ep, env_id, layout, renderer, protocol, check_drift)
        if progress is not None:
            progress(1)

    while queue or running:
        # ---------------------------------------------------------------- start episodes on free envs
        starting = []
        while free and queue:
            ep = queue.popleft()
            ep.slot = free.pop()
            starting.append(ep)
        if starting:
            t0 = time.perf_counter()
            results = pool.reset(
                seeds=[ep.seed for ep in starting],
                options=[None if isinstance(ep.task, int) else {"task_id": ep.task} for ep in starting],
                indices=[ep.slot for ep in starting],
            )
            dt = (time.perf_counter() - t0) / len(starting)
            for ep, (obs, info) in zip(starting, results):
                ep.t_env += dt
                info = dict(info)
                ep.error_traceback = info.pop("error_traceback", None)
                ep.reset_info = jsonable(info)
                if "error" in info:
                    ep.error = str(info["error"])
                    finish(ep, "env_error")
                    continue
                _check_purity(purity, ep, obs, info, env_id)
                ep.first_obs = ep.obs = obs
                ep.info = dict(info)
                running[ep.slot] = ep
        if not running:
            continue
        # ---------------------------------------------------------------- build prompts
        batch: list[_Episode] = []
        for ep in list(running.values()):
            k = len(ep.steps)
            if layout == "concat":
                if k == 0:
                    rp = renderer.initial_prompt(protocol, ep.first_obs, max_prompt_tokens)
                    if rp.truncated_tokens:
                        ep.truncation.append({"step": 0, "left_truncated_tokens": rp.truncated_tokens})
                    ep.append(rp.ids)
                    ep.prompt_text = rp.text
                else:
                    obs_ids = renderer.observation_ids(ep.completions[-1], ep.obs)
                    ctx = len(ep.ids) + len(obs_ids)
                    if max_prompt_tokens is not None and ctx > max_prompt_tokens:
                        finish(ep, "max_prompt_tokens")
                        continue
                    if max_total_tokens is not None and ctx + sampling.max_new_tokens > max_total_tokens:
                        finish(ep, "max_total_tokens")
                        continue
                    ep.append(obs_ids)
                    ep.shown_obs.append(ep.obs)
                ep.prompt = ep.ids
            else:
                if max_total_tokens is not None and ep.generated + sampling.max_new_tokens > max_total_tokens:
                    finish(ep, "max_total_tokens")
                    continue
                rp = renderer.step_prompt(protocol, ep.first_obs, ep.history, ep.obs, k, max_prompt_tokens)
                if rp.truncated_tokens or rp.dropped_history:
                    ep.truncation.append(
                        {"step": k, "left_truncated_tokens": rp.truncated_tokens, "dropped_history": rp.dropped_history}
                    )
                ep.prompt, ep.prompt_text = rp.ids, rp.text
            batch.append(ep)
        if not batch:
            continue
        # ---------------------------------------------------------------- generate
        if callable(observe):
            observe([(ep.key, ep.obs, ep.info, not ep.steps) for ep in batch])
        turn_sampling = sampling if sampling.seed is None else dataclasses.replace(sampling, seed=sampling.seed + turn)
        turn += 1
        t0 = time.perf_counter()
        try:
            completions = policy.generate([list(ep.prompt) for ep in batch], turn_sampling)
            if len(completions) != len(batch):
                raise RuntimeError(f"policy returned {len(completions)} completions for {len(batch)} prompts")
        except Exception as e:  # noqa: BLE001 - contained: the batch's episodes are truncated
            logger.warning("policy.generate failed: %s", e, exc_info=True)
            completions = [Completion([], [], "", "error", f"{type(e).__name__}: {e}") for _ in batch]
        dt = (time.perf_counter() - t0) / len(batch)
        stepping: dict[int, tuple[_Episode, Completion]] = {}
        cut: dict[int, int] = {}
        for ep, comp in zip(batch, completions):
            ep.t_gen += dt
            if comp.finish_reason == "error":
                ep.error = f"policy: {comp.error}"
                finish(ep, "policy_error")
                continue
            if len(comp.ids) > action_limit:  # before the env, the mask and any rendering see it
                cut[ep.slot] = len(comp.ids) - action_limit
                ids = list(comp.ids[:action_limit])
                text = renderer.tokenizer.decode(ids, skip_special_tokens=False)
                comp = Completion(ids, list(comp.logprobs[:action_limit]), text, "length")
            stepping[ep.slot] = (ep, comp)
        if not stepping:
            continue
        # ---------------------------------------------------------------- step the envs
        t0 = time.perf_counter()
        results = pool.step({slot: comp.text for slot, (_, comp) in stepping.items()})
        dt = (time.perf_counter() - t0) / len(stepping)
        for slot, (ep, comp) in stepping.items():
            ep.t_env += dt
            r = results[slot]
            k = len(ep.steps)
            amask = action_token_mask(renderer.tokenizer, comp.ids, action_tags)
            out_of_turns = k + 1 >= max_turns and not r.done
            raw_info = dict(r.info)
            traceback_text = raw_info.pop("error_traceback", None)
            info = jsonable(raw_info)
            info = {**info, "finish_reason": comp.finish_reason, "num_tokens": len(comp.ids)}
            if ep.slot in cut:
                info["action_cut_tokens"] = cut[ep.slot]
            reward = float(r.reward)
            finite = math.isfinite(reward)
            if not finite:  # never let NaN/inf into a record: the episode is marked as the env's fault below
                info["nonfinite_reward"] = str(reward)
            ep.steps.append(
                StepRecord(
                    index=k,
                    observation=ep.obs,
                    action_text=comp.text,
                    action=r.info.get("action") if isinstance(r.info.get("action"), str) else None,
                    valid=bool(r.info.get("valid_action", True)),
                    reward=reward if finite else 0.0,
                    terminated=r.terminated,
                    truncated=r.truncated or out_of_turns,
                    info=info,
                )
            )
            ep.generated += len(comp.ids)
            if layout == "concat":
                ep.append(comp.ids, gen=comp, step=k, amask=amask)
                ep.completions.append(list(comp.ids))
            else:
                n_prompt = len(ep.prompt)
                ep.sequences.append(
                    TokenSequence(
                        ids=[*ep.prompt, *comp.ids],
                        loss_mask=[0] * n_prompt + [1] * len(comp.ids),
                        logprobs=[0.0] * n_prompt + list(comp.logprobs),
                        step_index=[-1] * n_prompt + [k] * len(comp.ids),
                        action_mask=[0] * n_prompt + amask,
                    )
                )
                ep.prompt_texts.append(ep.prompt_text)
            ep.history.append((comp.text, r.observation))
            ep.obs, ep.info = r.observation, raw_info
            if "error" in r.info:
                ep.error, ep.error_traceback = str(r.info["error"]), traceback_text
                finish(ep, "env_error")
            elif not finite:
                ep.error = (
                    f"env {env_id} returned a non-finite reward ({reward}) at step {k} of task {ep.task!r}"
                    f" (seed {ep.seed}); rewards must be finite floats"
                )
                finish(ep, "nonfinite_reward")
            elif r.terminated:
                finish(ep)
            elif r.truncated:
                finish(ep, "env_truncated")
            elif out_of_turns:
                finish(ep, "max_turns")
    if callable(reset_cache):
        reset_cache()
    return [finished[ep.key] for ep in episodes]


def _to_trajectory(
    ep: _Episode, env_id: str, layout: Layout, renderer: ChatRenderer, protocol: str, check_drift: bool
) -> Trajectory:
    outcome, success = _outcome(ep)
    info: dict[str, Any] = {
        "layout": layout,
        "reset_info": ep.reset_info,
        "time_generate_s": ep.t_gen,
        "time_env_s": ep.t_env,
        "num_generated_tokens": ep.generated,
        "prompt_truncation": ep.truncation,
    }
    if ep.reason is not None:
        info["truncated_reason"] = ep.reason
    if ep.error is not None:
        info["error"] = ep.error
    if ep.error_traceback is not None:
        info["error_traceback"] = ep.error_traceback
    sequences: list[TokenSequence] = []
    if layout == "concat":
        if ep.completions:
            # drop the trailing prompt of a turn that never ran (it has no generated ids)
            last = max(i for i, m in enumerate(ep.loss_mask) if m) + 1 if any(ep.loss_mask) else 0
            sequences = [
                TokenSequence(
                    ids=ep.ids[:last],
                    loss_mask=ep.loss_mask[:last],
                    logprobs=ep.logprobs[:last],
                    step_index=ep.step_index[:last],
                    action_mask=ep.action_mask[:last],
                )
            ]
            if check_drift:
                if ep.truncation:
                    info["retokenization_drift"] = None  # a left-truncated prompt cannot be re-rendered
                else:
                    shown = ep.shown_obs[: len(ep.completions) - 1]
                    mis = concat_drift(renderer, protocol, ep.first_obs, ep.completions, shown, sequences[0].ids)
                    info["retokenization_drift"] = 0 if mis is None else 1
                    info["retokenization_first_mismatch"] = mis
    else:
        sequences = ep.sequences
        if check_drift and sequences:
            mism = []
            for k, (seq, text) in enumerate(zip(sequences, ep.prompt_texts)):
                gen = [i for i, m in zip(seq.ids, seq.loss_mask) if m]
                if any(t.get("step") == k and t.get("left_truncated_tokens") for t in ep.truncation):
                    continue
                mis = per_step_drift(renderer, text, gen, seq.ids)
                if mis is not None:
                    mism.append({"step": k, "first_mismatch": mis})
            info["retokenization_drift"] = len(mism)
            info["retokenization_mismatches"] = mism
    task_id = str(ep.reset_info.get("task_id", ep.task))
    subset = str(ep.reset_info.get("subset", SEED_SUBSET))
    truncated = ep.truncated or any(s.truncated for s in ep.steps[-1:])
    return Trajectory(
        env_id=env_id,
        task_id=task_id,
        subset=subset,
        group_id=ep.group_id,
        seed=ep.seed,
        steps=ep.steps,
        outcome=outcome,
        success=success,
        truncated=truncated,
        sequences=sequences,
        info=jsonable(info),
    )


def env_faults(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
    """The trajectories that ended on an env fault (see :data:`ENV_FAULTS`), in order."""
    return [t for t in trajectories if t.info.get("truncated_reason") in ENV_FAULTS]


def _all_equal_share(trajectories: Sequence[Trajectory]) -> float:
    """Share of groups (``group_id``) with more than one member whose outcomes are all equal (0 when none has 2)."""
    groups: dict[str, list[float]] = {}
    for t in trajectories:
        groups.setdefault(t.group_id, []).append(t.outcome)
    multi = [v for v in groups.values() if len(v) > 1]
    return sum(max(v) == min(v) for v in multi) / len(multi) if multi else 0.0


def rollout_metrics(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Batch metrics under ``rollout/`` and ``time/``: success, lengths, drift, truncation, env faults, timing.

    The one implementation: the training loop logs these for every step. ``rollout/env_errors`` and
    ``rollout/nonfinite_rewards`` count episodes (raised in the env / returned a NaN or inf reward).
    """
    n = max(len(trajectories), 1)
    drift = [t.info.get("retokenization_drift") for t in trajectories]
    drift = [d for d in drift if isinstance(d, (int, float))]
    reasons = [t.info.get("truncated_reason") for t in trajectories]
    return {
        "rollout/trajectories": float(len(trajectories)),
        "rollout/success": sum(t.success for t in trajectories) / n,
        "rollout/outcome": sum(t.outcome for t in trajectories) / n,
        "rollout/steps_per_episode": sum(t.num_steps for t in trajectories) / n,
        "rollout/truncated": sum(t.truncated for t in trajectories) / n,
        "rollout/env_errors": float(reasons.count("env_error")),
        "rollout/nonfinite_rewards": float(reasons.count("nonfinite_reward")),
        "rollout/invalid_action_rate": sum(not s.valid for t in trajectories for s in t.steps)
        / max(sum(t.num_steps for t in trajectories), 1),
        "rollout/retokenization_drift": (sum(1 for d in drift if d) / len(drift)) if drift else 0.0,
        "rollout/prompt_truncated": sum(bool(t.info.get("prompt_truncation")) for t in trajectories) / n,
        # generated tokens per episode (all its steps): what the model wrote, not the prompt or observations
        "rollout/response_tokens": sum(sum(s.loss_mask) for t in trajectories for s in t.sequences) / n,
        # groups whose members all scored the same carry no group-relative signal (GRPO's advantage is 0)
        "rollout/all_equal_groups": _all_equal_share(trajectories),
        "time/generate_s": float(sum(float(t.info.get("time_generate_s", 0.0)) for t in trajectories)),  # type: ignore[arg-type]
        "time/env_s": float(sum(float(t.info.get("time_env_s", 0.0)) for t in trajectories)),  # type: ignore[arg-type]
    }
