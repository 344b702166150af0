r"""Serve any local retriever over Search-R1's ``/retrieve`` protocol (stdlib ``http.server``).

One command starts it (127.0.0.1 only, unless ``--host`` says otherwise)::

    STEPGYM_DATA=../shared/data python -m stepgym.envs.searchqa.server --retriever bm25 --port 8000
    # an existing index, e.g. Search-R1's wiki-18 E5 index:
    python -m stepgym.envs.searchqa.server --retriever dense --index-path e5_Flat.index \\
        --corpus-path wiki-18.jsonl --model-path /models/e5-base-v2 --port 8000

and a trainer points at it with ``env_kwargs={"retriever": "remote", "retriever_url": "http://127.0.0.1:8000"}``.
The protocol is the one :mod:`stepgym.envs.searchqa.remote` documents; documents are sent as
``{"id", "contents", "title", "text"}`` so both Search-R1's dense and BM25 clients read them.

Requests are answered one at a time (``HTTPServer``, not threaded): searches would be serialised
anyway (Lucene and FAISS search a batch with their own threads), and batching happens inside a
request. Clients send many queries per request (the env pool sends one batch per turn).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from stepgym.envs.searchqa.data import Passage
from stepgym.envs.searchqa.retrievers import RETRIEVERS, Retriever, get_retriever, needs_collection, search_scored

__all__ = ["RetrievalServer", "document", "main"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Largest request body accepted (a batch of ~100k long queries)."""


def document(passage: Passage) -> dict[str, str]:
    """A passage as a protocol document: Search-R1's ``contents`` plus its BM25 server's ``title``/``text``."""
    return {"id": passage.id, "contents": passage.contents, "title": passage.title.strip('"'), "text": passage.text}


class RetrievalServer:
    """An HTTP server answering ``POST /retrieve`` from one retriever.

    Args:
        retriever: Any stepgym retriever (it needs ``search_scored`` when a client asks for scores).
        host: Interface to listen on; ``127.0.0.1`` keeps it off the network.
        port: TCP port; ``0`` picks a free one (see :attr:`url`).
        default_topk: ``topk`` used when a request sends ``null`` or none.
        max_queries: Largest batch accepted in one request.
    """

    def __init__(
        self,
        retriever: Retriever,
        host: str = "127.0.0.1",
        port: int = 8000,
        default_topk: int = 3,
        max_queries: int = 65536,
    ):
        self.retriever = retriever
        self.default_topk = int(default_topk)
        self.max_queries = int(max_queries)
        self.requests = 0
        """Requests answered with 200 so far."""
        self._httpd = HTTPServer((host, int(port)), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port/retrieve`` of the listening socket."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/retrieve"

    def handle(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Answer one decoded request body: ``(HTTP status, JSON body)``."""
        if not isinstance(body, dict) or not isinstance(body.get("queries"), list):
            return 400, {"detail": 'expected {"queries": [str, ...], "topk": int | null, "return_scores": bool}'}
        queries = body["queries"]
        if not all(isinstance(q, str) for q in queries):
            return 400, {"detail": "every query must be a string"}
        if len(queries) > self.max_queries:
            return 413, {"detail": f"{len(queries)} queries in one request; the limit is {self.max_queries}"}
        topk = body.get("topk") or self.default_topk  # null or 0 -> default, as Search-R1's server does
        scores = body.get("return_scores", False)
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1 or not isinstance(scores, bool):
            why = f"topk must be a positive integer and return_scores a boolean, got {topk!r}, {scores!r}"
            return 400, {"detail": why}
        try:
            rows = search_scored(self.retriever, queries, topk) if scores else self.retriever.search(queries, topk)
        except Exception as e:  # noqa: BLE001 - the client gets the reason; the server keeps serving
            logger.exception("retrieval failed")
            return 500, {"detail": f"retrieval failed: {type(e).__name__}: {e}"}
        if scores:
            result = [[{"document": document(p), "score": s} for p, s in row] for row in rows]
        else:
            result = [[document(p) for p in row] for row in rows]
        self.requests += 1
        return 200, {"result": result}

    def serve_forever(self) -> None:
        """Serve until interrupted (Ctrl-C) or :meth:`close`."""
        self._httpd.serve_forever()

    def start(self) -> RetrievalServer:
        """Serve from a daemon thread (tests, notebooks); returns ``self``."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="stepgym-retrieval-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> RetrievalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _handler(server: RetrievalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - http.server's method name
            if self.path.rstrip("/") != "/retrieve":
                self._reply(404, {"detail": f"no endpoint {self.path}; POST /retrieve"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(413, {"detail": f"request body of {length} bytes; the limit is {MAX_BODY_BYTES}"})
                return
            try:
                body = json.loads(self.rfile.read(length).decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                self._reply(400, {"detail": f"the body is not JSON: {e}"})
                return
            self._reply(*server.handle(body))

        def do_GET(self) -> None:  # noqa: N802 - http.server's method name
            name = getattr(server.retriever, "name", "?")
            self._reply(200, {"status": "ok", "retriever": name, "endpoint": "/retrieve"})

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
            logger.debug("%s " + format, self.address_string(), *args)

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Command line: build (or open) a retriever and serve it until Ctrl-C."""
    ap = argparse.ArgumentParser(
        prog="python -m stepgym.envs.searchqa.server",
        description="Serve a stepgym retriever over Search-R1's POST /retrieve protocol.",
    )
    ap.add_argument("--retriever", default="bm25", choices=[r for r in RETRIEVERS if r != "remote"])
    ap.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--topk", type=int, default=3, help="passages per query when a request does not say")
    ap.add_argument("--data-dir", default=None, help="data folder with searchqa/corpus.jsonl (else $STEPGYM_DATA)")
    ap.add_argument("--index-dir", default=None, help="index cache root (else $STEPGYM_INDEX_DIR)")
    ap.add_argument("--index-path", default=None, help="an existing Lucene index directory or FAISS index file")
    ap.add_argument("--corpus-path", default=None, help="the JSONL passage store of --index-path")
    ap.add_argument("--model-path", default=None, help="dense: the query encoder folder (e.g. e5-base-v2)")
    ap.add_argument("--index-factory", default=None, help="dense: FAISS factory string to build (default Flat)")
    ap.add_argument("--nprobe", type=int, default=None, help="dense IVF: lists searched per query")
    ap.add_argument("--ef-search", type=int, default=None, help="dense HNSW: search breadth")
    ap.add_argument("--threads", type=int, default=None, help="search threads (Lucene batch / FAISS OpenMP)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    kwargs: dict[str, Any] = {}
    for name in ("index_path", "corpus_path", "model_path", "index_factory", "nprobe", "ef_search", "threads"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    if args.retriever == "dense":
        kwargs.setdefault("show_progress", True)
    if args.retriever == "bm25s" and kwargs:
        ap.error(f"--retriever bm25s is built in memory and takes none of {sorted(kwargs)}")
    collection = None
    if needs_collection(args.retriever, args.index_path, args.corpus_path):
        from stepgym.envs.searchqa.data import load_collection

        collection = load_collection(args.data_dir)
    retriever = get_retriever(args.retriever, collection, args.index_dir, **kwargs)
    server = RetrievalServer(retriever, args.host, args.port, args.topk)
    logger.info("serving retriever %r on %s (pid %d); Ctrl-C stops", args.retriever, server.url, os.getpid())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logger.info("stopped after %d requests", server.requests)
    finally:
        server.close()


if __name__ == "__main__":
    main()
