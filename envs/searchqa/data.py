"""Search-QA data: the seven question subsets, the train/test split and the passage collection.

Layout (see ``shared/data/searchqa/README.md``)::

    <data>/searchqa/<subset>/questions.jsonl   {"id", "question", "golden_answers": [...], "dataset"}
    <data>/searchqa/corpus.jsonl               {"id", "contents": "<quoted title><newline><text>"}

Split: ``train`` is a deterministic 80% of ``nq`` and ``hotpotqa`` (the in-domain training subsets
of Search-R1), chosen by a stable hash of the question id (:func:`in_train_split`); ``test`` is the
other 20% of those two plus every question of the five out-of-domain subsets; ``all`` is both.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from threading import Lock

from stepgym.envs.data import DataNotFoundError, MalformedDataError, read_jsonl, resolve_data_dir

__all__ = [
    "SPLITS",
    "SUBSETS",
    "TRAIN_SUBSETS",
    "Collection",
    "Passage",
    "Question",
    "in_train_split",
    "load_collection",
    "load_questions",
    "passage_from_row",
    "resolve_subsets",
]

SUBSETS: tuple[str, ...] = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
"""The seven subsets, in the order task ids are listed."""
TRAIN_SUBSETS: tuple[str, ...] = ("nq", "hotpotqa")
"""Subsets whose questions are split 80/20 into train/test; the others are test only."""
SPLITS: tuple[str, ...] = ("train", "test", "all")
TRAIN_PERCENT = 80


@dataclass(frozen=True)
class Question:
    """One question of a subset."""

    task_id: str
    """Globally unique id, ``"<subset>/<id in the file>"``."""
    subset: str
    question: str
    golden_answers: tuple[str, ...]


@dataclass(frozen=True)
class Passage:
    """One passage of the collection; ``title`` keeps the collection's surrounding quotes."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        """The indexed text: title line, newline, body (the collection's ``contents`` field)."""
        return f"{self.title}\n{self.text}"


def in_train_split(question_id: str) -> bool:
    """Whether a question of a train subset is in ``train``: first 8 hex digits of its SHA-256 mod 100 < 80."""
    return int(hashlib.sha256(question_id.encode("utf-8")).hexdigest()[:8], 16) % 100 < TRAIN_PERCENT


def resolve_subsets(subset: str | Sequence[str]) -> tuple[str, ...]:
    """Turn the ``subset`` kwarg (one name, several, a comma list or ``"all"``) into known subset names."""
    names = [subset] if isinstance(subset, str) else list(subset)
    names = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    if not names:
        raise ValueError(f"subset is empty; use one or several of {list(SUBSETS)} or 'all'")
    if "all" in names:
        return SUBSETS
    unknown = [n for n in names if n not in SUBSETS]
    if unknown:
        raise ValueError(f"unknown Search-QA subset(s) {unknown}; choose from {list(SUBSETS)} or 'all'")
    return tuple(s for s in SUBSETS if s in names)


def load_questions(
    subsets: str | Sequence[str] = "all", split: str = "test", data_dir: str | os.PathLike[str] | None = None
) -> list[Question]:
    """Read the questions of ``subsets`` that fall in ``split``, in subset order then file order.

    Raises:
        DataNotFoundError: The ``searchqa`` folder or a subset's ``questions.jsonl`` is missing.
        MalformedDataError: A line is not JSON or lacks ``id``/``question``/``golden_answers``.
        ValueError: Unknown subset or split, or the selection is empty.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {list(SPLITS)}")
    names = resolve_subsets(subsets)
    root = resolve_data_dir(data_dir, "searchqa")
    out: list[Question] = []
    for name in names:
        path = root / name / "questions.jsonl"
        if not path.is_file():
            raise DataNotFoundError(
                f"Search-QA subset {name!r}: expected {path} (one JSON question per line). "
                f"Found subsets: {sorted(p.name for p in root.iterdir() if (p / 'questions.jsonl').is_file())}"
            )
        for q in _read_subset(path, name):
            if split == "all" or (split == "train") == (name in TRAIN_SUBSETS and in_train_split(q.task_id)):
                out.append(q)
    if not out:
        raise ValueError(
            f"no Search-QA questions for subset={list(names)} split={split!r}: only {list(TRAIN_SUBSETS)} "
            "have train questions; use split='test' or 'all' for the others"
        )
    return out


