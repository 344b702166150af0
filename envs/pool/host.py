"""Env hosting: the few envs one worker owns, run with their faults caught.

Every transport carries the same requests to an :class:`EnvHost` (:meth:`EnvHost.serve`), in the
main process, in a worker process or in a Ray actor.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec
from stepgym.envs.pool.memory import rss_mb
from stepgym.envs.pool.results import EnvStep, error_info

__all__ = ["Command", "EnvHost"]

logger = logging.getLogger(__name__)

Command = Literal["reset", "step", "get_attr"]
"""A request a worker carries to its host (see :meth:`EnvHost.serve`)."""

_TRANSPARENT_WRAPPERS = ("OrderEnforcing", "PassiveEnvChecker")


class EnvHost:
    """Owns a few envs (by local slot) and runs ``reset``/``step`` on them, catching env errors."""

    def __init__(self, spec: EnvSpec, env_kwargs: Mapping[str, Any], num_envs: int):
        self.spec = spec
        self.env_kwargs = dict(env_kwargs)
        self.envs: list[gym.Env[Any, Any] | None] = [None] * num_envs

    def serve(self, cmd: Command, arg: Any) -> Any:
        """Answer one request: ``reset(items)``, ``step(items)`` or ``get_attr(slots, name)``."""
        if cmd == "reset":
            return self.reset(arg)
        if cmd == "step":
            return self.step(arg)
        if cmd == "get_attr":
            return self.get_attr(*arg)
        raise ValueError(f"unknown env-host command {cmd!r}; use 'reset', 'step' or 'get_attr'")

    def _env(self, slot: int) -> gym.Env[Any, Any]:
        env = self.envs[slot]
        if env is None:
            env = gym.make(self.spec, **self.env_kwargs)
            self.envs[slot] = env
        return env

    def _drop(self, slot: int) -> None:
        env = self.envs[slot]
        self.envs[slot] = None
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - a broken env may fail to close too
                logger.debug("closing a broken env failed", exc_info=True)

    def reset(self, items: Sequence[tuple[int, int | None, dict[str, Any] | None]]) -> list[tuple[str, dict[str, Any]]]:
        """Reset ``(slot, seed, options)`` items; a failure gives ``("", {"error": ...})``."""
        out = []
        for slot, seed, options in items:
            try:
                obs, info = self._env(slot).reset(seed=seed, options=options)
                out.append((obs, dict(info)))
            except Exception as e:  # noqa: BLE001 - contained: reported in info
                self._drop(slot)
                out.append(("", error_info("reset", e)))
        return out

    def step(self, items: Sequence[tuple[int, str]]) -> list[EnvStep]:
        """Step ``(slot, action)`` items; envs of a class with ``step_batch`` go in one call."""
        results: dict[int, EnvStep] = {}
        batched: dict[type, list[tuple[int, str]]] = {}
        for slot, action in items:
            env = self._env(slot)
            hook = getattr(type(env.unwrapped), "step_batch", None)
            if hook is not None and _is_transparent(env):
                batched.setdefault(type(env.unwrapped), []).append((slot, action))
            else:
                results[slot] = self._step_one(slot, action)
        for cls, group in batched.items():
            slots = [s for s, _ in group]
            envs = [self._env(s).unwrapped for s in slots]
            try:
                outs = cls.step_batch(envs, [a for _, a in group])  # type: ignore[attr-defined]
                if len(outs) != len(group):
                    raise RuntimeError(f"step_batch returned {len(outs)} results for {len(group)} envs")
                for s, o in zip(slots, outs):
                    results[s] = EnvStep(o[0], float(o[1]), bool(o[2]), bool(o[3]), dict(o[4]))
            except Exception as e:  # noqa: BLE001 - contained: the group's episodes are truncated
                # Some envs may already have stepped inside the failed batch, so stepping them again
                # one by one could apply an action twice: every episode of the group ends here.
                logger.warning("step_batch of %s failed; truncating its %d episodes", cls.__name__, len(group))
                for s in slots:
                    self._drop(s)
                    results[s] = EnvStep("", 0.0, False, True, error_info("step_batch", e))
        return [results[slot] for slot, _ in items]

    def _step_one(self, slot: int, action: str) -> EnvStep:
        try:
            obs, reward, terminated, truncated, info = self._env(slot).step(action)
            return EnvStep(obs, float(reward), bool(terminated), bool(truncated), dict(info))
        except Exception as e:  # noqa: BLE001 - contained: the episode is truncated
            self._drop(slot)
            return EnvStep("", 0.0, False, True, error_info("step", e))

    def get_attr(self, slots: Sequence[int], name: str) -> list[Any]:
        """``getattr(env.unwrapped, name)`` for each slot (the value must pickle)."""
        return [getattr(self._env(s).unwrapped, name) for s in slots]

    def rss_mb(self) -> float:
        """This host's process memory in MiB."""
        return rss_mb()

    def close(self) -> None:
        """Close every env."""
        for slot in range(len(self.envs)):
            self._drop(slot)


def _is_transparent(env: gym.Env[Any, Any]) -> bool:
    """True when ``env`` is its unwrapped env under wrappers that do not change step results."""
    while isinstance(env, gym.Wrapper):
        if type(env).__name__ not in _TRANSPARENT_WRAPPERS:
            return False
        env = env.env
    return True
