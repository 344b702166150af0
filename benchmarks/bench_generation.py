"""Generation throughput per backend and batch size, and the generate/env time split of collect().

Usage:
    python benchmarks/bench_generation.py --models tiny smollm2-135m --batches 1 16 64 --new-tokens 32
    python benchmarks/bench_generation.py --backends hf openai vllm   # vllm where it imports

Throughput = generated tokens / wall seconds of one ``generate`` call (after one warm-up call),
random prompts of 32 tokens, temperature 1.0, no stop strings, so every row runs ``--new-tokens``.
The ``openai`` backend is the HTTP client against a local server wrapping the HF backend (it
measures the HTTP overhead, not a different engine).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from stepgym.agents.hf import HFPolicy
from stepgym.agents.models import load_model, smollm2_dir, tiny_model_dir
from stepgym.agents.openai import OpenAIPolicy
from stepgym.agents.policy import SamplingParams
from stepgym.agents.render import ChatRenderer
from stepgym.agents.rollout import DEFAULT_STOP, collect
from stepgym.envs import EnvPool

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def serve(policy: HFPolicy) -> tuple[ThreadingHTTPServer, str]:
    lock = threading.Lock()

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            b = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            sp = SamplingParams(
                b["max_tokens"], b["temperature"], b["top_p"], tuple(b.get("stop") or ()), b.get("seed")
            )
            with lock:
                (c,) = policy.generate([b["prompt"]], sp)
            lp = {"tokens": [f"token_id:{i}" for i in c.ids], "token_logprobs": c.logprobs}
            data = json.dumps(
                {"choices": [{"text": c.text, "logprobs": lp, "finish_reason": c.finish_reason}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/v1"


def throughput(policy, vocab: int, batch: int, new_tokens: int, rng: random.Random) -> float:
    prompts = [[rng.randrange(10, vocab) for _ in range(32)] for _ in range(batch)]
    sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0)
    policy.generate(prompts[:1], SamplingParams(max_new_tokens=2))  # warm-up
    t0 = time.perf_counter()
    outs = policy.generate(prompts, sp)
    dt = time.perf_counter() - t0
    bad = [c.error for c in outs if c.finish_reason == "error"]
    if bad:
        raise RuntimeError(bad[0])
    return sum(len(c.ids) for c in outs) / dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2-135m"])
    ap.add_argument("--backends", nargs="+", default=["hf", "openai"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.machine()} {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    rng = random.Random(0)
    print("| model | backend | batch | tokens/s |\n|---|---|---|---|")
    for name in args.models:
        model, tok = load_model(name)
        hf = HFPolicy(model, tok)
        for backend in args.backends:
            srv = None
            if backend == "hf":
                pol = hf
            elif backend == "openai":
                srv, url = serve(hf)
                pol = OpenAIPolicy(url, name)
            else:
                from stepgym.agents.vllm import VLLMPolicy

                folder = str(tiny_model_dir() if name == "tiny" else smollm2_dir())
                pol = VLLMPolicy(folder, dtype="float32", max_model_len=1024)
            for b in args.batches:
                print(
                    f"| {name} | {backend} | {b} | {throughput(pol, len(tok), b, args.new_tokens, rng):,.0f} |",
                    flush=True,
                )
            if srv is not None:
                srv.shutdown()
        # time split of a rollout: tiny model on the third-party GuessDigit env, 16 episodes
        import thirdparty_env  # noqa: F401

        sp = SamplingParams(max_new_tokens=args.new_tokens, stop=DEFAULT_STOP, seed=0)
        t0 = time.perf_counter()
        trajs = collect(
            EnvPool("thirdparty/GuessDigit-v0", 16),
            hf,
            [f"digit-{d}" for d in range(4)],
            group_size=4,
            renderer=ChatRenderer(tok),
            sampling=sp,
            max_turns=3,
        )
        wall = time.perf_counter() - t0
        gen = sum(t.info["time_generate_s"] for t in trajs)
        env = sum(t.info["time_env_s"] for t in trajs)
        print(f"# collect {name}: 16 episodes x 3 turns, wall {wall:.2f}s, generate {gen:.2f}s, env {env:.4f}s")


if __name__ == "__main__":
    main()
