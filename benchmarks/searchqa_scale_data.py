"""Synthetic Search-QA collections and vectors at scale, derived from the shipped passages (no download).

Used by ``bench_searchqa.py --scale``. Nothing here claims to be Wikipedia: the figures it yields are
for index size, memory, build time and throughput, not for answer quality.

Passages: the 16,058 shipped passages come first, unchanged (so their ids and the recall checks keep
working); passage ``j`` after them is ``syn-j`` with the title of shipped passage ``a = j mod 16,058``
and a body of the first ``ceil(n/2)`` words of ``a``'s text followed by a same-length run of words
from another shipped passage ``b`` (seeded, ``numpy.random.default_rng(seed)``). Lengths and the word
distribution therefore match the shipped collection; the texts are word salad half way through.

Vectors: a 384-dimensional (all-MiniLM-L6-v2 sized) unit vector per passage, ``normalise(0.7 * e[a] +
0.3 * e[b] + 0.05 * noise)``, where ``e`` are REAL MiniLM embeddings of a sample of shipped passages
(``a``/``b`` drawn among that sample) and ``noise`` is standard normal PER DIMENSION, so its norm is
~0.05 * sqrt(384) ~ 0.98, as large as the signal: the vectors are much less clustered than real
embeddings, a pessimistic case for IVF-PQ recall (pass a smaller ``noise`` for a tighter set). This
avoids encoding 2M passages (~15 passages/s here on an idle core; 2M would take ~37 hours).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = ["latency_ms", "make_collection", "rss_mb", "synthetic_vectors"]


def make_collection(corpus: str | os.PathLike[str], out: str | os.PathLike[str], n: int, seed: int = 0) -> Path:
    """Write ``n`` passages (the shipped ones first, then synthetic ones) to ``out`` as JSONL; returns ``out``.

    Written to ``out.tmp`` and renamed, so a finished file is never half-written; an existing ``out``
    with ``n`` lines is kept as it is.
    """
    out = Path(out)
    done = out.with_suffix(out.suffix + ".done")
    if out.is_file() and done.is_file() and done.read_text().strip() == str(n):
        return out
    rows = [json.loads(line) for line in Path(corpus).read_text(encoding="utf-8").splitlines() if line.strip()]
    titles, words = [], []
    for r in rows:
        title, _, text = r["contents"].partition("\n")
        titles.append(title)
        words.append(text.split())
    rng = np.random.default_rng(seed)
    m = len(rows)
    tmp = out.with_suffix(out.suffix + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for j in range(n):
            if j < m:
                f.write(json.dumps(rows[j], ensure_ascii=False) + "\n")
                continue
            a, b = j % m, int(rng.integers(m))
            wa, wb = words[a], words[b]
            half = (len(wa) + 1) // 2
            start = int(rng.integers(max(1, len(wb) - half + 1)))
            text = " ".join(wa[:half] + wb[start : start + half])
            f.write(json.dumps({"id": f"syn-{j}", "contents": f"{titles[a]}\n{text}"}, ensure_ascii=False) + "\n")
    tmp.rename(out)
    done.write_text(str(n))
    return out


def synthetic_vectors(
    base: np.ndarray, n: int, chunk: int = 65536, seed: int = 0, noise: float = 0.05
) -> Iterator[np.ndarray]:
    """Yield ``n`` unit vectors in chunks: ``normalise(0.7 e[a] + 0.3 e[b] + noise * N(0, I))`` over ``base`` rows.

    ``base`` (``[m, d]``, unit rows) are real embeddings; row ``i < m`` of the output is ``base[i]`` itself.
    The same ``(base, n, chunk, seed)`` always yields the same vectors.
    """
    m, d = base.shape
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        a = rng.integers(m, size=size)
        b = rng.integers(m, size=size)
        v = 0.7 * base[a] + 0.3 * base[b] + noise * rng.standard_normal((size, d), dtype=np.float32)
        real = np.arange(start, start + size) < m  # the first m rows are the real embeddings
        v[real] = base[np.arange(start, start + size)[real]]
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        yield v.astype(np.float32, copy=False)


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident set size of this process in MB, from /proc/self/status."""
    fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def latency_ms(fn: Callable[[str], object], queries: Sequence[str]) -> tuple[float, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    times.sort()
    return 1000 * times[len(times) // 2], 1000 * times[min(len(times) - 1, int(0.99 * len(times)))]
