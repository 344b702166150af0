"""Answer scoring for Search-QA: exact match and token F1 with the SQuAD normalisation.

The normalisation is the one of the SQuAD v1.1 evaluation script (Rajpurkar et al., 2016), used
unchanged by Search-R1 and FlashRAG: lower-case, drop punctuation, drop the articles
``a``/``an``/``the``, collapse whitespace. A prediction scores the best value over all golden answers.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

__all__ = ["best_em_f1", "exact_match", "normalize_answer", "token_f1"]

_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower-case, remove punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golden_answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised golden answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golden_answers))


def _f1_one(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golden_answers: Sequence[str]) -> float:
    """Best SQuAD token F1 of the prediction against any golden answer (0.0 with no overlap)."""
    return max((_f1_one(prediction, g) for g in golden_answers), default=0.0)


def best_em_f1(prediction: str, golden_answers: Sequence[str]) -> tuple[float, float]:
    """``(exact_match, token_f1)`` of a prediction against the golden answers."""
    return exact_match(prediction, golden_answers), token_f1(prediction, golden_answers)
