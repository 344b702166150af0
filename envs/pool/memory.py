"""Worker memory: how much a process holds, and which workers may be recycled for it.

Envs that leak (ALFWorld's TextWorld games, a Lucene searcher's caches) grow their worker's
memory episode after episode; the pool replaces a worker whose memory passes its cap, but only
between episodes, so no running episode is cut.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # types only: the host imports this module
    from stepgym.envs.pool.episodes import Episodes
    from stepgym.envs.pool.tickets import Dispatcher

__all__ = ["recyclable_workers", "recycle_fat_workers", "rss_mb"]

logger = logging.getLogger(__name__)


def rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process in MiB (Linux ``/proc``; 0 where unavailable)."""
    try:
        with open(f"/proc/{pid or os.getpid()}/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def recyclable_workers(
    owner: Sequence[int],
    *,
    busy: Collection[int],
    pending: Collection[int],
    active: Sequence[bool],
    resetting: Collection[int],
) -> list[int]:
    """The workers that may be replaced now, before the resets of the envs ``resetting`` start.

    Args:
        owner: The worker of each env (``owner[i]`` hosts env ``i``).
        busy: Workers with requests in flight.
        pending: Envs with a reset or step in flight or not collected yet.
        active: Whether each env is in the middle of an episode.
        resetting: The envs about to be reset.

    Returns:
        The idle workers all of whose running episodes are about to be reset, and at least one.
    """
    out = []
    for w in sorted(set(owner)):
        envs = [i for i, ww in enumerate(owner) if ww == w]
        if w in busy or any(i in pending for i in envs):
            continue  # requests in flight, or a started episode not collected yet
        if any(active[i] and i not in resetting for i in envs):
            continue  # never cut an episode that is still running
        if any(i in resetting for i in envs):
            out.append(w)
    return out


def recycle_fat_workers(dispatch: Dispatcher, episodes: Episodes, resetting: Sequence[int], cap_mb: float) -> None:
    """Replace every worker that may be recycled now and holds more than ``cap_mb`` MiB."""
    candidates = recyclable_workers(
        [w for w, _ in episodes.where],
        busy={w for w, q in enumerate(dispatch.queues) if q},
        pending=episodes.resetting.keys() | episodes.stepping.keys(),
        active=episodes.active,
        resetting=set(resetting),
    )
    for w in candidates:
        rss = dispatch.workers[w].rss_mb()
        if rss > cap_mb:
            logger.info("recycling env worker %d at %.0f MiB (cap %.0f)", w, rss, cap_mb)
            dispatch.replace(w)
