"""How the pool reaches its hosts: the :class:`Worker` protocol and its in-process and process transports.

A worker carries requests to one :class:`~stepgym.envs.pool.host.EnvHost` and answers them in the
order they were sent. Every transport does the same five things: ``send`` a request, tell whether
its oldest reply is ``ready``, ``recv`` it, ``wait_any`` (block until one of several workers has a
reply) and ``restart``. The Ray transport lives in :mod:`stepgym.envs.pool.ray_actors`.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from gymnasium.envs.registration import EnvSpec
from stepgym.envs.pool.host import Command, EnvHost
from stepgym.envs.pool.memory import rss_mb
from stepgym.envs.pool.results import WorkerDied, error_info

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["LocalWorker", "PoolBackend", "ProcessWorker", "Worker", "start_workers"]

PoolBackend = Literal["inprocess", "process", "ray"]


@runtime_checkable
class Worker(Protocol):
    """One host of envs behind a transport; requests are answered in the order they are sent."""

    def send(self, cmd: Command, arg: Any) -> None:
        """Send one request; raises :class:`WorkerDied` when the worker is gone."""

    def ready(self) -> bool:
        """True when the oldest reply (or the worker's death) can be received without blocking."""

    def recv(self) -> Any:
        """The oldest reply; raises :class:`WorkerDied`, or ``RuntimeError`` when the host itself failed."""

    @classmethod
    def wait_any(cls, workers: Sequence[Self], timeout: float) -> None:
        """Block until one of ``workers`` (all of this transport) is :meth:`ready`, up to ``timeout`` s."""

    def restart(self) -> None:
        """Replace the host with a fresh one (its envs are rebuilt at their next reset)."""

    def rss_mb(self) -> float:
        """The host's memory in MiB (0 where it cannot be measured or shares the pool's process)."""

    def kill(self) -> None:
        """Stop the host at once."""

    def close(self) -> None:
        """Stop the host politely (its envs are closed)."""


class LocalWorker:
    """The in-process 'worker': calls the host directly, so every request is answered as it is sent."""

    def __init__(self, spec: EnvSpec, env_kwargs: dict[str, Any], num_envs: int):
        self.host = EnvHost(spec, env_kwargs, num_envs)
        self._pending: deque[Any] = deque()

    def send(self, cmd: Command, arg: Any) -> None:  # noqa: D102 - see Worker
        self._pending.append(self.host.serve(cmd, arg))

    def ready(self) -> bool:  # noqa: D102
        return True

    def recv(self) -> Any:  # noqa: D102
        return self._pending.popleft()

    @classmethod
    def wait_any(cls, workers: Sequence[LocalWorker], timeout: float) -> None:  # noqa: D102
        return  # every request is answered when it is sent

    def restart(self) -> None:  # noqa: D102 - an in-process host never dies; envs are rebuilt lazily
        self._pending.clear()

    def rss_mb(self) -> float:  # noqa: D102
        return 0.0

    def kill(self) -> None:  # noqa: D102
        self.host.close()

    def close(self) -> None:  # noqa: D102
        self.host.close()


def _worker_main(conn: Connection, spec: EnvSpec, env_kwargs: dict[str, Any], num_envs: int) -> None:
    """The loop of a worker process: serve requests from the pipe until ``close`` (or the pipe ends)."""
    host = EnvHost(spec, env_kwargs, num_envs)
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "close":
                break
            try:
                conn.send(("ok", host.serve(cmd, arg)))
            except Exception as e:  # noqa: BLE001 - report to the parent
                conn.send(("error", error_info(cmd, e)["error"]))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        host.close()
        conn.close()


class ProcessWorker:
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
        self.conn: Connection = parent

    def send(self, cmd: Command, arg: Any) -> None:  # noqa: D102
        try:
            self.conn.send((cmd, arg))
        except (BrokenPipeError, OSError) as e:
            raise WorkerDied(self._death_reason()) from e

    def ready(self) -> bool:  # noqa: D102
        try:
            return bool(self.conn.poll(0.0))
        except (EOFError, OSError):
            return True  # recv() will report the death

    def recv(self) -> Any:  # noqa: D102
        try:
            status, value = self.conn.recv()
        except (EOFError, ConnectionResetError, OSError) as e:
            raise WorkerDied(self._death_reason()) from e
        if status == "error":
            raise RuntimeError(value)
        return value

    @classmethod
    def wait_any(cls, workers: Sequence[ProcessWorker], timeout: float) -> None:  # noqa: D102
        wait_connections([w.conn for w in workers], timeout)

    def _death_reason(self) -> str:
        self.proc.join(timeout=1.0)
        return f"env worker process {self.proc.pid} died (exit code {self.proc.exitcode})"

    def restart(self) -> None:  # noqa: D102
        self.kill()
        self._start()

    def rss_mb(self) -> float:  # noqa: D102
        return rss_mb(self.proc.pid)

    def kill(self) -> None:  # noqa: D102
        try:
            self.conn.close()
        except OSError:
            pass
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5.0)

    def close(self) -> None:  # noqa: D102
        try:
            self.conn.send(("close", None))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=5.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5.0)


def start_workers(
    backend: PoolBackend,
    spec: EnvSpec,
    env_kwargs: dict[str, Any],
    sizes: Sequence[int],
    *,
    start_method: str,
    ray_num_cpus: float,
) -> list[Worker]:
    """One worker per entry of ``sizes`` (its number of envs); ``inprocess`` takes a single size."""
    if backend == "inprocess":
        return [LocalWorker(spec, env_kwargs, sum(sizes))]
    if backend == "process":
        ctx = mp.get_context(start_method)
        return [ProcessWorker(ctx, spec, env_kwargs, n) for n in sizes]
    from stepgym.envs.pool.ray_actors import RayWorker, ensure_ray  # Ray imports only for a Ray pool

    ensure_ray(spec)
    return [RayWorker(spec, env_kwargs, n, ray_num_cpus) for n in sizes]
