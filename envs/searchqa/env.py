"""``stepgym/SearchQA-v0``: answer a question, searching a passage collection in between (Search-R1).

One episode = one question. Each step the agent writes optional reasoning, then exactly one action:

- ``<search>query</search>``: the observation is the top-``topk`` passages as
  ``<information>Doc 1(Title: "T") text <newline> Doc 2(...) ...</information>``; reward 0.
- ``<answer>text</answer>``: the episode terminates with reward = exact match (1.0 / 0.0) against any
  golden answer (SQuAD normalisation); ``info`` has ``em``, ``f1`` and ``won``.
- anything else (no complete tag, two actions, an empty tag) is an invalid step: the observation
  says what was wrong, ``info["valid_action"] = False``, reward ``-invalid_action_penalty``
  (``shared/ALGORITHMS.md`` §1: 0.01 for Search-QA; 0 disables it) and the episode goes on.

After ``max_turns`` steps without an answer the episode is truncated (no outcome reward;
``won=False``). Many envs of one host searching in the same turn share one batched retrieval call
(:meth:`SearchQAEnv.step_batch`, used by :class:`stepgym.envs.EnvPool`).

Data and the train/test split: :mod:`stepgym.envs.searchqa.data`; retrievers:
:mod:`stepgym.envs.searchqa.retrievers`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, ClassVar

from stepgym.envs.base import TextEnv, parse_tagged_action
from stepgym.envs.searchqa.data import SUBSETS, Collection, Passage, Question, load_collection, load_questions
from stepgym.envs.searchqa.metrics import best_em_f1
from stepgym.envs.searchqa.retrievers import Retriever, clean_query, get_retriever, needs_collection

__all__ = ["SearchQAEnv", "format_passages"]

_TAGS = ("search", "answer")


def format_passages(passages: Sequence[Passage]) -> str:
    """The ``<information>`` block of a search: ``Doc i(Title: T) text`` lines, as Search-R1 shows them."""
    if not passages:
        return "<information>No passage matched the query.</information>"
    body = "\n".join(f"Doc {i}(Title: {p.title}) {p.text}" for i, p in enumerate(passages, start=1))
    return f"<information>{body}</information>"


class SearchQAEnv(TextEnv):
    """Multi-turn search-augmented question answering over seven QA subsets.

    Args:
        subset: One subset name, several (list or comma-separated) or ``"all"``.
        split: ``"train"``, ``"test"`` or ``"all"`` (see :mod:`stepgym.envs.searchqa.data`).
        retriever: ``"bm25"``, ``"bm25s"``, ``"dense"`` or ``"remote"`` (a Search-R1 protocol server).
        topk: Passages returned per search.
        max_turns: Steps before the episode is truncated.
        invalid_action_penalty: Subtracted from the reward of an invalid step.
        data_dir: Data folder (else ``$STEPGYM_DATA``, else ``~/.cache/stepgym/data``).
        index_dir: Root of the index / embedding caches (else ``$STEPGYM_INDEX_DIR``, else
            ``~/.cache/stepgym/index``).
        collection: Search this collection instead of the data folder's ``corpus.jsonl`` (tests).
        index_path: An existing index to open instead of indexing the collection: a Lucene index
            directory (``bm25``) or a FAISS index file (``dense``); see :mod:`stepgym.envs.searchqa.retrievers`.
        corpus_path: The JSONL passage store of ``index_path`` (``dense``: line ``i`` = FAISS row ``i``,
            e.g. Search-R1's ``wiki-18.jsonl``; ``bm25``: only for an index without stored documents).
        retriever_url: The retrieval server of ``retriever="remote"``, e.g. ``http://127.0.0.1:8000``.
        max_query_chars: Queries are cleaned and cut to this many characters.
        retriever_kwargs: Extra arguments for the retriever (e.g. ``{"threads": 2}``).
        render_mode: ``"ansi"`` or ``None``.
    """

    protocol: ClassVar[str] = (
        "Answer the question. Think step by step; whenever you get new information, reason about it first. "
        "If you lack knowledge, search a Wikipedia-style collection by writing <search>your query</search>: "
        "the top passages come back between <information> and </information>. You may search several times. "
        "When you know the answer, write it inside <answer> and </answer> with no explanation, "
        "e.g. <answer>Beijing</answer>. Write exactly one <search> or <answer> per turn."
    )
    subsets: ClassVar[tuple[str, ...]] = SUBSETS
    headline_metric: ClassVar[str] = "EM"

    def __init__(
        self,
        subset: str | Sequence[str] = "all",
        split: str = "test",
        retriever: str = "bm25",
        topk: int = 3,
        max_turns: int = 4,
        invalid_action_penalty: float = 0.01,
        data_dir: str | os.PathLike[str] | None = None,
        index_dir: str | os.PathLike[str] | None = None,
        collection: Collection | None = None,
        max_query_chars: int = 1000,
        retriever_kwargs: dict[str, Any] | None = None,
        render_mode: str | None = None,
        index_path: str | os.PathLike[str] | None = None,
        corpus_path: str | os.PathLike[str] | None = None,
        retriever_url: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if topk < 1 or max_turns < 1:
            raise ValueError(f"topk and max_turns must be >= 1, got topk={topk}, max_turns={max_turns}")
        self.questions: list[Question] = load_questions(subset, split, data_dir)
        self._by_id = {q.task_id: q for q in self.questions}
        self._ids = tuple(self._by_id)
        kwargs = dict(retriever_kwargs or {})
        if (retriever == "remote") != (retriever_url is not None):
            raise ValueError(
                "retriever='remote' needs retriever_url= the server (e.g. http://127.0.0.1:8000), and retriever_url "
                f"is only for retriever='remote'; got retriever={retriever!r}, retriever_url={retriever_url!r}"
            )
        if retriever_url is not None:
            kwargs["url"] = retriever_url
        for name, value in (("index_path", index_path), ("corpus_path", corpus_path)):
            if value is not None:
                kwargs[name] = str(value)
        self.collection: Collection | None = collection
        if collection is None and needs_collection(retriever, index_path, corpus_path):
            self.collection = load_collection(data_dir)
        self.retriever: Retriever = get_retriever(retriever, self.collection, index_dir, **kwargs)
        self.topk = int(topk)
        self.max_turns = int(max_turns)
        self.invalid_action_penalty = float(invalid_action_penalty)
        self.max_query_chars = int(max_query_chars)
        self._question: Question | None = None
        self._done = False
        self._prefetched: tuple[str, list[Passage]] | None = None

    # ----------------------------------------------------------------- TextEnv
    @property
    def task_ids(self) -> Sequence[str]:
        """``"<subset>/<question id>"`` for every question of the selected subsets and split."""
        return self._ids

    def task_subset(self, task_id: str) -> str:
        """The subset a question id belongs to (its prefix)."""
        return task_id.split("/", 1)[0]

    def _reset_task(self, task_id: str) -> tuple[str, dict[str, Any]]:
        q = self._by_id[task_id]
        self._question = q
        self._done = False
        self._prefetched = None
        text = q.question.strip()
        if not text.endswith("?"):
            text += "?"  # as Search-R1's data preparation does
        return f"Question: {text}", {"question": q.question, "golden_answers": list(q.golden_answers)}

    def _step(self, action_text: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("the episode is over (answered or out of turns); call reset() first")
        assert self._question is not None  # set by reset, which the base class enforces
        turn = self._num_steps + 1
        parsed = parse_tagged_action(action_text, _TAGS)
        info: dict[str, Any] = {"valid_action": parsed.valid, "action": None}
        if parsed.tag == "answer":
            assert parsed.content is not None
            em, f1 = best_em_f1(parsed.content, self._question.golden_answers)
            self._done = True
            info.update(action=parsed.content, em=em, f1=f1, won=em == 1.0)
            return f"Your answer: {parsed.content}", em, True, False, info
        if parsed.tag == "search":
            query = clean_query(parsed.content or "", self.max_query_chars)
            info["action"] = query
            obs = format_passages(self._search(query))
            reward = 0.0
        else:
            obs = (
                f"Invalid action: {parsed.error}. To search write <search>query</search>; "
                "to answer write <answer>text</answer>."
            )
            reward = -self.invalid_action_penalty
        truncated = turn >= self.max_turns
        if truncated:
            self._done = True
            info["won"] = False
        return obs, reward, False, truncated, info

    # ----------------------------------------------------------------- retrieval
    def _search(self, query: str) -> list[Passage]:
        pre, self._prefetched = self._prefetched, None
        if pre is not None and pre[0] == query:
            return pre[1]
        return self.retriever.search([query], self.topk)[0]

    def _pending_query(self, action_text: str) -> str | None:
        """The cleaned query ``action_text`` would search, or ``None`` (not a valid search, or no episode)."""
        if self._question is None or self._done or not isinstance(action_text, str):
            return None
        parsed = parse_tagged_action(action_text[: self.max_action_chars], _TAGS)
        if parsed.tag != "search":
            return None
        return clean_query(parsed.content or "", self.max_query_chars)

    @classmethod
    def step_batch(
        cls, envs: Sequence[SearchQAEnv], actions: Sequence[str]
    ) -> list[tuple[str, float, bool, bool, dict[str, Any]]]:
        """Step several envs at once: all their searches go to each shared retriever in ONE call.

        Results equal stepping each env alone (``env.step(action)``). When any env cannot step (not
        reset, episode over, non-text action) it raises before stepping any, so the pool's
        one-by-one fallback never steps an env twice.
        """
        bad = [
            i for i, (e, a) in enumerate(zip(envs, actions)) if e._question is None or e._done or not isinstance(a, str)
        ]
        if bad:
            raise RuntimeError(f"envs {bad} cannot step (not reset, episode over or non-text action); step one by one")
        groups: dict[tuple[int, int], list[tuple[SearchQAEnv, str]]] = {}
        for env, action in zip(envs, actions):
            query = env._pending_query(action)
            if query is not None:
                groups.setdefault((id(env.retriever), env.topk), []).append((env, query))
        for group in groups.values():
            retriever, k = group[0][0].retriever, group[0][0].topk
            results = retriever.search([q for _, q in group], k)
            for (env, query), passages in zip(group, results):
                env._prefetched = (query, passages)
        return [env.step(action) for env, action in zip(envs, actions)]
