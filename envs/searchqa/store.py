r"""A passage store over a JSONL collection on disk: row ``i`` -> :class:`Passage` without loading the file.

Search-R1's wiki-18 layout pairs ``e5_Flat.index`` with ``wiki-18.jsonl`` (21M lines, ~14 GB): FAISS
row ``i`` is line ``i``, each line ``{"id": "...", "contents": "\\"Title\\"\\ntext"}``. Loading that into
Python objects would take tens of GB, so the store keeps one byte offset per line (8 bytes x 21M =
168 MB, an ``.npy`` file read memory-mapped) and memory-maps the JSONL itself: a lookup parses only the
lines it returns, and the OS keeps just the touched pages resident.

The offsets are computed once (one sequential read of the file) and cached under
``<index_dir>/passage-store/<hash of path, size, mtime>/offsets.npy``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import filelock
from stepgym.envs.data import DataNotFoundError, MalformedDataError
from stepgym.envs.searchqa.data import Passage, passage_from_row

__all__ = ["PassageStore"]

logger = logging.getLogger(__name__)


class PassageStore:
    """Random access to the passages of a JSONL file by row number (the FAISS row of a passage).

    Args:
        path: The JSONL collection (``id`` and ``contents``, or ``id``, ``title`` and ``text`` per line).
        cache_dir: Where the line offsets are cached (``<index_dir>`` of the retriever).
    """

    def __init__(self, path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]):
        import numpy as np

        self.path = Path(path).expanduser().resolve()
        if not self.path.is_file():
            raise DataNotFoundError(
                f"passage store: {self.path} is not a file; pass corpus_path= the JSONL collection whose line i "
                "is row i of the index (e.g. Search-R1's wiki-18.jsonl)"
            )
        st = self.path.stat()
        key = hashlib.sha256(f"{self.path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
        folder = Path(cache_dir).expanduser() / "passage-store" / key
        offsets_file = folder / "offsets.npy"
        folder.mkdir(parents=True, exist_ok=True)
        self.build_seconds: float | None = None
        """Seconds spent indexing the line offsets in this process; ``None`` when read from the cache."""
        with filelock.FileLock(str(folder / "offsets.lock")):
            if not offsets_file.is_file():
                self.build_seconds = self._index_lines(np, offsets_file)
        self._offsets = np.load(offsets_file, mmap_mode="r")
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close() / at exit with the mmap
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def _index_lines(self, np: Any, out: Path) -> float:
        t0 = time.perf_counter()
        logger.info("indexing the line offsets of %s (once)", self.path)
        offsets = [0]
        with open(self.path, "rb") as f:
            for line in iter(lambda: f.readline(), b""):
                offsets.append(offsets[-1] + len(line))
        if len(offsets) == 1:
            raise MalformedDataError(f"passage store: {self.path} is empty")
        arr = np.asarray(offsets, dtype=np.uint64)  # n + 1 entries: line i spans [arr[i], arr[i + 1])
        tmp = out.with_name("offsets.tmp.npy")
        np.save(tmp, arr)
        tmp.rename(out)
        seconds = time.perf_counter() - t0
        logger.info("indexed %d lines in %.1f s", len(arr) - 1, seconds)
        return seconds

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def get(self, rows: Sequence[int]) -> list[Passage]:
        """The passages at ``rows`` (line numbers, 0-based), in that order.

        Raises:
            IndexError: A row outside the file.
            MalformedDataError: A line that is not a JSON passage.
        """
        out = []
        n = len(self)
        for row in rows:
            row = int(row)
            if not 0 <= row < n:
                raise IndexError(f"passage row {row} is outside {self.path} ({n} lines); index and corpus differ")
            line = self._map[int(self._offsets[row]) : int(self._offsets[row + 1])]
            try:
                out.append(passage_from_row(json.loads(line)))
            except (ValueError, TypeError, KeyError) as e:
                raise MalformedDataError(f"{self.path}:{row + 1}: not a JSON passage ({e})") from e
        return out

    def close(self) -> None:
        """Release the memory map and the file."""
        self._map.close()
        self._file.close()
