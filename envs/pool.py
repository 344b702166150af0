"""Run many text envs at once with ragged episodes, in-process, in worker processes or on Ray.

One interface, three backends. The envs of a pool live in *hosts* (:class:`EnvHost`): one host in
the main process (``inprocess``), one per worker process (``process``) or one per Ray actor
(``ray``). Episodes are ragged: :meth:`EnvPool.step` takes actions only for the envs that are
still running, and a finished env waits until it is reset (no Gymnasium vector auto-reset).

Faults are contained: an env that raises in ``reset``/``step`` yields a truncated step whose
``info["error"]`` holds the error, and the env is rebuilt at its next reset. A worker that dies
(killed, out of memory) yields truncated steps for the episodes it held, is replaced, and the
other workers' episodes go on. A worker whose memory passes ``max_worker_rss_mb`` is recycled
between episodes.

Resets can overlap with steps: :meth:`EnvPool.reset_async` starts resets and returns at once,
:meth:`EnvPool.step` goes on with the envs of other workers meanwhile, and
:meth:`EnvPool.poll_resets` / :meth:`EnvPool.wait_resets` collect the first observations. Each
worker answers its requests in order, so a step waits only for the resets queued on its own worker.

Steps can run free too: :meth:`EnvPool.step_async` sends actions and returns at once, and
:meth:`EnvPool.poll_steps` / :meth:`EnvPool.wait_steps` collect whatever has finished, so a driver can
give each env its next action as soon as its previous step returns instead of waiting, every round,
for the slowest env of the pool (:meth:`EnvPool.step` is ``step_async`` + ``wait_steps``: lockstep).
:meth:`EnvPool.poll` collects finished resets and steps in one call. With the ``inprocess`` backend
the steps run right inside ``step_async``.

An env class may define ``step_batch(envs, actions) -> list[tuple]`` as a classmethod: a host then
steps all of its envs of that class with one call (e.g. one batched retrieval for many searches).
If ``step_batch`` raises, every episode of that call is truncated with the error (never re-stepped:
some envs may already have applied their action).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as _wait_connections
from typing import Any, Literal

import gymnasium as gym
from gymnasium.envs.registration import EnvSpec
from stepgym.envs.ids import env_spec

__all__ = ["EnvHost", "EnvPool", "EnvStep", "PoolBackend", "PoolStateError"]

logger = logging.getLogger(__name__)

PoolBackend = Literal["inprocess", "process", "ray"]
_TRANSPARENT_WRAPPERS = ("OrderEnforcing", "PassiveEnvChecker")


class PoolStateError(RuntimeError, ValueError):
    """An env index was used in a state that does not allow it (e.g. stepped while its step is in flight).

    A ``RuntimeError`` (as the pool's state errors always were) and a ``ValueError`` (the caller's
    indices are wrong), so either ``except`` catches it.
    """


@dataclass
class EnvStep:
    """The result of one env step (or of a failed one)."""

    observation: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """The episode is over (terminated or truncated)."""
        return self.terminated or self.truncated


def _error_info(where: str, exc: BaseException) -> dict[str, Any]:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    # the full traceback travels with the error: a run that stops on env faults shows where the env failed
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"error": f"{where}: {text}", "error_type": type(exc).__name__, "error_traceback": tb}


def _died_step(why: str) -> EnvStep:
    """The result of a step whose worker died before answering."""
    return EnvStep("", 0.0, False, True, {"error": why, "error_type": "WorkerDied"})




def _rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MiB (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open(f"/proc/{pid or os.getpid()}/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class EnvHost:
    """Owns a few envs (by local slot) and runs ``reset``/``step`` on them, catching env errors."""

    def __init__(self, spec: EnvSpec, env_kwargs: Mapping[str, Any], num_envs: int):
        self.spec = spec
        self.env_kwargs = dict(env_kwargs)
        self.envs: list[gym.Env[Any, Any] | None] = [None] * num_envs

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
                out.append(("", _error_info("reset", e)))
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
                    results[s] = EnvStep("", 0.0, False, True, _error_info("step_batch", e))
        return [results[slot] for slot, _ in items]

    def _step_one(self, slot: int, action: str) -> EnvStep:
        try:
            obs, reward, terminated, truncated, info = self._env(slot).step(action)
            return EnvStep(obs, float(reward), bool(terminated), bool(truncated), dict(info))
        except Exception as e:  # noqa: BLE001 - contained: the episode is truncated
            self._drop(slot)
            return EnvStep("", 0.0, False, True, _error_info("step", e))

    def get_attr(self, slots: Sequence[int], name: str) -> list[Any]:
        """``getattr(env.unwrapped, name)`` for each slot (the value must pickle)."""
        return [getattr(self._env(s).unwrapped, name) for s in slots]

    def rss_mb(self) -> float:
        """This host's process memory in MiB."""
        return _rss_mb()

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


