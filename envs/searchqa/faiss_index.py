"""FAISS indexes for dense retrieval: built from factory strings, read memory-mapped, tuned by name.

Index types are FAISS's own factory strings (``faiss.index_factory``; the FAISS wiki "The index
factory"), always with inner-product metric over unit vectors (= cosine), as Search-R1 builds
``e5_Flat.index`` (``search_r1/search/index_builder.py``). Memory per vector of dimension ``d``:

- ``"Flat"``: exact; ``4 d`` bytes (1,536 B at d=384, 3,072 B for E5-base's 768).
- ``"HNSW32"``: graph over the float vectors; ``4 d + ~2 * 32 * 4`` bytes, fast, no training.
- ``"IVF{nlist},Flat"``: exact vectors in ``nlist`` lists, ``nprobe`` lists searched; ``4 d + 8``.
- ``"IVF{nlist},PQ{m}"``: ``m``-byte product-quantised codes; ``m + 8`` bytes (56 B at m=48): the one
  that fits 21M passages in a few GB. ``d`` must be divisible by ``m``.

Reading: ``faiss.IO_FLAG_MMAP_IFC`` maps the codes of flat and IVF indexes (inverted lists included)
straight from the file, so they are paged in on demand and shared between processes (measured with
FAISS 1.15: opening a 146 MB IVF-Flat index adds 4 MB of RSS, against 146 MB read normally; the older
``IO_FLAG_MMAP`` maps IVF lists only and fails on flat codes); ``mmap=False`` reads it all into RAM.
Search parameters (``nprobe``, ``efSearch``) are set through ``faiss.ParameterSpace``, which reaches
them through wrappers such as ``IndexIDMap``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["build_index", "factory_slug", "read_index", "set_search_params", "training_size"]

logger = logging.getLogger(__name__)

_IVF_RE = re.compile(r"IVF(\d+)")


def factory_slug(factory: str) -> str:
    """A file-name-safe form of a factory string (``"IVF1024,PQ48"`` -> ``"IVF1024_PQ48"``)."""
    return re.sub(r"[^A-Za-z0-9]+", "_", factory).strip("_")


def training_size(factory: str, n: int) -> int:
    """Vectors to train on: 64 per IVF list (FAISS warns below 39), at least 10,000 for PQ, at most ``n``."""
    m = _IVF_RE.search(factory)
    want = 64 * int(m.group(1)) if m else 0
    if "PQ" in factory:
        want = max(want, 10_000)
    return min(n, want)


def build_index(factory: str, dim: int, chunks: Iterable[Any], train: Any | None = None) -> Any:
    """Build an inner-product FAISS index from a factory string, adding the vectors chunk by chunk.

    Args:
        factory: A FAISS factory string (``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``, ``"IVF1024,PQ48"``).
        dim: Vector dimension.
        chunks: ``[n_i, dim]`` float32 arrays, added in order (row ids 0, 1, ...).
        train: ``[t, dim]`` float32 training vectors; needed when the type must be trained (IVF, PQ).

    Raises:
        ValueError: A bad factory string, or training vectors missing / too few.
    """
    import faiss

    try:
        index = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(
            f"FAISS cannot build the index type {factory!r} at dimension {dim} ({str(e).strip().splitlines()[-1]}); "
            "use a factory string such as 'Flat', 'HNSW32', 'IVF1024,Flat' or 'IVF1024,PQ48' (PQ m must divide dim)"
        ) from e
    t0 = time.perf_counter()
    if not index.is_trained:
        if train is None or len(train) < 1:
            raise ValueError(f"index type {factory!r} must be trained: pass training vectors")
        m = _IVF_RE.search(factory)
        if m and len(train) < int(m.group(1)):
            raise ValueError(
                f"index type {factory!r} needs at least {m.group(1)} training vectors (one per list), got "
                f"{len(train)}; use fewer IVF lists for a small collection"
            )
        index.train(train)
        logger.info("trained %s on %d vectors in %.1f s", factory, len(train), time.perf_counter() - t0)
    for chunk in chunks:
        index.add(chunk)
    return index


def read_index(path: str | os.PathLike[str], mmap: bool = True) -> Any:
    """Read a FAISS index file, memory-mapped where FAISS supports it for that type (module docstring).

    Raises:
        FileNotFoundError: No such file.
    """
    import faiss

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index {path} does not exist; pass index_path= an index written by faiss")
    if not mmap:
        return faiss.read_index(str(path))
    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:
        logger.info("FAISS cannot memory-map %s; reading it into RAM", path, exc_info=True)
        return faiss.read_index(str(path))


def set_search_params(index: Any, **params: int | None) -> None:
    """Set search-time parameters by FAISS name (``nprobe`` for IVF, ``efSearch`` for HNSW); ``None`` skips.

    Raises:
        ValueError: The parameter does not apply to this index type.
    """
    import faiss

    space = faiss.ParameterSpace()
    for name, value in params.items():
        if value is None:
            continue
        try:
            space.set_index_parameter(index, name, float(value))
        except RuntimeError as e:
            raise ValueError(
                f"search parameter {name}={value} does not apply to this FAISS index ({type(index).__name__}): "
                "nprobe is for IVF types, efSearch for HNSW types"
            ) from e
