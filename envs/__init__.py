"""Gymnasium text environments and the records they emit.

Importing this package registers the built-in env ids with string entry points (the env modules
and their heavy backends load only on ``gym.make``). It never imports torch.
"""

from __future__ import annotations

from gymnasium.envs.registration import register, registry
from stepgym.envs.adapters import list_adapter_env_ids, register_adapter_envs
from stepgym.envs.base import ParsedAction, TextEnv, parse_tagged_action, strip_thinking, think_spans
from stepgym.envs.capabilities import (
    SEED_SUBSET,
    Task,
    env_instructions,
    env_task_ids,
    env_task_subset,
    seed_tasks,
)
from stepgym.envs.data import DataNotFoundError, MalformedDataError, read_jsonl, resolve_data_dir
from stepgym.envs.ids import EnvIdError, env_spec, resolve_env_id
from stepgym.envs.pool import EnvHost, EnvPool, EnvStep, PoolStateError
from stepgym.envs.records import JsonDict, StepRecord, TokenSequence, Trajectory
from stepgym.envs.spaces import TextSpace

__all__ = [
    "BUILTIN_ENVS",
    "DataNotFoundError",
    "EnvHost",
    "EnvIdError",
    "EnvPool",
    "EnvStep",
    "JsonDict",
    "MalformedDataError",
    "ParsedAction",
    "PoolStateError",
    "SEED_SUBSET",
    "StepRecord",
    "TextEnv",
    "Task",
    "TextSpace",
    "TokenSequence",
    "Trajectory",
    "env_instructions",
    "env_spec",
    "env_task_ids",
    "env_task_subset",
    "list_adapter_env_ids",
    "parse_tagged_action",
    "read_jsonl",
    "resolve_data_dir",
    "resolve_env_id",
    "seed_tasks",
    "strip_thinking",
    "think_spans",
]

BUILTIN_ENVS: dict[str, str] = {
    # id: entry point  (one line per env; keep sorted)
    "stepgym/ALFWorld-v0": "stepgym.envs.alfworld:ALFWorldEnv",
    "stepgym/Sandbox-Delayed-v0": "stepgym.envs.sandbox:SandboxDelayedEnv",
    "stepgym/Sandbox-Null-v0": "stepgym.envs.sandbox:SandboxNullEnv",
    "stepgym/Sandbox-One-v0": "stepgym.envs.sandbox:SandboxOneEnv",
    "stepgym/Sandbox-Two-v0": "stepgym.envs.sandbox:SandboxTwoEnv",
    "stepgym/SearchQA-v0": "stepgym.envs.searchqa:SearchQAEnv",
}
"""Every env id stepgym registers, with its string entry point."""

for _env_id, _entry_point in BUILTIN_ENVS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry_point)

# the ecosystem adapters' ids (textarena/..., reasoning_gym/..., ...): entry points only, no ecosystem imported
register_adapter_envs()
