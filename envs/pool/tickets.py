"""Requests in flight: the ticket state machine, and the dispatcher that moves tickets through it.

A :class:`Ticket` is one request (a reset, a step or a ``get_attr`` for some envs) sent to one
worker. Its states:

- **sent**: queued on its worker (``done`` is false); each worker answers its queue in order;
- **answered**: ``value`` holds one result per env (``done`` is true) -- the worker's reply, or,
  when the worker died first, ``on_death(why)`` for each env (:meth:`Ticket.fail`);
- **collected**: the pool has handed the results to its caller and forgotten the ticket.

The pool keeps each env's ticket (reset or step) from ``sent`` until ``collected``, so an env has
at most one request in flight; the :class:`Dispatcher` keeps each worker's queue of ``sent`` tickets.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from stepgym.envs.pool.host import Command
from stepgym.envs.pool.results import WorkerDied
from stepgym.envs.pool.transports import Worker

__all__ = ["Dispatcher", "Ticket"]

logger = logging.getLogger(__name__)


@dataclass
class Ticket:
    """One request in flight to one worker, for the envs ``indices`` (in payload order)."""

    worker: int
    """The worker that answers it (-1 for a ticket answered by the pool itself)."""
    indices: list[int]
    on_death: Callable[[str], Any]
    """The result each env gets when the worker dies before answering."""
    value: list[Any] = field(default_factory=list)
    """One result per env of ``indices`` once answered."""
    done: bool = False
    """Answered (by the worker or by its death)."""

    @classmethod
    def answered(cls, indices: list[int], value: list[Any], on_death: Callable[[str], Any]) -> Ticket:
        """A ticket the pool answers itself (no worker involved)."""
        return cls(-1, indices, on_death, value, True)

    def answer(self, value: Iterable[Any]) -> None:
        """Move from sent to answered, with the worker's reply."""
        self.value, self.done = list(value), True

    def fail(self, why: str) -> None:
        """Move from sent to answered, with the death result of every env."""
        self.value, self.done = [self.on_death(why) for _ in self.indices], True


class Dispatcher:
    """Sends tickets to the workers and receives their replies in order; replaces dead workers.

    Args:
        workers: The pool's workers (this list is shared with the pool, not copied).
        on_death: Called as ``on_death(worker, why, envs)`` after a dead worker's tickets were
            failed and the worker replaced; ``envs`` are the envs of those tickets.
    """

    def __init__(self, workers: list[Worker], on_death: Callable[[int, str, set[int]], None]):
        self.workers = workers
        self.queues: list[deque[Ticket]] = [deque() for _ in workers]  # sent tickets, oldest first
        self.on_death = on_death
        self.restarts = 0
        """How many times a worker was replaced (death or memory cap)."""

    def submit(self, ticket: Ticket, cmd: Command, payload: Any) -> None:
        """Send ``ticket``'s request; a worker found dead fails its tickets (this one too).

        Raises:
            BaseException: Whatever else sending raised; the ticket is not queued then.
        """
        w = ticket.worker
        self.queues[w].append(ticket)
        try:
            self.workers[w].send(cmd, payload)
        except WorkerDied as e:
            self._died(w, str(e))
        except BaseException:
            self.queues[w].remove(ticket)
            raise

    def advance(self, w: int) -> None:
        """Receive the reply to worker ``w``'s oldest ticket.

        Raises:
            RuntimeError: The worker answered with an error of its own (not an env's); the ticket
                is failed with it, so the pool stays usable.
        """
        ticket = self.queues[w][0]
        try:
            value = self.workers[w].recv()
        except WorkerDied as e:
            self._died(w, str(e))
            return
        except BaseException as e:
            self.queues[w].popleft()
            ticket.fail(str(e))
            raise
        self.queues[w].popleft()
        ticket.answer(value)

    def receive_ready(self, workers: Iterable[int]) -> None:
        """Receive every reply of ``workers`` that is there now, without blocking."""
        for w in workers:
            while self.queues[w] and self.workers[w].ready():
                self.advance(w)

    def wait_any(self, workers: Iterable[int], timeout: float) -> None:
        """Block until one of ``workers`` has a reply ready (or its death to report), up to ``timeout`` s."""
        if self.workers:
            type(self.workers[0]).wait_any([self.workers[w] for w in workers], timeout)

    def wait(self, ticket: Ticket) -> None:
        """Block until ``ticket`` is answered."""
        while not ticket.done:
            self.advance(ticket.worker)

    def replace(self, w: int) -> None:
        """Restart worker ``w`` (its envs are rebuilt at their next reset)."""
        self.workers[w].restart()
        self.restarts += 1

    def _died(self, w: int, why: str) -> None:
        """Every ticket sent to ``w`` gets its death result; ``w`` is replaced."""
        tickets = list(self.queues[w])
        self.queues[w].clear()
        covered: set[int] = set()
        for ticket in tickets:
            ticket.fail(why)
            covered.update(ticket.indices)
        logger.warning("%s; replacing it (envs %s)", why, sorted(covered))
        self.replace(w)
        self.on_death(w, why, covered)