# --------------------------------------------------------------------------- worker processes
def _worker_main(conn: Any, spec: EnvSpec, env_kwargs: dict[str, Any], num_envs: int) -> None:
    host = EnvHost(spec, env_kwargs, num_envs)
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "close":
                break
            try:
                if cmd == "get_attr":
                    result: Any = host.get_attr(*arg)
                else:
                    result = getattr(host, cmd)(*arg) if isinstance(arg, tuple) else getattr(host, cmd)(arg)
                conn.send(("ok", result))
            except Exception as e:  # noqa: BLE001 - report to the parent
                conn.send(("error", _error_info(cmd, e)["error"]))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        host.close()
        conn.close()


class _WorkerDied(RuntimeError):
    pass


class _ProcessWorker:
    """A worker process hosting a few envs, reached through a pipe."""

    def __init__(self, ctx: Any, spec: EnvSpec, env_kwargs: dict[str, Any], num_envs: int):
        self.args = (spec, env_kwargs, num_envs)
        self.ctx = ctx
        self._start()

    def _start(self) -> None:
        parent, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker_main, args=(child, *self.args), daemon=True)
        self.proc.start()
        child.close()
        self.conn = parent

    def send(self, cmd: str, arg: Any) -> None:
        try:
            self.conn.send((cmd, arg))
        except (BrokenPipeError, OSError) as e:
            raise _WorkerDied(self._death_reason()) from e

    def recv(self) -> Any:
        try:
            status, value = self.conn.recv()
        except (EOFError, ConnectionResetError, OSError) as e:
            raise _WorkerDied(self._death_reason()) from e
        if status == "error":
            raise RuntimeError(value)
        return value

    def ready(self, timeout: float = 0.0) -> bool:
        """True when a reply (or the worker's death) can be received without blocking."""
        try:
            return bool(self.conn.poll(timeout))
        except (EOFError, OSError):
            return True  # recv() will report the death

    def _death_reason(self) -> str:
        self.proc.join(timeout=1.0)
        return f"env worker process {self.proc.pid} died (exit code {self.proc.exitcode})"

    def restart(self) -> None:
        self.kill()
        self._start()

    def rss_mb(self) -> float:
        return _rss_mb(self.proc.pid)

    def kill(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5.0)

    def close(self) -> None:
        try:
            self.conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=5.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5.0)


class _LocalWorker:
    """The in-process 'worker': calls the host directly."""

    def __init__(self, spec: EnvSpec, env_kwargs: dict[str, Any], num_envs: int):
        self.host = EnvHost(spec, env_kwargs, num_envs)
        self._pending: deque[Any] = deque()

    def send(self, cmd: str, arg: Any) -> None:
        self._pending.append(self.host.get_attr(*arg) if cmd == "get_attr" else getattr(self.host, cmd)(arg))

    def recv(self) -> Any:
        return self._pending.popleft()

    def ready(self, timeout: float = 0.0) -> bool:
        return True

    def restart(self) -> None:  # an in-process host never dies; envs are rebuilt lazily
        self._pending.clear()

    def rss_mb(self) -> float:
        return 0.0

    def kill(self) -> None:
        self.host.close()

    def close(self) -> None:
        self.host.close()


