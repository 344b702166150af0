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

The package, in reading order: ``results`` (what comes back, faults included), ``host`` (the
envs of one worker), ``transports`` (the :class:`Worker` protocol; in-process and process
workers) and ``ray_actors`` (Ray bootstrap and actors), ``tickets`` (requests in flight: the ticket
state machine and the dispatcher), ``episodes`` (each env's episode state), ``memory`` (worker
memory and recycling) and ``env_pool`` (:class:`EnvPool`, the public face).
"""

from __future__ import annotations

from stepgym.envs.pool.env_pool import EnvPool
from stepgym.envs.pool.host import EnvHost
from stepgym.envs.pool.results import EnvStep, PoolStateError
from stepgym.envs.pool.transports import PoolBackend, Worker

__all__ = ["EnvHost", "EnvPool", "EnvStep", "PoolBackend", "PoolStateError", "Worker"]
