"""OpenAI-compatible policy over real HTTP on 127.0.0.1, against a small server on the HF backend.

The server speaks the vLLM dialect of ``/v1/completions`` for token-id prompts (``logprobs`` with
``return_tokens_as_token_ids``: tokens as ``"token_id:<id>"``, ``include_stop_str_in_output``) and the
plain OpenAI dialect for text prompts (text back, no logprobs, the stop string stripped).
"""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

import thirdparty_env  # noqa: E402,F401
from stepgym.agents.hf import HFPolicy  # noqa: E402
from stepgym.agents.models import build_tiny_model  # noqa: E402
from stepgym.agents.openai import OpenAIPolicy, parse_token_id, restore_stop  # noqa: E402
from stepgym.agents.policy import SamplingParams  # noqa: E402
from stepgym.agents.render import ChatRenderer  # noqa: E402
from stepgym.agents.rollout import DEFAULT_STOP, collect  # noqa: E402
from stepgym.envs import EnvPool  # noqa: E402

POISON = 3  # a prompt starting with this id makes the server answer HTTP 500
FLAKY = 4  # ... with this id: HTTP 503 on the first attempt, then a normal answer


def make_server(policy, tok):
    lock = threading.Lock()
    seen: set[tuple] = set()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output quiet
            pass

        def do_POST(self):  # noqa: N802 - http.server naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/completions":
                return self._send(404, {"error": f"no route {self.path}"})
            prompt = body["prompt"]
            text_mode = isinstance(prompt, str)
            if text_mode:
                prompt = tok(prompt, add_special_tokens=False)["input_ids"]
            if prompt and prompt[0] == POISON:
                return self._send(500, {"error": "poisoned prompt"})
            if prompt and prompt[0] == FLAKY:
                with lock:
                    first = tuple(prompt) not in seen
                    seen.add(tuple(prompt))
                if first:
                    return self._send(503, {"error": "busy, try again"})
            sp = SamplingParams(
                max_new_tokens=body["max_tokens"],
                temperature=body["temperature"],
                top_p=body["top_p"],
                stop=tuple(body.get("stop") or ()),
                seed=body.get("seed"),
            )
            with lock:
                (c,) = policy.generate([prompt], sp)
            if text_mode:  # plain OpenAI: no token ids, the stop string it stopped at is not returned
                text = c.text
                for stop in sp.stop:
                    if c.finish_reason == "stop" and text.endswith(stop):
                        text = text[: -len(stop)]
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": c.finish_reason}
            else:
                choice = {
                    "index": 0,
                    "text": c.text,
                    "logprobs": {"tokens": [f"token_id:{i}" for i in c.ids], "token_logprobs": c.logprobs},
                    "finish_reason": c.finish_reason,
                }
            self._send(200, {"object": "text_completion", "model": body["model"], "choices": [choice]})

        def _send(self, code, payload):
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def served():
    model, tok = build_tiny_model(seed=0)
    local = HFPolicy(model, tok)
    server = make_server(local, tok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield OpenAIPolicy(url, "tiny", max_retries=0), local, tok
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_http_results_equal_local_backend(served):
    remote, local, tok = served
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("hello", "go to desk 1")]
    sp = SamplingParams(max_new_tokens=8, temperature=0.0)
    got = remote.generate(prompts, sp)
    want = local.generate(prompts, sp)
    assert [c.ids for c in got] == [c.ids for c in want]
    for g, w in zip(got, want):
        assert g.logprobs == pytest.approx(w.logprobs, abs=1e-6)
        assert g.text == w.text and g.finish_reason == w.finish_reason == "length"


def test_http_error_only_fails_that_prompt(served):
    remote, _, tok = served
    outs = remote.generate([[POISON, 5, 6], [5, 6]], SamplingParams(max_new_tokens=4, seed=0))
    assert outs[0].finish_reason == "error" and "HTTP 500" in outs[0].error and "poisoned" in outs[0].error
    assert outs[1].finish_reason == "length" and len(outs[1].ids) == 4