_SUBSET_CACHE: dict[tuple[str, int, int], tuple[Question, ...]] = {}


def _read_subset(path: Path, subset: str) -> tuple[Question, ...]:
    """A subset file's questions, parsed once per process (re-read when the file changes)."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _SUBSET_CACHE:
        _SUBSET_CACHE[key] = tuple(_question(row, subset, path, n) for n, row in enumerate(read_jsonl(path), start=1))
    return _SUBSET_CACHE[key]


def _question(row: dict, subset: str, path: Path, lineno: int) -> Question:
    answers = row.get("golden_answers")
    if not isinstance(row.get("id"), str) or not isinstance(row.get("question"), str) or not answers:
        raise MalformedDataError(f"{path}:{lineno}: expected keys id (str), question (str), golden_answers (list)")
    if isinstance(answers, str):
        answers = [answers]
    return Question(f"{subset}/{row['id']}", subset, row["question"], tuple(str(a) for a in answers))


class Collection:
    """The passages retrievers search, with a content hash that keys on-disk index caches."""

    def __init__(self, passages: Sequence[Passage], content_hash: str | None = None):
        if not passages:
            raise ValueError("a passage collection needs at least one passage")
        self.passages: tuple[Passage, ...] = tuple(passages)
        self._hash = content_hash

    @classmethod
    def from_contents(cls, rows: Iterable[tuple[str, str]]) -> Collection:
        """Build from ``(id, contents)`` pairs (``contents`` = title line + newline + text), e.g. in tests."""
        return cls([_passage(pid, contents) for pid, contents in rows])

    @cached_property
    def content_hash(self) -> str:
        """SHA-256 (first 16 hex digits) over every passage's id and contents, in order."""
        if self._hash is not None:
            return self._hash
        h = hashlib.sha256()
        for p in self.passages:
            h.update(json.dumps([p.id, p.contents], ensure_ascii=False).encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()[:16]

    @cached_property
    def index_of(self) -> dict[str, int]:
        """Passage id -> position."""
        return {p.id: i for i, p in enumerate(self.passages)}

    def get(self, rows: Sequence[int]) -> list[Passage]:
        """The passages at positions ``rows`` (the same call as :meth:`PassageStore.get`)."""
        return [self.passages[int(i)] for i in rows]

    def __len__(self) -> int:
        return len(self.passages)


def _passage(pid: str, contents: str) -> Passage:
    title, _, text = contents.partition("\n")
    return Passage(pid, title.strip(), text.strip())


def passage_from_row(row: dict) -> Passage:
    """A passage from a collection row: ``{"id", "contents"}`` (wiki-18, Pyserini) or ``{"id", "title", "text"}``.

    ``contents`` is the title line, a newline, then the text (the title keeps its quotes, as in wiki-18).
    A missing id becomes ``""``; ids that are numbers become strings.

    Raises:
        KeyError: Neither ``contents`` nor ``text``.
    """
    pid = str(row.get("id", row.get("docid", "")))
    if isinstance(row.get("contents"), str):
        return _passage(pid, row["contents"])
    if isinstance(row.get("text"), str):
        return Passage(pid, str(row.get("title", "")).strip(), row["text"].strip())
    raise KeyError(f"a passage row needs 'contents' or 'text' (got keys {sorted(row)})")


_COLLECTIONS: dict[tuple[str, int, int], Collection] = {}
_COLLECTIONS_LOCK = Lock()


def load_collection(data_dir: str | os.PathLike[str] | None = None) -> Collection:
    """Read ``searchqa/corpus.jsonl`` once per process (re-read when the file changes).

    The content hash is the SHA-256 of the file's bytes, so an edited collection gets a new index.
    """
    path = resolve_data_dir(data_dir, "searchqa") / "corpus.jsonl"
    if not path.is_file():
        raise DataNotFoundError(f"Search-QA passage collection: expected {path} (one JSON passage per line)")
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    with _COLLECTIONS_LOCK:
        if key not in _COLLECTIONS:
            passages = []
            for lineno, row in enumerate(read_jsonl(path), start=1):
                if not isinstance(row.get("id"), str) or not isinstance(row.get("contents"), str):
                    raise MalformedDataError(f"{path}:{lineno}: expected keys id (str) and contents (str)")
                passages.append(_passage(row["id"], row["contents"]))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            _COLLECTIONS[key] = Collection(passages, content_hash=digest)
        return _COLLECTIONS[key]
