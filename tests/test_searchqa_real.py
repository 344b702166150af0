"""Search-QA on the real data (``shared/data/searchqa``): BM25 on the 16k-passage collection, oracle EM.

The Lucene index is built once per test session into a temporary cache folder (~5 s).
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from stepgym.agents.searchqa_agents import OracleSearchQAAgent
from stepgym.envs import EnvPool
from stepgym.envs.searchqa import SUBSETS, SearchQAEnv, load_collection, load_questions
from stepgym.envs.searchqa import retrievers as retr

PRODIGAL = "who told the story of the prodigal son"


@pytest.fixture(scope="session")
def real_index_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("searchqa_index")


@pytest.fixture(scope="session")
def lucene(real_index_dir):
    return retr.get_retriever("bm25", load_collection(), real_index_dir)


def test_collection_hash_keys_the_cache(lucene, real_index_dir):
    coll = load_collection()
    assert len(coll) == 16058
    assert lucene.path == real_index_dir / coll.content_hash / "lucene-bm25"
    assert json.loads((lucene.path / "done.json").read_text())["passages"] == 16058


@pytest.mark.parametrize("name", ["bm25", "bm25s"])
def test_bm25_finds_the_known_passage(name, lucene, real_index_dir):
    env = SearchQAEnv(subset="nq", split="all", retriever=name, index_dir=real_index_dir)
    obs, info = env.reset(options={"task_id": "nq/nq_test_3283"})
    assert info["question"] == PRODIGAL and info["golden_answers"] == ["Jesus Christ"]
    obs, *_ = env.step(f"<search>{PRODIGAL}</search>")
    # p006404 "Parable of the Prodigal Son" (it names Jesus Christ) is in the top 3 of both BM25s
    assert obs.startswith("<information>Doc 1(Title: ") and obs.count("\nDoc ") == 2
    assert '(Title: "Parable of the Prodigal Son") ' in obs and "Jesus Christ" in obs


def test_second_start_reuses_the_index(lucene, real_index_dir):
    code = (
        "import json, time; from stepgym.envs.searchqa import retrievers as r, load_collection; "
        f"t = time.perf_counter(); x = r.LuceneBM25Retriever(load_collection(), {str(real_index_dir)!r}); "
        "hits = x.search(['who told the story of the prodigal son'], 3)[0]; "
        "print(json.dumps({'built': x.build_seconds, 's': time.perf_counter() - t, 'ids': [p.id for p in hits]}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["built"] is None  # opened from the cache, not rebuilt
    assert "p006404" in res["ids"]
    assert res["ids"] == [p.id for p in lucene.search([PRODIGAL], 3)[0]]  # same index, same ranking


def test_oracle_em_is_one_on_a_sample_of_every_subset(lucene, real_index_dir, monkeypatch):
    per_subset = 12
    rng = np.random.default_rng(0)
    tasks = []
    for subset in SUBSETS:
        ids = [q.task_id for q in load_questions(subset, "all")]
        tasks += [ids[i] for i in sorted(rng.choice(len(ids), per_subset, replace=False))]
    kwargs = {"subset": "all", "split": "all", "retriever": "bm25", "index_dir": real_index_dir}
    pool = EnvPool("stepgym/SearchQA-v0", len(tasks), env_kwargs=kwargs)
    calls = []
    real = lucene.search
    monkeypatch.setattr(lucene, "search", lambda qs, k: calls.append(len(qs)) or real(qs, k))
    agents = [OracleSearchQAAgent() for _ in tasks]
    first = pool.reset(options=[{"task_id": t} for t in tasks])
    for agent, (obs, info) in zip(agents, first):
        agent.reset(obs, info)
    out = pool.step({i: a.act("", {}) for i, a in enumerate(agents)})
    assert calls == [len(tasks)]  # 84 searches in one batched retrieval call
    assert all(s.observation.startswith("<information>Doc 1(Title: ") for s in out.values())
    out = pool.step({i: a.act(out[i].observation, out[i].info) for i, a in enumerate(agents)})
    pool.close()
    by_subset: dict[str, list[float]] = {}
    for step in out.values():
        assert step.terminated and step.info["won"] is True
        by_subset.setdefault(step.info["subset"], []).append(step.info["em"])
    assert {s: float(np.mean(v)) for s, v in by_subset.items()} == {s: 1.0 for s in SUBSETS}


@pytest.mark.slow
def test_matches_pyserini_lucene_searcher(lucene):
    """Our Anserini calls rank exactly as Pyserini's own LuceneSearcher on the same index (imports torch: slow)."""
    searcher = retr.import_lucene_searcher()(str(lucene.path))
    questions = [q.question for q in load_questions("nq", "all")[:50]]
    ours = [[p.id for p in hits] for hits in lucene.search(questions, 3)]
    theirs = [[h.docid for h in searcher.search(q, 3)] for q in questions]
    assert ours == theirs


@pytest.mark.slow
def test_dense_full_collection(real_index_dir):
    """Encodes all 16k passages once (many minutes on 2 cores), then finds the known passage."""
    pytest.importorskip("faiss")
    dense = retr.get_retriever("dense", load_collection(), real_index_dir, show_progress=True)
    assert "p006404" in [p.id for p in dense.search([PRODIGAL], 3)[0]]


def test_forked_worker_with_a_parent_jvm_says_how_to_fix(lucene, real_index_dir):
    kwargs = {"subset": "nq", "split": "all", "retriever": "bm25", "index_dir": real_index_dir}
    pool = EnvPool("stepgym/SearchQA-v0", 1, backend="process", env_kwargs=kwargs, start_method="fork")
    ((obs, info),) = pool.reset(options=[{"task_id": "nq/nq_test_3283"}])
    pool.close()
    assert obs == "" and "start_method='spawn'" in info["error"]