def test_unreachable_server_is_an_error_completion():
    pol = OpenAIPolicy("http://127.0.0.1:9/v1", "x", timeout_s=2, max_retries=0)
    (c,) = pol.generate([[1, 2]], SamplingParams(max_new_tokens=2))
    assert c.finish_reason == "error" and "127.0.0.1:9" in c.error


def test_collect_through_http(served):
    remote, _, tok = served
    sp = SamplingParams(max_new_tokens=12, stop=DEFAULT_STOP, seed=4)
    trajs = collect(
        EnvPool("thirdparty/GuessDigit-v0", 2),
        remote,
        ["digit-1"],
        group_size=2,
        renderer=ChatRenderer(tok),
        sampling=sp,
        max_turns=2,
    )
    assert len(trajs) == 2 and all(t.num_steps == 2 for t in trajs)
    for t in trajs:
        assert sum(t.sequences[0].loss_mask) == t.info["num_generated_tokens"] > 0


def test_parse_token_id():
    assert parse_token_id("token_id:42") == 42
    with pytest.raises(ValueError, match="return_tokens_as_token_ids"):
        parse_token_id("hello")


def test_retries_with_backoff_recover_a_transient_503(served):
    remote, local, tok = served
    sp = SamplingParams(max_new_tokens=4, temperature=0.0)
    (failed,) = remote.generate([[FLAKY, 5, 6]], sp)  # no retries: the 503 is the answer
    assert failed.finish_reason == "error" and "HTTP 503" in failed.error
    retrying = OpenAIPolicy(remote.client.base_url.__str__(), "tiny", max_retries=2)
    (ok,) = retrying.generate([[FLAKY, 7, 8]], sp)  # first attempt 503, the retry answers
    assert ok.finish_reason == "length" and ok.ids == local.generate([[FLAKY, 7, 8]], sp)[0].ids


def test_text_only_mode_re_encodes_and_restores_the_stop_tag(served):
    remote, local, tok = served
    text_pol = OpenAIPolicy(remote.client.base_url.__str__(), "tiny", max_retries=0, tokenizer=tok)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("hello", "go to desk 1")]
    sp = SamplingParams(max_new_tokens=8, temperature=0.0)
    got, want = text_pol.generate(prompts, sp), local.generate(prompts, sp)
    for g, w in zip(got, want):
        assert g.text == w.text and g.finish_reason == w.finish_reason
        assert g.ids == tok(w.text, add_special_tokens=False)["input_ids"]  # re-encoded, not the server's ids
        assert all(math.isnan(x) for x in g.logprobs)  # not available, never invented
    assert restore_stop("<answer>Paris", ("</search>", "</answer>")) == "<answer>Paris</answer>"
    assert restore_stop("<answer>Paris</answer> done", ("</answer>",)) == "<answer>Paris</answer> done"


def test_stepgym_eval_policy_openai_prints_the_per_subset_table(served, tmp_path, capsys):
    from stepgym.trainers import cli

    remote, _, _ = served
    url = str(remote.client.base_url).rstrip("/")
    args = ["--env", "sandbox", "--policy", "openai", "--base-url", url, "--model", "tiny", "--eval-tasks", "1",
            "--max_turns", "2", "--sampling.max_new_tokens", "8", "--decoding", "greedy",
            "--out", str(tmp_path)]  # fmt: skip
    assert cli.main(["eval", *args]) == 0
    out = capsys.readouterr().out
    for sub in ("clean", "heat", "cool", "**avg**"):
        assert f"| test | {sub} |" in out, out
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["checkpoints"]["tiny"]["token_exact"] is True and res["checkpoints"]["tiny"]["path"] == url
    assert list(res["results"]["tiny greedy"]["test"]) == ["clean", "heat", "cool"]
    assert all(r["n"] == 1 for r in res["results"]["tiny greedy"]["test"].values())

    assert cli.main(["eval", *args, "--text-only", "--out", str(tmp_path / "text")]) == 0
    text = json.loads((tmp_path / "text" / "results.json").read_text())
    assert text["checkpoints"]["tiny"]["token_exact"] is None
    assert "token-exactness not available" in (tmp_path / "text" / "table.md").read_text()
