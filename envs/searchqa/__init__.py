"""Search-QA: the Search-R1 question-answering task as ``stepgym/SearchQA-v0``.

Importing this package is cheap: retriever backends (Pyserini/Java, bm25s, FAISS) load on first use.
"""

from stepgym.envs.searchqa.data import (
    SPLITS,
    SUBSETS,
    TRAIN_SUBSETS,
    Collection,
    Passage,
    Question,
    in_train_split,
    load_collection,
    load_questions,
)
from stepgym.envs.searchqa.env import SearchQAEnv, format_passages
from stepgym.envs.searchqa.metrics import best_em_f1, exact_match, normalize_answer, token_f1
from stepgym.envs.searchqa.retrievers import RETRIEVERS, Retriever, clean_query, get_retriever, needs_collection

__all__ = [
    "RETRIEVERS",
    "SPLITS",
    "SUBSETS",
    "TRAIN_SUBSETS",
    "Collection",
    "Passage",
    "Question",
    "Retriever",
    "SearchQAEnv",
    "best_em_f1",
    "clean_query",
    "exact_match",
    "format_passages",
    "get_retriever",
    "in_train_split",
    "load_collection",
    "load_questions",
    "needs_collection",
    "normalize_answer",
    "token_f1",
]
