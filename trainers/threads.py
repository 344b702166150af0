"""The thread policy: the trainer and the in-process generator share torch's CPU thread pool, sized once.

torch defaults to one thread per *logical* CPU. On a machine whose CPUs are shared (hyper-threads,
other jobs) that oversubscribes the cores: issue 15 measured an update at 15.7 s with 2 threads on
a loaded 2-core machine vs 2.4 s with 1. The policy: ``TrainConfig.threads`` when set, else
``OMP_NUM_THREADS`` when the user exported it, else the number of *physical* cores this process may
run on (its CPU affinity, hyper-thread siblings counted once). It is applied once, at the start of
training, and recorded as ``system/torch_threads`` and ``system/physical_cores`` in every step's
metrics (the run's record, ``metrics.jsonl``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ThreadPolicy", "apply_thread_policy", "physical_cores"]

logger = logging.getLogger(__name__)


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows have no affinity API
        return list(range(os.cpu_count() or 1))


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux sysfs topology; else the logical count)."""
    cpus = _allowed_cpus()
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (topo.joinpath("physical_package_id").read_text().strip(), topo.joinpath("core_id").read_text().strip())
            )
        except OSError:
            return len(cpus)  # no topology to read: count logical CPUs
    return max(len(cores), 1)


@dataclass(frozen=True)
class ThreadPolicy:
    """What :func:`apply_thread_policy` chose."""

    threads: int
    """``torch.get_num_threads()`` after the policy."""
    physical_cores: int
    """Physical cores available to this process."""
    source: str
    """``config``, ``OMP_NUM_THREADS`` or ``physical cores``."""

    def metrics(self) -> dict[str, float]:
        """``system/...`` keys for the run's metrics."""
        return {"system/torch_threads": float(self.threads), "system/physical_cores": float(self.physical_cores)}


def apply_thread_policy(threads: int | None) -> ThreadPolicy:
    """Size torch's intra-op thread pool (module docstring) and return what was chosen.

    Raises:
        ValueError: ``threads`` < 1, or ``OMP_NUM_THREADS`` is not a positive integer.
    """
    import torch

    cores = physical_cores()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1 or None (= physical cores), got {threads}")
        n, source = threads, "config"
    elif os.environ.get("OMP_NUM_THREADS"):
        raw = os.environ["OMP_NUM_THREADS"]
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"OMP_NUM_THREADS={raw!r} is not a positive integer; unset it or set e.g. 1")
        n, source = int(raw), "OMP_NUM_THREADS"
    else:
        n, source = cores, "physical cores"
    if n > cores:
        logger.warning("%d torch threads on %d physical cores oversubscribes them (%s)", n, cores, source)
    torch.set_num_threads(n)
    logger.info("torch threads: %d (%s; %d physical cores)", n, source, cores)
    return ThreadPolicy(n, cores, source)
