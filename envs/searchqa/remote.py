r"""The ``remote`` retriever: a client of Search-R1's retrieval-server protocol (stdlib HTTP, no extra package).

The protocol (Search-R1, ``search_r1/search/retrieval_server.py`` and its client
``search_r1/llm_agent/generation.py``, ``_batch_search``)::

    POST /retrieve   {"queries": ["q1", "q2"], "topk": 3, "return_scores": true}
    200              {"result": [[{"document": {"id": "...", "contents": "\"Title\"\ntext"}, "score": 12.3}, ...],
                                 [...]]}

With ``"return_scores": false`` each hit is the document itself instead of ``{"document", "score"}``.
A document is a collection row: ``{"id", "contents"}`` from a dense index's JSONL, or
``{"title", "text", "contents"}`` from Search-R1's BM25 server; both become a :class:`Passage`.
``"topk": null`` lets the server use its default. Any server that speaks this works: Search-R1's own,
or stepgym's (:mod:`stepgym.envs.searchqa.server`), so the index can live on another machine.

Failures: connection errors, timeouts and 5xx answers are retried ``retries`` times with exponential
backoff, then raise :class:`RetrieverUnavailableError` naming the URL and how to start a server; a 4xx
answer or a malformed body raises at once (retrying would not change it).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from stepgym.envs.searchqa.data import Passage, passage_from_row

__all__ = ["RemoteRetriever", "RetrieverUnavailableError", "hits_from_response", "normalise_url"]

logger = logging.getLogger(__name__)

_START_HINT = "start one with: python -m stepgym.envs.searchqa.server --retriever bm25 --port 8000"


class RetrieverUnavailableError(ConnectionError):
    """The retrieval server could not be reached (or kept failing) after every retry."""


def normalise_url(url: str) -> str:
    """``http://host:port`` or ``host:port`` -> ``http://host:port/retrieve``; a URL with a path is kept.

    Raises:
        ValueError: Not an http(s) URL.
    """
    url = str(url).strip()
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"retriever_url {url!r} is not an http(s) URL like http://127.0.0.1:8000/retrieve")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/retrieve")
    return urllib.parse.urlunsplit(parts)


def hits_from_response(body: Any, n_queries: int) -> list[list[tuple[Passage, float | None]]]:
    """Parse a ``/retrieve`` answer into ``(passage, score)`` lists, one per query (score ``None`` if absent).

    Raises:
        ValueError: The body does not follow the protocol (says what was found).
    """
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, list) or len(result) != n_queries:
        got = f"{len(result)} results" if isinstance(result, list) else f"{type(body).__name__} {str(body)[:200]!r}"
        raise ValueError(
            f"a /retrieve answer must be {{'result': [one list per query]}} for {n_queries} queries; got {got}"
        )
    out = []
    for hits in result:
        if not isinstance(hits, list):
            raise ValueError(f"each /retrieve result must be a list of hits, got {str(hits)[:200]!r}")
        row = []
        for hit in hits:
            scored = isinstance(hit, dict) and "document" in hit
            doc, score = (hit["document"], hit.get("score")) if scored else (hit, None)
            if not isinstance(doc, dict):
                raise ValueError(f"a /retrieve hit must be a document object, got {str(doc)[:200]!r}")
            row.append((passage_from_row(doc), None if score is None else float(score)))
        out.append(row)
    return out


class RemoteRetriever:
    """Search through a retrieval server speaking Search-R1's ``/retrieve`` protocol.

    Args:
        url: The server, e.g. ``http://127.0.0.1:8000`` (``/retrieve`` is added when no path is given).
        timeout: Seconds to wait for one HTTP answer.
        retries: Extra attempts after a connection error, timeout or 5xx answer.
        backoff: Seconds before the first retry; doubled each time, up to 30 s.
        batch_size: Queries per request (a larger batch is split into several requests).
        check: Ask the server once at construction, so a wrong URL fails at start-up, not mid-training.
    """

    name = "remote"

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        batch_size: int = 512,
        check: bool = True,
    ):
        if retries < 0 or timeout <= 0 or batch_size < 1:
            raise ValueError(f"need timeout > 0, retries >= 0, batch_size >= 1; got {timeout}, {retries}, {batch_size}")
        self.url = normalise_url(url)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.batch_size = int(batch_size)
        self.requests = 0
        """HTTP requests answered so far (one per batch of up to ``batch_size`` queries)."""
        if check:
            self._post({"queries": [], "topk": 1, "return_scores": True})

    def search(self, queries: Sequence[str], k: int) -> list[list[Passage]]:
        """Top-``k`` passages per query from the server, ``batch_size`` queries per request."""
        return [[p for p, _ in row] for row in self._search(queries, k, scores=False)]

    def search_scored(self, queries: Sequence[str], k: int) -> list[list[tuple[Passage, float]]]:
        """Top-``k`` ``(passage, score)`` per query (the server's scores).

        Raises:
            ValueError: The server sent hits without scores.
        """
        rows = self._search(queries, k, scores=True)
        if any(s is None for row in rows for _, s in row):
            raise ValueError(f"the server at {self.url} answered return_scores=true without scores")
        return rows  # type: ignore[return-value] - no None left

    def _search(self, queries: Sequence[str], k: int, scores: bool) -> list[list[tuple[Passage, float | None]]]:
        out: list[list[tuple[Passage, float | None]]] = []
        for start in range(0, len(queries), self.batch_size):
            batch = list(queries[start : start + self.batch_size])
            body = self._post({"queries": batch, "topk": int(k), "return_scores": scores})
            out.extend(hits_from_response(body, len(batch)))
        return out

    def _post(self, payload: dict[str, Any]) -> Any:
        data = json.dumps(payload).encode("utf-8")
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), 30.0))  # capped: many retries = a long wait
            request = urllib.request.Request(
                self.url, data=data, headers={"Content-Type": "application/json"}, method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    body = json.loads(response.read().decode("utf-8"))
                self.requests += 1
                return body
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:500]
                if e.code < 500:
                    why = f"{e.code} {detail}"
                    raise ValueError(f"the retrieval server at {self.url} rejected the request: {why}") from e
                last = e
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = e
            except json.JSONDecodeError as e:
                raise ValueError(f"the retrieval server at {self.url} answered with non-JSON ({e})") from e
            logger.warning(
                "retrieval server %s: attempt %d/%d failed: %s", self.url, attempt + 1, self.retries + 1, last
            )
        raise RetrieverUnavailableError(
            f"the retrieval server at {self.url} did not answer after {self.retries + 1} attempts "
            f"(timeout {self.timeout:g} s; last error: {last}). Is it running and is the URL right? {_START_HINT}"
        )
