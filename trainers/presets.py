"""Presets of the main job: ``smoke`` (2-core CPU, minutes), ``cpu`` (the full recipe, hours) and ``paper`` (GPU).

A preset is a set of :class:`~stepgym.trainers.config.TrainConfig` overrides (nested dicts for the
sections) plus what the runner does around training: which evaluation splits it reports and how
many tasks per subset it evaluates. Precedence on the command line: field defaults (in
``trainers/config.py``) < preset < explicit flags.

``paper`` follows ``shared/ALGORITHMS.md`` §9 (the published GPU settings of the SDAR / StepOPSD /
GiGPO papers); every value not given there is marked ``[recon]`` in :data:`PAPER_NOTES`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "ENV_ALIASES",
    "ENV_FAMILIES",
    "PAPER_NOTES",
    "PRESETS",
    "EvalSplit",
    "Preset",
    "env_attribute",
    "env_family",
    "get_preset",
    "has_preset",
]

ENV_ALIASES: dict[str, str] = {
    "searchqa": "stepgym/SearchQA-v0",
    "alfworld": "stepgym/ALFWorld-v0",
    "sandbox": "stepgym/Sandbox-One-v0",
    "sandbox-one": "stepgym/Sandbox-One-v0",
    "sandbox-two": "stepgym/Sandbox-Two-v0",
    "sandbox-delayed": "stepgym/Sandbox-Delayed-v0",
    "sandbox-null": "stepgym/Sandbox-Null-v0",
}
"""Short names accepted by ``--env`` (any registered Gymnasium id works too)."""

PRESETS: tuple[str, ...] = ("smoke", "cpu", "paper")


@dataclass(frozen=True)
class EvalSplit:
    """One evaluation split of the report: a label and the env kwargs that select it."""

    label: str
    env_kwargs: dict[str, Any]


@dataclass(frozen=True)
class Preset:
    """Config overrides and evaluation plan of one (env family, preset) pair."""

    name: str
    family: str
    config: dict[str, Any]
    """Nested ``TrainConfig`` overrides (``{"sampling": {"max_new_tokens": 64}, ...}``)."""
    eval_splits: tuple[EvalSplit, ...]
    """Splits the final evaluation reports (one table block each)."""
    eval_tasks_per_subset: int | None
    """Tasks per subset of the final evaluation; ``None`` = every task of the subset."""
    notes: str = ""
    default_model: str | None = None
    """Model used when ``--model`` is not given (``None``: the best small local model)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds run when ``--seeds`` is not given."""
    arms: tuple[str, ...] = ()
    """Credit methods run side by side (same seeds, budget and SFT warm start) when ``--method`` is not given;
    empty: the one method of ``config["credit"]``."""


ENV_FAMILIES: dict[str, str] = {
    "stepgym/SearchQA-v0": "searchqa",
    "stepgym/ALFWorld-v0": "alfworld",
    "stepgym/Sandbox-One-v0": "sandbox",
    "stepgym/Sandbox-Two-v0": "sandbox",
    "stepgym/Sandbox-Delayed-v0": "sandbox",
    "stepgym/Sandbox-Null-v0": "sandbox",
}
"""Which preset table an env id uses; every other id (adapters, your own envs) gets ``generic``."""


def env_family(env_id: str) -> str:
    """``searchqa``, ``alfworld``, ``sandbox`` or ``generic`` for a registered env id (by exact id)."""
    return ENV_FAMILIES.get(env_id, "generic")


def env_attribute(env_id: str, name: str, default: Any) -> Any:
    """A class attribute an env declares (``subsets``, ``headline_metric``, ``held_out_kwargs``), read without building.

    Read from the registered entry point like ``protocol`` is; an env that does not declare it (a plain
    Gymnasium env) gives ``default``.
    """
    from gymnasium.envs.registration import load_env_creator
    from stepgym.envs import env_spec

    entry = env_spec(env_id).entry_point
    creator = load_env_creator(entry) if isinstance(entry, str) else entry
    return getattr(creator, name, default)


# --------------------------------------------------------------------------- smoke: 2-core CPU
_SMOKE_COMMON: dict[str, Any] = {
    "credit": "stepopsd",
    "total_steps": 2,
    "group_size": 2,
    "tasks_per_step": 2,
    "num_envs": 4,
    "micro_batch_size": 4,
    # the in-process policy shares the trained weights, so its sampling log-probs are logp_old already;
    # skipping the recompute saves one forward over the batch (the paper preset recomputes)
    "recompute_old_logprobs": False,
    "checkpoint_every": 0,  # only the final one (Ctrl-C writes one too); a smollm2 checkpoint takes ~20 s here
    "keep_last": 2,
    "optim": {"lr": 1e-6},
    "eval": {"every": 0, "temperature": 0.4},
}

_SMOKE: dict[str, Preset] = {
    "searchqa": Preset(
        name="smoke",
        family="searchqa",
        config={
            **_SMOKE_COMMON,
            "env_kwargs": {"split": "train", "retriever": "bm25", "max_turns": 2, "topk": 2},
            "train_subsets": ["nq", "hotpotqa"],
            "layout": "concat",
            "max_turns": 2,
            "max_prompt_tokens": 1536,
            # a search action copies the question: 48 tokens hold nearly all of them (32 cut many, issue 16)
            "sampling": {"max_new_tokens": 48},
            "teacher": {"target": "step", "snapshot_interval": 10},
            "eval": {**_SMOKE_COMMON["eval"], "env_kwargs": {"split": "test"}},
            # the recipe (issue 16): SFT on ~22 kept search-then-answer demonstrations moves EM from 0 at this
            # budget; the base model never closes a tag, so RL alone has nothing to reinforce
            "sft": {"enabled": True, "demo_tasks": 48, "epochs": 2, "lr": 1e-4, "batch_size": 4},
        },
        eval_splits=(EvalSplit("test", {"split": "test"}),),
        eval_tasks_per_subset=5,
        notes="The short recipe: greedy evaluation of the base model on 5 test questions per subset, SFT on the kept "
        "search-then-answer demonstrations of 48 NQ+HotpotQA train questions (2 epochs), evaluation, 2 StepOPSD "
        "steps (2 questions x 2 rollouts, 2 turns, 48 new tokens per turn, top-2 passages), final evaluation.",
    ),
    "alfworld": Preset(
        name="smoke",
        family="alfworld",
        config={
            **_SMOKE_COMMON,
            "env_kwargs": {"split": "train", "max_steps": 2},
            "layout": "per-step",
            "max_turns": 2,
            "max_prompt_tokens": 1536,
            "sampling": {"max_new_tokens": 24},
            "teacher": {"target": "action", "snapshot_interval": 10},
            "eval": {**_SMOKE_COMMON["eval"], "env_kwargs": {"split": "valid_unseen"}},
        },
        eval_splits=(
            EvalSplit("valid_seen", {"split": "valid_seen", "max_steps": 2}),
            EvalSplit("valid_unseen", {"split": "valid_unseen", "max_steps": 2}),
        ),
        eval_tasks_per_subset=1,
        notes="2 StepOPSD steps (2 games x 2 rollouts, 2 turns of at most 24 new tokens) on valid_train, "
        "then 1 game per task type of valid_seen and valid_unseen (greedy).",
    ),
    "sandbox": Preset(
        name="smoke",
        family="sandbox",
        config={
            **_SMOKE_COMMON,
            "env_kwargs": {"split": "train", "max_steps": 6, "invalid_penalty": 0.1},
            "layout": "per-step",
            "max_turns": 6,
            "max_prompt_tokens": 1024,
            "sampling": {"max_new_tokens": 24},
            "teacher": {"target": "action"},
            "eval": {**_SMOKE_COMMON["eval"], "env_kwargs": {"split": "test"}},
        },
        eval_splits=(EvalSplit("test", {"split": "test", "max_steps": 6}),),
        eval_tasks_per_subset=4,
        notes="2 StepOPSD steps on the sandbox train worlds, then 4 test worlds per subset (greedy).",
    ),
    "generic": Preset(
        name="smoke",
        family="generic",
        config={**_SMOKE_COMMON, "layout": "per-step", "max_turns": 6, "sampling": {"max_new_tokens": 32}},
        eval_splits=(EvalSplit("eval", {}),),
        eval_tasks_per_subset=4,
        notes="2 StepOPSD steps with the env's default kwargs, then 4 tasks per subset (greedy).",
    ),
}

# --------------------------------------------------------------------------- cpu: the full recipe on a 2-core CPU
_CPU: dict[str, Preset] = {
    "searchqa": Preset(
        name="cpu",
        family="searchqa",
        config={
            **_SMOKE["searchqa"].config,
            "total_steps": 20,
            "group_size": 4,
            "tasks_per_step": 4,
            "num_envs": 16,
            # rows per forward/backward of SFT and RL updates: a batch of 8 ~500-token rows at once peaked at 12.9 GB
            # and was OOM-killed on the shared 24 GB machine; 2 at a time gives the same update (accumulated)
            "micro_batch_size": 2,
            "checkpoint_every": 5,
            # the same lr and sampling for both arms; 1e-6 (the 3B papers' lr) moves a 135M model by nothing in 20 steps
            "optim": {"lr": 1e-5},
            "sampling": {"max_new_tokens": 48, "temperature": 1.0},
            # greedy periodic evaluation on the final plan's questions, so the curve and the table agree; every 10
            # steps: one evaluation of 210 episodes costs ~5 CPU minutes here, about as much as 5 training steps
            "eval": {"every": 10, "temperature": 0.0, "tasks_per_subset": 30, "env_kwargs": {"split": "test"}},
            "sft": {"enabled": True, "demo_tasks": 256, "epochs": 2, "lr": 1e-4, "batch_size": 8},
        },
        eval_splits=(EvalSplit("test", {"split": "test"}),),
        eval_tasks_per_subset=30,
        seeds=(0, 1, 2),
        arms=("grpo", "stepopsd"),
        notes="The full recipe: base / SFT / RL greedy evaluation on 30 test questions of each of the seven subsets; "
        "SFT on the kept demonstrations of 256 NQ+HotpotQA train questions (2 epochs); then GRPO and StepOPSD arms "
        "from the same warm start (20 steps of 4 questions x 4 rollouts, lr 1e-5), 3 seeds; paired bootstrap CIs.",
    ),
    # ALFWorld (issue 16, benchmarks/README.md "ALFWorld recipe"): measured with benchmarks/alfworld_recipe.py
    "alfworld": Preset(
        name="cpu",
        family="alfworld",
        config={
            **_SMOKE_COMMON,
            "env_kwargs": {"split": "train", "max_steps": 15},
            # one row per episode: a per-step row repeats the protocol and first observation at every step (5x the
            # tokens of an episode on these games) and SFT of SmolLM2 runs at ~50 tokens/s on one core
            "layout": "concat",
            "max_turns": 15,
            "max_prompt_tokens": 2048,
            "sampling": {"max_new_tokens": 24, "temperature": 1.0},
            "total_steps": 10,
            "group_size": 4,
            "tasks_per_step": 2,
            "num_envs": 8,
            "micro_batch_size": 2,
            "optim": {"lr": 1e-5},
            "loss": {"aggregation": "seq-mean-token-mean"},
            "teacher": {"target": "action", "placement": "prefix", "snapshot_interval": 10},
            "eval": {"every": 5, "temperature": 0.0, "tasks_per_subset": 3, "env_kwargs": {"split": "valid_unseen"}},
            "sft": {"enabled": True, "demo_tasks": 100, "epochs": 1, "lr": 1e-4, "batch_size": 2},
        },
        eval_splits=(EvalSplit("valid_unseen", {"split": "valid_unseen", "max_steps": 15}),),
        eval_tasks_per_subset=3,
        seeds=(0, 1, 2),
        arms=("grpo", "stepopsd"),
        notes="The full recipe on ALFWorld: greedy evaluation of 3 valid_unseen games per task type (15 turns); SFT "
        "on the won walkthrough episodes of 100 valid_train games (1 epoch); then GRPO and StepOPSD arms from the "
        "same warm start (10 steps of 2 games x 4 rollouts, lr 1e-5), 3 seeds; paired bootstrap CIs.",
    ),
}

# --------------------------------------------------------------------------- paper: GPU, ALGORITHMS.md §9
_PAPER_COMMON: dict[str, Any] = {
    "credit": "stepopsd",
    "dtype": "bfloat16",
    "total_steps": 150,
    "group_size": 8,
    "optim": {"lr": 1e-6},
    "teacher": {"snapshot_interval": 10},  # mode: each method's own (stepopsd snapshot, sdar live)
    "checkpoint_every": 10,
    "eval": {"every": 10, "temperature": 0.4, "tasks_per_subset": 32},
    "micro_batch_size": 8,
}

_PAPER: dict[str, Preset] = {
    "searchqa": Preset(
        name="paper",
        family="searchqa",
        default_model="Qwen/Qwen2.5-3B-Instruct",
        config={
            **_PAPER_COMMON,
            "env_kwargs": {"split": "train", "retriever": "bm25", "max_turns": 4},
            "train_subsets": ["nq", "hotpotqa"],
            "tasks_per_step": 128,
            "num_envs": 128,
            "layout": "concat",
            "max_turns": 4,
            "max_prompt_tokens": 4096,
            "sampling": {"max_new_tokens": 500, "temperature": 1.0},
            "loss": {"kl_coef": 0.001, "reference": "initial"},
            "teacher": {**_PAPER_COMMON["teacher"], "target": "step"},
            "eval": {**_PAPER_COMMON["eval"], "env_kwargs": {"split": "test"}},
        },
        eval_splits=(EvalSplit("test", {"split": "test"}),),
        eval_tasks_per_subset=None,
        notes="Qwen2.5-3B-Instruct, 128 questions x 8 rollouts per step, 4 turns, prompt 4096, lr 1e-6, KL 0.001, "
        "150 steps, train on NQ+HotpotQA, evaluate every test question at temperature 0.4.",
    ),
    "alfworld": Preset(
        name="paper",
        family="alfworld",
        default_model="Qwen/Qwen2.5-3B-Instruct",
        config={
            **_PAPER_COMMON,
            "env_kwargs": {"split": "train", "max_steps": 50},
            "tasks_per_step": 16,
            "num_envs": 128,
            "env_backend": "process",
            "layout": "per-step",
            "max_turns": 50,
            "max_prompt_tokens": 2048,
            "sampling": {"max_new_tokens": 512, "temperature": 1.0},
            "loss": {"kl_coef": 0.01, "reference": "initial"},
            "teacher": {**_PAPER_COMMON["teacher"], "target": "action"},
            "eval": {**_PAPER_COMMON["eval"], "env_kwargs": {"split": "valid_unseen"}},
        },
        eval_splits=(
            EvalSplit("valid_seen", {"split": "valid_seen", "max_steps": 50}),
            EvalSplit("valid_unseen", {"split": "valid_unseen", "max_steps": 50}),
        ),
        eval_tasks_per_subset=None,
        notes="Qwen2.5-3B-Instruct, 16 games x 8 rollouts per step, 50 turns, prompt 2048 / response 512, "
        "lr 1e-6, KL 0.01, 150 steps, evaluate every valid_seen and valid_unseen game at temperature 0.4.",
    ),
}
_PAPER["sandbox"] = Preset(
    name="paper",
    family="sandbox",
    default_model="Qwen/Qwen2.5-3B-Instruct",
    config={
        **_PAPER["alfworld"].config,
        "env_kwargs": {"split": "train", "max_steps": 40, "invalid_penalty": 0.1},
        "env_backend": "inprocess",
        "max_turns": 40,
        "eval": {**_PAPER_COMMON["eval"], "env_kwargs": {"split": "test"}},
    },
    eval_splits=(EvalSplit("test", {"split": "test", "max_steps": 40}),),
    eval_tasks_per_subset=64,
    notes="The ALFWorld paper settings on the sandbox (40-step budget), 64 test worlds per subset.",
)
_PAPER["generic"] = Preset(
    name="paper",
    family="generic",
    default_model="Qwen/Qwen2.5-3B-Instruct",
    config={k: v for k, v in _PAPER["alfworld"].config.items() if k not in ("env_kwargs", "env_backend", "eval")},
    eval_splits=(EvalSplit("eval", {}),),
    eval_tasks_per_subset=None,
    notes="The ALFWorld paper settings with the env's default kwargs.",
)

PAPER_NOTES = """\
paper preset (shared/ALGORITHMS.md section 9; runnable as-is on a GPU with the model available):
  model            Qwen/Qwen2.5-3B-Instruct (SDAR Table 1); Qwen/Qwen3-1.7B via --model
  Search-QA        128 tasks x 8 rollouts, 4 turns, prompt 4096, train NQ+HotpotQA, KL 0.001
  ALFWorld         16 tasks x 8 rollouts, 50 turns, prompt 2048 / response 512, KL 0.01
  both             lr 1e-6, 150 steps, validation temperature 0.4, bf16, teacher snapshot every 10 steps
  [recon]          Search-QA response 500 tokens per turn (Search-R1's max_response_length), KL reference =
                   the initial policy (--loss.reference teacher for the StepOPSD code's choice),
                   eval every 10 steps on 32 tasks per subset, 128 envs in the pool
"""
"""What the paper preset takes from the papers and what it reconstructs (printed by ``--help``)."""


def _held_out_kwargs(env_id: str) -> dict[str, Any] | None:
    """The env's declared ``held_out_kwargs``; ``None`` when it declares none or the id is not registered (yet)."""
    from gymnasium.error import Error as GymError

    try:
        return env_attribute(env_id, "held_out_kwargs", None)
    except GymError:  # presets are also built for ids whose module is imported later (the runner checks ids)
        return None


def has_preset(name: str, env_id: str) -> bool:
    """Whether preset ``name`` is defined for ``env_id``'s family (``cpu`` is not, for every family)."""
    table = {"smoke": _SMOKE, "cpu": _CPU, "paper": _PAPER}.get(name, {})
    return env_family(env_id) in table


def get_preset(name: str, env_id: str) -> Preset:
    """The preset ``name`` for ``env_id`` (a deep copy: callers may edit it).

    Raises:
        ValueError: Unknown preset name, or a preset not defined for the env's family.
    """
    table = {"smoke": _SMOKE, "cpu": _CPU, "paper": _PAPER}.get(name)
    if table is None:
        raise ValueError(f"unknown preset {name!r}; use one of {list(PRESETS)}")
    if env_family(env_id) not in table:
        raise ValueError(
            f"preset {name!r} is defined for the {', '.join(sorted(table))} env family only, not for {env_id} "
            f"({env_family(env_id)}); use --preset smoke or paper"
        )
    preset = copy.deepcopy(table[env_family(env_id)])
    held_out = _held_out_kwargs(env_id) if preset.family == "generic" else None
    if held_out:
        # an env that declares its held-out tasks (the adapters do) is evaluated on them, during training and
        # in the final table, never on the tasks it trains on; an env without them is evaluated on eval seeds
        preset.config["eval"] = {**preset.config.get("eval", {}), "env_kwargs": dict(held_out)}
        preset = replace(preset, eval_splits=(EvalSplit("held_out", dict(held_out)),))
    return preset
