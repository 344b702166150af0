"""The env pool: ``num_envs`` copies of one env, stepped with ragged episodes over any transport.

The pool keeps each env's episode state and its request in flight (a :class:`Ticket`, see
:mod:`stepgym.envs.pool.tickets` for the state machine); the :class:`Dispatcher` carries the
tickets to the workers (:mod:`stepgym.envs.pool.transports`). Overview: :mod:`stepgym.envs.pool`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from gymnasium.envs.registration import EnvSpec
from stepgym.envs.ids import env_spec
from stepgym.envs.pool.episodes import Episodes, Reset
from stepgym.envs.pool.host import Command
from stepgym.envs.pool.memory import recycle_fat_workers
from stepgym.envs.pool.results import EnvStep, PoolStateError, WorkerDied, died_reset, died_step
from stepgym.envs.pool.tickets import Dispatcher, Ticket
from stepgym.envs.pool.transports import PoolBackend, Worker, start_workers

__all__ = ["EnvPool"]

logger = logging.getLogger(__name__)


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
        self._workers: list[Worker] = start_workers(
            backend, self.spec, kwargs, sizes, start_method=start_method, ray_num_cpus=ray_num_cpus
        )
        self._episodes = Episodes(self._where)
        self._dispatch = Dispatcher(self._workers, self._episodes.worker_died)

    # ------------------------------------------------------------------ public API
    @property
    def worker_restarts(self) -> int:
        """How many times a worker was replaced (death or memory cap)."""
        return self._dispatch.restarts

    @property
    def num_workers(self) -> int:
        """Number of hosts (1 for ``inprocess``)."""
        return len(self._workers)

    def active(self) -> list[int]:
        """Indices of envs in the middle of an episode (a reset still in flight does not count)."""
        return [i for i, a in enumerate(self._episodes.active) if a]

    def pending_resets(self) -> list[int]:
        """Indices of envs whose reset was started by :meth:`reset_async` and not yet collected."""
        return sorted(self._episodes.resetting)

    def pending_steps(self) -> list[int]:
        """Indices of envs whose step was started by :meth:`step_async` and not yet collected."""
        return sorted(self._episodes.stepping)

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
            if i in self._episodes.resetting:
                raise PoolStateError(f"env {i} already has a reset in flight; collect it with wait_resets() first")
            if i in self._episodes.stepping:
                raise PoolStateError(
                    f"env {i} has a step in flight; collect it with poll_steps()/wait_steps() before resetting it"
                )
        if self.max_worker_rss_mb is not None and self.backend != "inprocess":
            recycle_fat_workers(self._dispatch, self._episodes, idx, self.max_worker_rss_mb)
        for i in idx:
            self._episodes.active[i] = False
            self._episodes.lost.pop(i, None)
        for w, ii in self._by_worker(idx).items():
            payload = [(self._where[i][1], seeds[idx.index(i)], options[idx.index(i)]) for i in ii]
            ticket = Ticket(w, ii, died_reset)
            for i in ii:
                self._episodes.resetting[i] = ticket
            self._submit(ticket, "reset", payload)

    def poll_resets(self, timeout: float = 0.0) -> dict[int, Reset]:
        """Collect the resets that have finished, waiting up to ``timeout`` seconds for a first one.

        Returns:
            ``{index: (obs, info)}`` for every collected reset (possibly empty).
        """
        return self._poll(timeout, resets=True, steps=False)[0]

    def wait_resets(self, indices: Sequence[int] | None = None) -> dict[int, Reset]:
        """Wait for the resets in flight at ``indices`` (default: all of them) and collect them."""
        idx = self.pending_resets() if indices is None else list(indices)
        for i in idx:
            if i not in self._episodes.resetting:
                raise PoolStateError(f"env {i} has no reset in flight; start one with reset_async()")
        for i in idx:
            self._dispatch.wait(self._episodes.resetting[i])
        return self._episodes.collect_resets(idx)

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
            if i in self._episodes.resetting:
                raise PoolStateError(
                    f"env {i} has a reset in flight; collect it with wait_resets()/poll_resets() first"
                )
            if i in self._episodes.stepping:
                raise PoolStateError(
                    f"env {i} already has a step in flight; collect it with poll_steps()/wait_steps() first"
                )
            if i not in self._episodes.lost and not self._episodes.active[i]:
                raise PoolStateError(f"env {i} is not in an episode; reset it before stepping")
        sent = [i for i in actions if i not in self._episodes.lost]
        for i in [i for i in actions if i in self._episodes.lost]:
            # its worker died since the last step: the truncation is the result
            self._episodes.stepping[i] = Ticket.answered([i], [died_step(self._episodes.lost.pop(i))], died_step)
        for w, ii in self._by_worker(sent).items():
            ticket = Ticket(w, ii, died_step)
            for i in ii:
                self._episodes.stepping[i] = ticket
            self._submit(ticket, "step", [(self._where[i][1], actions[i]) for i in ii])

    def poll_steps(self, timeout: float = 0.0) -> dict[int, EnvStep]:
        """Collect the steps that have finished, waiting up to ``timeout`` seconds for a first one.

        Returns:
            ``{index: EnvStep}`` for every collected step (possibly empty; empty at once when no
            step is in flight).
        """
        return self._poll(timeout, resets=False, steps=True)[1]

    def poll(self, timeout: float = 0.0) -> tuple[dict[int, Reset], dict[int, EnvStep]]:
        """Collect the resets and the steps that have finished, waiting up to ``timeout`` s for a first one.

        One call for a driver that keeps both kinds in flight (a finished env starts its next episode
        with :meth:`reset_async` while the others step with :meth:`step_async`).

        Returns:
            ``(resets, steps)``: ``{index: (obs, info)}`` and ``{index: EnvStep}`` (both possibly
            empty; at once when nothing is in flight).
        """
        return self._poll(timeout, resets=True, steps=True)

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
            if i not in self._episodes.stepping:
                raise PoolStateError(f"env {i} has no step in flight; start one with step_async()")
        error: BaseException | None = None
        for i in idx:
            try:
                self._dispatch.wait(self._episodes.stepping[i])
            except Exception as e:  # noqa: BLE001 - wait for the others first, so no request is left behind
                error = error or e
        out = self._episodes.collect_steps(idx)
        if error is not None:
            raise error
        return out

    def get_attr(self, name: str, indices: Sequence[int] | None = None) -> list[Any]:
        """``getattr(env.unwrapped, name)`` for each env (e.g. ``"protocol"``)."""
        idx = list(range(self.num_envs)) if indices is None else list(indices)
        tickets = []
        for w, ii in self._by_worker(idx).items():
            ticket = Ticket(w, ii, WorkerDied)
            self._submit(ticket, "get_attr", ([self._where[i][1] for i in ii], name))
            tickets.append(ticket)
        out: dict[int, Any] = {}
        for ticket in tickets:
            self._dispatch.wait(ticket)
            for i, v in zip(ticket.indices, ticket.value):
                if isinstance(v, WorkerDied):
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
        self._workers.clear()  # shared with the dispatcher
        self._episodes.resetting.clear()
        self._episodes.stepping.clear()

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
    def _poll(self, timeout: float, *, resets: bool, steps: bool) -> tuple[dict[int, Reset], dict[int, EnvStep]]:
        """Collect the answered resets and/or steps, waiting up to ``timeout`` s for a first one."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self._dispatch.receive_ready(self._episodes.owed_by(resets=resets, steps=steps))
            got = self._episodes.collect_answered(resets=resets, steps=steps)
            left = deadline - time.monotonic()
            if got[0] or got[1] or not self._episodes.tickets(resets=resets, steps=steps) or left <= 0:
                return got
            self._dispatch.wait_any(self._episodes.owed_by(resets=resets, steps=steps), left)

    def _by_worker(self, idx: Sequence[int]) -> dict[int, list[int]]:
        """``idx`` grouped by worker, in order."""
        out: dict[int, list[int]] = {}
        for i in idx:
            out.setdefault(self._where[i][0], []).append(i)
        return out

    def _submit(self, ticket: Ticket, cmd: Command, payload: Any) -> None:
        try:
            self._dispatch.submit(ticket, cmd, payload)
        except BaseException:
            self._episodes.forget(ticket)  # never sent: the envs are free again
            raise