class _RayWorker:
    """A Ray actor hosting a few envs."""

    def __init__(self, spec: EnvSpec, env_kwargs: dict[str, Any], num_envs: int, num_cpus: float):
        import ray

        self.ray = ray
        self.args = (spec, env_kwargs, num_envs)
        self.actor_cls = ray.remote(num_cpus=num_cpus)(EnvHost)
        self._start()

    def _start(self) -> None:
        self.actor = self.actor_cls.remote(*self.args)
        self._refs: deque[Any] = deque()  # an actor runs its calls in submission order

    def send(self, cmd: str, arg: Any) -> None:
        method = getattr(self.actor, cmd)
        self._refs.append(method.remote(*arg) if cmd == "get_attr" else method.remote(arg))

    def ready(self, timeout: float = 0.0) -> bool:
        if not self._refs:
            return False
        done, _ = self.ray.wait([self._refs[0]], timeout=timeout)
        return bool(done)

    def recv(self) -> Any:
        ref = self._refs.popleft()
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayActorError as e:
            raise _WorkerDied(f"env Ray actor died: {type(e).__name__}") from e

    def restart(self) -> None:
        self.kill()
        self._start()

    def rss_mb(self) -> float:
        try:
            return float(self.ray.get(self.actor.rss_mb.remote()))
        except self.ray.exceptions.RayActorError:
            return 0.0

    def kill(self) -> None:
        try:
            self.ray.kill(self.actor)
        except Exception:  # noqa: BLE001 - already gone
            pass

    def close(self) -> None:
        self.kill()


def _ensure_ray(spec: EnvSpec) -> None:
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
        import sys

        from ray import cloudpickle  # Ray serialises with its vendored copy

        module = sys.modules.get(module_name)
        if module is not None and "site-packages" not in (getattr(module, "__file__", "") or ""):
            cloudpickle.register_pickle_by_value(module)


