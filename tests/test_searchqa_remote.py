"""The ``remote`` retriever and stepgym's retrieval server: Search-R1's ``POST /retrieve`` protocol."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from stepgym.envs.searchqa import Collection, SearchQAEnv, get_retriever
from stepgym.envs.searchqa.remote import RemoteRetriever, RetrieverUnavailableError, normalise_url
from stepgym.envs.searchqa.server import RetrievalServer
from test_searchqa import EIFFEL_OBS, PASSAGES, _write_data

QUERIES = ["eiffel tower paris", "highest mountain", "zzzz", "who created python", "great wall"]


@pytest.fixture
def local(tmp_path):
    pytest.importorskip("bm25s")
    return get_retriever("bm25s", Collection.from_contents(PASSAGES), tmp_path)


@pytest.fixture
def server(local):
    with RetrievalServer(local, port=0) as s:
        yield s


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- against stepgym's own server
def test_remote_equals_local_with_scores_and_batches(server, local):
    remote = RemoteRetriever(server.url.removesuffix("/retrieve"), batch_size=2)  # /retrieve is added
    assert remote.url == server.url and server.url.startswith("http://127.0.0.1:")
    before = remote.requests  # the start-up check
    got = remote.search_scored(QUERIES, 3)
    want = local.search_scored(QUERIES, 3)
    assert [[(p, round(s, 5)) for p, s in row] for row in got] == [[(p, round(s, 5)) for p, s in row] for row in want]
    assert remote.requests - before == 3  # 5 queries in batches of 2
    assert remote.search(QUERIES[:2], 1) == [[want[0][0][0]], [want[1][0][0]]]


def test_server_speaks_the_protocol_exactly(server):
    status, body = _post(server.url, {"queries": ["eiffel tower paris"], "topk": 1, "return_scores": True})
    assert status == 200 and list(body) == ["result"]
    hit = body["result"][0][0]
    assert set(hit) == {"document", "score"} and isinstance(hit["score"], float)
    assert hit["document"] == {
        "id": "t1",
        "contents": '"Eiffel Tower"\nThe Eiffel Tower is a wrought-iron lattice tower in Paris, France.',
        "title": "Eiffel Tower",
        "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    }
    # topk null (or 0, as Search-R1's `if not request.topk`) -> the server's default 3; no scores
    status, body = _post(server.url, {"queries": ["eiffel tower paris", "louvre"], "topk": None})
    assert status == 200 and [[d["id"] for d in row] for row in body["result"]] == [["t1", "t2"], ["t2"]]
    assert _post(server.url, {"queries": "eiffel"})[0] == 400
    assert _post(server.url, {"queries": ["x"], "topk": -1})[0] == 400
    assert _post(server.url.replace("/retrieve", "/search"), {"queries": ["x"]})[0] == 404


def test_env_trains_its_searches_through_the_server(server, tmp_path):
    data = _write_data(tmp_path / "data")
    (data / "searchqa" / "corpus.jsonl").unlink()  # the env side needs no collection
    env = SearchQAEnv(subset="nq", split="all", data_dir=data, retriever="remote", retriever_url=server.url)
    assert env.collection is None
    env.reset(options={"task_id": "nq/nq_1"})
    assert env.step("<search>eiffel tower paris</search>")[0] == EIFFEL_OBS
    assert env.step("<answer>Paris</answer>")[1] == 1.0
    with pytest.raises(ValueError, match="retriever='remote' needs retriever_url="):
        SearchQAEnv(subset="nq", split="all", data_dir=data, retriever="remote")


def test_server_down_is_a_clear_error_after_the_retries():
    url = f"http://127.0.0.1:{_free_port()}"
    t = time.perf_counter()
    with pytest.raises(
        RetrieverUnavailableError, match=r"did not answer after 3 attempts.*stepgym.envs.searchqa.server"
    ):
        RemoteRetriever(url, retries=2, backoff=0.05, timeout=2)
    assert time.perf_counter() - t >= 0.05 + 0.1  # backed off 0.05 s then 0.1 s
    with pytest.raises(ValueError, match="not an http"):
        normalise_url("ftp://x")


# ----------------------------------------------------------------------------- against a stub of the protocol
class _Stub:
    """A hand-written server of the protocol as Search-R1's BM25 server answers (title/text/contents docs)."""

    def __init__(self, fail_first=0, body=None):
        self.seen, self.fail_first, self.body = [], fail_first, body
        stub = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.seen.append((self.path, req))
                if len(stub.seen) <= stub.fail_first:
                    code, out = 503, {"detail": "warming up"}
                elif stub.body is not None:
                    code, out = 200, stub.body
                else:
                    docs = [
                        [{"title": "Q", "text": f"text for {q}", "contents": f'"Q"\ntext for {q}'}] * req["topk"]
                        for q in req["queries"]
                    ]
                    res = (
                        [[{"document": d, "score": 2.5} for d in row] for row in docs] if req["return_scores"] else docs
                    )
                    code, out = 200, {"result": res}
                data = json.dumps(out).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/retrieve"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_client_request_and_parsing_against_a_stub():
    stub = _Stub(fail_first=2)  # the start-up check is retried through two 503s
    try:
        r = RemoteRetriever(stub.url, retries=2, backoff=0.01, check=True)
        rows = r.search_scored(["a b", "c"], 2)
        assert stub.seen[-1] == ("/retrieve", {"queries": ["a b", "c"], "topk": 2, "return_scores": True})
        assert [[(p.id, p.title, p.text, s) for p, s in row] for row in rows] == [
            [("", '"Q"', "text for a b", 2.5)] * 2,
            [("", '"Q"', "text for c", 2.5)] * 2,
        ]
        assert r.search(["c"], 1)[0][0].text == "text for c"
        assert stub.seen[-1][1]["return_scores"] is False
    finally:
        stub.close()
    stub = _Stub(body={"result": [[]]})  # one result for two queries
    try:
        r = RemoteRetriever(stub.url, check=False)
        with pytest.raises(ValueError, match="one list per query.*for 2 queries; got 1 results"):
            r.search(["a", "b"], 1)
    finally:
        stub.close()


# ----------------------------------------------------------------------------- the command
def test_server_command_serves_until_stopped(tmp_path):
    pytest.importorskip("bm25s")
    data = _write_data(tmp_path / "data")
    port = _free_port()
    cmd = [sys.executable, "-m", "stepgym.envs.searchqa.server", "--retriever", "bm25s", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--data-dir", str(data), "--index-dir", str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        r = RemoteRetriever(f"127.0.0.1:{port}", retries=40, backoff=0.25, timeout=5)  # waits for the start
        assert [p.id for p in r.search(["eiffel tower paris"], 3)[0]] == ["t1", "t2"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"serving retriever 'bm25s' on http://127.0.0.1:{port}/retrieve" in err


# ----------------------------------------------------------------------------- training through the server
def test_run_training_against_the_server(server, tmp_path):
    pytest.importorskip("torch")
    from stepgym.trainers.runner import run_training
    from trainer_helpers import small_run_config

    data = _write_data(tmp_path / "data")
    kwargs = {"retriever": "remote", "retriever_url": server.url, "data_dir": str(data), "split": "all", "subset": "nq"}
    cfg = small_run_config(tmp_path / "run", env_id="stepgym/SearchQA-v0", env_kwargs=kwargs, num_envs=2, total_steps=1)
    before = server.requests
    result = run_training(cfg)
    assert result.final_step == 1 and not result.interrupted
    lines = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1] and "rollout/success" in lines[0]
    assert server.requests > before  # the start-up checks at least; searches when the tiny model writes one
