"""The Ray transport: Ray bootstrap, and a worker that is a Ray actor hosting a few envs.

Ray imports lazily (only a ``ray`` pool needs it); a missing Ray says which extra to install.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec
from stepgym.envs.pool.host import Command, EnvHost
from stepgym.envs.pool.results import WorkerDied

__all__ = ["RayWorker", "ensure_ray"]


def ensure_ray(spec: EnvSpec) -> None:
    """Start Ray in this process if needed, and make ``spec``'s env class reachable from the actors.

    Raises:
        gymnasium.error.DependencyNotInstalled: Ray is not installed.
    """
    try:
        import ray
    except ImportError as e:
        raise gym.error.DependencyNotInstalled(
            "the 'ray' env-pool backend needs Ray: pip install 'stepgym[ray]'"
        ) from e
    if not ray.is_initialized():
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    # An env class defined outside an installed package (a script, a test module) is shipped to
    # the actors by value, so third-party envs registered with gym.register work unchanged.
    ep = spec.entry_point
    module_name = getattr(ep, "__module__", None) if callable(ep) else None
    if module_name and module_name.split(".")[0] not in ("stepgym", "gymnasium"):
        from ray import cloudpickle  # Ray serialises with its vendored copy

        module = sys.modules.get(module_name)
        if module is not None and "site-packages" not in (getattr(module, "__file__", "") or ""):
            cloudpickle.register_pickle_by_value(module)


class RayWorker:
    """A Ray actor hosting a few envs (call :func:`ensure_ray` first)."""

    def __init__(self, spec: EnvSpec, env_kwargs: dict[str, Any], num_envs: int, num_cpus: float):
        import ray

        self.ray = ray
        self.args = (spec, env_kwargs, num_envs)
        self.actor_cls = ray.remote(num_cpus=num_cpus)(EnvHost)
        self._start()

    def _start(self) -> None:
        self.actor = self.actor_cls.remote(*self.args)
        self._refs: deque[Any] = deque()  # an actor runs its calls in submission order

    def send(self, cmd: Command, arg: Any) -> None:  # noqa: D102 - see transports.Worker
        self._refs.append(self.actor.serve.remote(cmd, arg))

    def ready(self) -> bool:  # noqa: D102
        if not self._refs:
            return False
        done, _ = self.ray.wait([self._refs[0]], timeout=0.0)
        return bool(done)

    def recv(self) -> Any:  # noqa: D102
        ref = self._refs.popleft()
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayActorError as e:
            raise WorkerDied(f"env Ray actor died: {type(e).__name__}") from e

    @classmethod
    def wait_any(cls, workers: Sequence[RayWorker], timeout: float) -> None:  # noqa: D102
        refs = [w._refs[0] for w in workers if w._refs]
        if refs:
            workers[0].ray.wait(refs, num_returns=1, timeout=timeout)

    def restart(self) -> None:  # noqa: D102
        self.kill()
        self._start()

    def rss_mb(self) -> float:  # noqa: D102
        try:
            return float(self.ray.get(self.actor.rss_mb.remote()))
        except self.ray.exceptions.RayActorError:
            return 0.0

    def kill(self) -> None:  # noqa: D102
        try:
            self.ray.kill(self.actor)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def close(self) -> None:  # noqa: D102
        self.kill()
