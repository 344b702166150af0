"""Env ids as users write them: short aliases, registered ids and Gymnasium's ``module:EnvId``.

``gym.make("mymodule:MyEnv-v0")`` imports ``mymodule`` (whose import calls ``gym.register``) and
then makes ``MyEnv-v0``. stepgym keeps that form as the env id of a run, so every process that
makes the env (pool workers, a later ``--eval-only``) imports the module the same way.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Mapping

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec

__all__ = ["EnvIdError", "env_spec", "resolve_env_id"]


class EnvIdError(ValueError):
    """An env id that names no registered env, or whose module cannot be imported."""


def _import_env_module(module: str) -> None:
    """Import ``module``; like ``python -m``, the current directory is searched too (after ``sys.path``)."""
    try:
        importlib.import_module(module)
        return
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != module.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        # `python script.py` puts the script's folder on sys.path, not the current directory, so a user's
        # env module next to where they run the command would not be found otherwise
        sys.path.append(cwd)
    importlib.import_module(module)


def env_spec(env_id: str | EnvSpec) -> EnvSpec:
    """The spec of an id, accepting ``gym.make``'s ``"module:ns/Name-v0"`` form (imports ``module``)."""
    if isinstance(env_id, EnvSpec):
        return env_id
    if ":" in env_id:
        module, _, env_id = env_id.partition(":")
        _import_env_module(module)
    return gym.spec(env_id)


def resolve_env_id(name: str, aliases: Mapping[str, str] | None = None) -> str:
    """A user's env name -> the env id to run: an alias, a registered id, or ``module:EnvId``.

    ``module:EnvId`` imports ``module`` (which must register ``EnvId``) and is returned as given, so
    the run's config makes the env the same way in every process.

    Raises:
        EnvIdError: The module cannot be imported, or the id is not registered (with the closest ids).
    """
    import stepgym.envs  # noqa: F401 -- registers the built-in ids

    aliases = dict(aliases or {})
    if name in aliases or name.lower() in aliases:
        return aliases.get(name) or aliases[name.lower()]
    env_id, module = name, None
    if ":" in name:
        module, _, env_id = name.partition(":")
        try:
            _import_env_module(module)
        except ImportError as e:
            raise EnvIdError(
                f"env {name!r}: could not import module {module!r} ({e}); it must be importable from "
                "sys.path or the current directory and call gym.register on import"
            ) from e
    if env_id in gym.registry:
        return name
    where = f" after importing {module!r} (does it call gym.register({env_id!r}, ...)?)" if module else ""
    known = [*aliases, *sorted(gym.registry)]
    close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise EnvIdError(
        f"unknown env {env_id!r}{where}; {hint}use an alias ({', '.join(aliases) or 'none'}), an id registered "
        "with gym.register, or 'module:Env-v0' to import the module that registers it"
    )