class EnvPool:
    """``num_envs`` copies of one env, stepped together with ragged episodes.

    Args:
        env_id: A registered id (``"stepgym/SearchQA-v0"``, ``"pkg:ns/Name-v0"``) or an ``EnvSpec``.
        num_envs: How many envs.
        backend: ``"inprocess"``, ``"process"`` (worker processes) or ``"ray"`` (Ray actors).
        num_workers: Workers for ``process``/``ray`` (default: one per env); envs are spread
            over them in contiguous blocks.
        env_kwargs: Keyword arguments for ``gym.make``.
        max_worker_rss_mb: Recycle a worker whose memory exceeds this between episodes.
        start_method: ``multiprocessing`` start method for ``process`` (``fork`` keeps envs
            registered at run time visible to the workers).
        ray_num_cpus: CPUs Ray reserves for each env actor.

    Example:
        >>> pool = EnvPool("stepgym/SearchQA-v0", 4, backend="process")  # doctest: +SKIP
        >>> obs = pool.reset(seeds=[0, 1, 2, 3])                        # doctest: +SKIP
        >>> out = pool.step({0: "<answer>Paris</answer>"})               # doctest: +SKIP
    """

    def __init__(
        self,
        env_id: str | EnvSpec,
        num_envs: int,
        *,
        backend: PoolBackend = "inprocess",
        num_workers: int | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        max_worker_rss_mb: float | None = None,
        start_method: str = "fork",
        ray_num_cpus: float = 0.5,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if backend not in ("inprocess", "process", "ray"):
            raise ValueError(f"unknown backend {backend!r}; use 'inprocess', 'process' or 'ray'")
        self.spec = env_spec(env_id)
        self.num_envs = num_envs
        self.backend: PoolBackend = backend
        self.max_worker_rss_mb = max_worker_rss_mb
        kwargs = dict(env_kwargs or {})
        workers = 1 if backend == "inprocess" else min(num_workers or num_envs, num_envs)
        if workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        # slot i -> (worker, local slot); contiguous blocks
        sizes = [num_envs // workers + (1 if w < num_envs % workers else 0) for w in range(workers)]
        self._where: list[tuple[int, int]] = [(w, j) for w, n in enumerate(sizes) for j in range(n)]
        self._workers: list[Any] = []
        if backend == "inprocess":
            self._workers = [_LocalWorker(self.spec, kwargs, num_envs)]
        elif backend == "process":
            ctx = mp.get_context(start_method)
            self._workers = [_ProcessWorker(ctx, self.spec, kwargs, n) for n in sizes]
        else:
            _ensure_ray(self.spec)
            self._workers = [_RayWorker(self.spec, kwargs, n, ray_num_cpus) for n in sizes]
        self._active = [False] * num_envs
        self._lost: dict[int, str] = {}  # env index -> why its episode ended with a dead worker
        self._queues: list[deque[_Ticket]] = [deque() for _ in self._workers]  # requests in flight
        self._resetting: dict[int, _Ticket] = {}  # env index -> its reset in flight (or not collected)
        self._stepping: dict[int, _Ticket] = {}  # env index -> its step in flight (or not collected)
        self.worker_restarts = 0
        """How many times a worker was replaced (death or memory cap)."""

    # ------------------------------------------------------------------ public API
    @property
    def num_workers(self) -> int:
        """Number of hosts (1 for ``inprocess``)."""
        return len(self._workers)

    def active(self) -> list[int]:
        """Indices of envs in the middle of an episode (a reset still in flight does not count)."""
        return [i for i, a in enumerate(self._active) if a]

    def pending_resets(self) -> list[int]:
        """Indices of envs whose reset was started by :meth:`reset_async` and not yet collected."""
        return sorted(self._resetting)

    def pending_steps(self) -> list[int]:
        """Indices of envs whose step was started by :meth:`step_async` and not yet collected."""
        return sorted(self._stepping)

    def reset(
        self,
        seeds: Sequence[int | None] | None = None,
        options: Sequence[dict[str, Any] | None] | None = None,
        indices: Sequence[int] | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """Reset the envs at ``indices`` (default: all); returns ``(obs, info)`` per index.

        A reset that fails returns ``("", info)`` with ``info["error"]``; that env is not active.
        """
        idx = list(range(self.num_envs)) if indices is None else list(indices)
        self.reset_async(seeds, options, idx)
        done = self.wait_resets(idx)
        return [done[i] for i in idx]

    def reset_async(
        self,
        seeds: Sequence[int | None] | None = None,
        options: Sequence[dict[str, Any] | None] | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        """Start resetting the envs at ``indices`` (default: all) and return at once.

        The resets run in the workers while :meth:`step` goes on with envs of *other* workers (an
        env's step waits only for resets queued before it on its own worker). Collect the first
        observations with :meth:`poll_resets` or :meth:`wait_resets`; an env cannot be stepped
        before its reset is collected. With the ``inprocess`` backend the reset runs right here.
        """
        idx = list(range(self.num_envs)) if indices is None else list(indices)
        seeds = [None] * len(idx) if seeds is None else list(seeds)
        options = [None] * len(idx) if options is None else list(options)
        if not len(seeds) == len(options) == len(idx):
            raise ValueError(f"reset got {len(idx)} indices, {len(seeds)} seeds and {len(options)} options")
        for i in idx:
            if not 0 <= i < self.num_envs:
                raise IndexError(f"env index {i} out of range for a pool of {self.num_envs}")
            if i in self._resetting:
                raise PoolStateError(f"env {i} already has a reset in flight; collect it with wait_resets() first")
            if i in self._stepping:
                raise PoolStateError(
                    f"env {i} has a step in flight; collect it with poll_steps()/wait_steps() before resetting it"
                )
        self._recycle_fat_workers(idx)
        for i in idx:
            self._active[i] = False
            self._lost.pop(i, None)
        by_worker: dict[int, list[int]] = {}
        for i in idx:
            by_worker.setdefault(self._where[i][0], []).append(i)
        for w, ii in by_worker.items():
            payload = [(self._where[i][1], seeds[idx.index(i)], options[idx.index(i)]) for i in ii]
            ticket = _Ticket(w, ii, lambda why: ("", {"error": why, "error_type": "WorkerDied"}))
            for i in ii:
                self._resetting[i] = ticket
            self._submit(ticket, "reset", payload)

    def poll_resets(self, timeout: float = 0.0) -> dict[int, tuple[str, dict[str, Any]]]:
        """Collect the resets that have finished, waiting up to ``timeout`` seconds for a first one.

        Returns:
            ``{index: (obs, info)}`` for every collected reset (possibly empty).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            for w in {t.worker for t in self._resetting.values()}:
                while self._queues[w] and self._workers[w].ready(0.0):
                    self._advance(w)
            out = self._collect_resets([i for i, t in self._resetting.items() if t.done])
            left = deadline - time.monotonic()
            if out or not self._resetting or left <= 0:
                return out
            self._wait_any({t.worker for t in self._resetting.values() if not t.done}, left)

    def wait_resets(self, indices: Sequence[int] | None = None) -> dict[int, tuple[str, dict[str, Any]]]:
        """Wait for the resets in flight at ``indices`` (default: all of them) and collect them."""
        idx = self.pending_resets() if indices is None else list(indices)
        for i in idx:
            if i not in self._resetting:
                raise PoolStateError(f"env {i} has no reset in flight; start one with reset_async()")
        for i in idx:
            self._wait(self._resetting[i])
        return self._collect_resets(idx)

    def step(self, actions: Mapping[int, str]) -> dict[int, EnvStep]:
        """Step the envs named in ``actions`` (index -> raw model text) and wait for all of them.

        Envs not named are untouched. Resets in flight on other workers keep running; this call does
        not wait for them. Lockstep: it returns when the slowest of these steps is done (see
        :meth:`step_async` to let each env go on as soon as its own step is done).

        Raises:
            IndexError: An index is out of range.
            PoolStateError: An env has a reset or a step in flight, or is not in an episode.
        """
        self.step_async(actions)
        return self.wait_steps(list(actions))

    def step_async(self, actions: Mapping[int, str]) -> None:
        """Start stepping the envs named in ``actions`` (index -> raw model text) and return at once.

        Collect the results with :meth:`poll_steps` (whatever has finished) or :meth:`wait_steps`.
        Each worker runs its requests in order; envs of different workers step at the same time.
        Faults are reported as in :meth:`step`: a dead worker's episodes come back truncated with
        ``info["error"]``. With the ``inprocess`` backend the steps run here, before this returns.

        Raises:
            IndexError: An index is out of range.
            PoolStateError: An env has a reset or a step in flight (not collected yet), or is not in
                an episode. Nothing is sent when any index is refused.
        """
        for i in actions:  # check every index before sending anything
            if not 0 <= i < self.num_envs:
                raise IndexError(f"env index {i} out of range for a pool of {self.num_envs}")
            if i in self._resetting:
                raise PoolStateError(
                    f"env {i} has a reset in flight; collect it with wait_resets()/poll_resets() first"
                )
            if i in self._stepping:
                raise PoolStateError(
                    f"env {i} already has a step in flight; collect it with poll_steps()/wait_steps() first"
                )
            if i not in self._lost and not self._active[i]:
                raise PoolStateError(f"env {i} is not in an episode; reset it before stepping")
        by_worker: dict[int, list[int]] = {}
        for i in actions:
            if i in self._lost:  # its worker died since the last step: the truncation is the result
                ticket = _Ticket(-1, [i], _died_step, [_died_step(self._lost.pop(i))], True)
                self._stepping[i] = ticket
            else:
                by_worker.setdefault(self._where[i][0], []).append(i)
        for w, ii in by_worker.items():
            ticket = _Ticket(w, ii, _died_step)
            for i in ii:
                self._stepping[i] = ticket
            self._submit(ticket, "step", [(self._where[i][1], actions[i]) for i in ii])

    def poll_steps(self, timeout: float = 0.0) -> dict[int, EnvStep]:
        """Collect the steps that have finished, waiting up to ``timeout`` seconds for a first one.

        Returns:
            ``{index: EnvStep}`` for every collected step (possibly empty; empty at once when no
            step is in flight).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            for w in {t.worker for t in self._stepping.values() if not t.done}:
                while self._queues[w] and self._workers[w].ready(0.0):
                    self._advance(w)
            out = self._collect_steps([i for i, t in self._stepping.items() if t.done])
            left = deadline - time.monotonic()
            if out or not self._stepping or left <= 0:
                return out
            self._wait_any({t.worker for t in self._stepping.values() if not t.done}, left)

    def poll(self, timeout: float = 0.0) -> tuple[dict[int, tuple[str, dict[str, Any]]], dict[int, EnvStep]]:
        """Collect the resets and the steps that have finished, waiting up to ``timeout`` s for a first one.

        One call for a driver that keeps both kinds in flight (a finished env starts its next episode
        with :meth:`reset_async` while the others step with :meth:`step_async`).

        Returns:
            ``(resets, steps)``: ``{index: (obs, info)}`` and ``{index: EnvStep}`` (both possibly
            empty; at once when nothing is in flight).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            tickets = [*self._resetting.values(), *self._stepping.values()]
            for w in {t.worker for t in tickets if not t.done}:
                while self._queues[w] and self._workers[w].ready(0.0):
                    self._advance(w)
            resets = self._collect_resets([i for i, t in self._resetting.items() if t.done])
            steps = self._collect_steps([i for i, t in self._stepping.items() if t.done])
            left = deadline - time.monotonic()
            if resets or steps or not (self._resetting or self._stepping) or left <= 0:
                return resets, steps
            tickets = [*self._resetting.values(), *self._stepping.values()]
            self._wait_any({t.worker for t in tickets if not t.done}, left)

    def wait_steps(self, indices: Sequence[int] | None = None) -> dict[int, EnvStep]:
        """Wait for the steps in flight at ``indices`` (default: all of them) and collect them.

        Raises:
            PoolStateError: An index has no step in flight.
            RuntimeError: A worker itself failed to answer (not an env error, which truncates the
                episode). The other steps are still waited for and collected first, and the failed
                ones count as truncated, so the pool stays usable.
        """
        idx = self.pending_steps() if indices is None else list(indices)
        for i in idx:
            if i not in self._stepping:
                raise PoolStateError(f"env {i} has no step in flight; start one with step_async()")
        error: BaseException | None = None
        for i in idx:
            try:
                self._wait(self._stepping[i])
            except Exception as e:  # noqa: BLE001 - wait for the others first, so no request is left behind
                error = error or e
        out = self._collect_steps(idx)
        if error is not None:
            raise error
        return out

    def get_attr(self, name: str, indices: Sequence[int] | None = None) -> list[Any]:
        """``getattr(env.unwrapped, name)`` for each env (e.g. ``"protocol"``)."""
        idx = list(range(self.num_envs)) if indices is None else list(indices)
        by_worker: dict[int, list[int]] = {}
        for i in idx:
            by_worker.setdefault(self._where[i][0], []).append(i)
        tickets = []
        for w, ii in by_worker.items():
            ticket = _Ticket(w, ii, _WorkerDied)
            self._submit(ticket, "get_attr", ([self._where[i][1] for i in ii], name))
            tickets.append(ticket)
        out: dict[int, Any] = {}
        for ticket in tickets:
            self._wait(ticket)
            for i, v in zip(ticket.indices, ticket.value):
                if isinstance(v, _WorkerDied):
                    raise RuntimeError(f"get_attr({name!r}) failed: {v}")
                out[i] = v
        return [out[i] for i in idx]

    def worker_rss_mb(self) -> list[float]:
        """Resident memory of each worker in MiB (0 for the in-process backend)."""
        return [w.rss_mb() for w in self._workers]

    def close(self) -> None:
        """Stop every worker and close every env."""
        for w in self._workers:
            w.close()
        self._workers = []
        self._resetting.clear()
        self._stepping.clear()

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if self._workers:
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ------------------------------------------------------------------ internals
    def _submit(self, ticket: _Ticket, cmd: str, payload: Any) -> None:
        w = ticket.worker
        self._queues[w].append(ticket)
        try:
            self._workers[w].send(cmd, payload)
        except _WorkerDied as e:
            self._worker_died(w, str(e))
        except BaseException:
            self._queues[w].remove(ticket)
            for i in ticket.indices:
                if self._resetting.get(i) is ticket:
                    del self._resetting[i]
                if self._stepping.get(i) is ticket:
                    del self._stepping[i]
            raise

    def _advance(self, w: int) -> None:
        """Receive the reply to worker ``w``'s oldest request in flight."""
        ticket = self._queues[w][0]
        try:
            value = self._workers[w].recv()
        except _WorkerDied as e:
            self._worker_died(w, str(e))
            return
        except BaseException as e:  # the worker answered with an error of its own (not an env's)
            self._queues[w].popleft()
            ticket.value, ticket.done = [ticket.on_death(str(e)) for _ in ticket.indices], True
            raise
        self._queues[w].popleft()
        ticket.value, ticket.done = list(value), True

    def _wait_any(self, workers: set[int], timeout: float) -> None:
        """Block until one of ``workers`` has a reply ready (or its death to report), up to ``timeout`` s."""
        if self.backend == "process":
            _wait_connections([self._workers[w].conn for w in workers], timeout)
        elif self.backend == "ray":
            refs = [self._workers[w]._refs[0] for w in workers if self._workers[w]._refs]
            if refs:
                self._workers[0].ray.wait(refs, num_returns=1, timeout=timeout)
        # inprocess: every request is answered when it is sent

    def _wait(self, ticket: _Ticket) -> None:
        while not ticket.done:
            self._advance(ticket.worker)

    def _worker_died(self, w: int, why: str) -> None:
        """Every request in flight on ``w`` gets its death result; ``w`` is replaced."""
        tickets = list(self._queues[w])
        self._queues[w].clear()
        covered: set[int] = set()
        for ticket in tickets:
            ticket.value, ticket.done = [ticket.on_death(why) for _ in ticket.indices], True
            covered.update(ticket.indices)
        logger.warning("%s; replacing it (envs %s)", why, sorted(covered))
        self._replace_worker(w)
        for i, (ww, _) in enumerate(self._where):
            if ww != w or i in covered:
                continue
            if i in self._resetting:  # a finished reset not collected yet: that episode is gone too
                ticket = self._resetting[i]
                ticket.value[ticket.indices.index(i)] = ("", {"error": why, "error_type": "WorkerDied"})
            elif i in self._stepping and self._stepping[i].value[self._stepping[i].indices.index(i)].done:
                continue  # a finished step not collected yet that ended its episode: nothing is lost
            elif self._active[i]:
                # episodes on the dead worker that were not stepped now are lost too:
                # their next step reports the truncation
                self._active[i] = False
                self._lost[i] = why
                logger.warning("env %d lost its episode: %s", i, why)

    def _collect_steps(self, idx: Sequence[int]) -> dict[int, EnvStep]:
        out = {}
        for i in idx:
            ticket = self._stepping.pop(i)
            result = ticket.value[ticket.indices.index(i)]
            if result.done:
                self._active[i] = False
            out[i] = result
        return out

    def _collect_resets(self, idx: Sequence[int]) -> dict[int, tuple[str, dict[str, Any]]]:
        out = {}
        for i in idx:
            ticket = self._resetting.pop(i)
            obs, info = ticket.value[ticket.indices.index(i)]
            self._active[i] = "error" not in info
            out[i] = (obs, info)
        return out

    def _replace_worker(self, w: int) -> None:
        self._workers[w].restart()
        self.worker_restarts += 1

    def _recycle_fat_workers(self, resetting: Sequence[int]) -> None:
        if self.max_worker_rss_mb is None or self.backend == "inprocess":
            return
        resetting_set = set(resetting)
        for w, worker in enumerate(self._workers):
            slots = [i for i, (ww, _) in enumerate(self._where) if ww == w]
            if self._queues[w] or any(i in self._resetting or i in self._stepping for i in slots):
                continue  # requests in flight, or a started episode not collected yet
            if any(self._active[i] and i not in resetting_set for i in slots):
                continue  # never cut an episode that is still running
            if not any(i in resetting_set for i in slots):
                continue
            rss = worker.rss_mb()
            if rss > self.max_worker_rss_mb:
                logger.info("recycling env worker %d at %.0f MiB (cap %.0f)", w, rss, self.max_worker_rss_mb)
                self._replace_worker(w)


@dataclass
class _Ticket:
    """One request in flight to one worker, for the envs ``indices`` (in payload order)."""

    worker: int
    indices: list[int]
    on_death: Callable[[str], Any]
    """The result each env gets when the worker dies before answering."""
    value: list[Any] = field(default_factory=list)
    done: bool = False
