"""Search-QA retrieval and env throughput.

Prints, for each retriever: index build time (cold cache) and load time (warm cache), queries/s one
query at a time and batched, then env steps/s for 64 parallel oracle episodes (in-process pool, one
batched search per turn) and the env's own time per step beyond retrieval.

    STEPGYM_DATA=../shared/data python benchmarks/bench_searchqa.py                 # bm25 + bm25s
    STEPGYM_DATA=../shared/data python benchmarks/bench_searchqa.py --dense-passages 2000
    STEPGYM_DATA=../shared/data python benchmarks/bench_searchqa.py --dense-passages 0   # full collection
"""

from __future__ import annotations

import argparse
import logging
import platform
import subprocess
import sys
import tempfile
import time

import gymnasium as gym
import stepgym.envs  # noqa: F401 - registers the ids
from stepgym.agents.scripted import run_episode
from stepgym.agents.searchqa_agents import FirstTitleAgent, OracleSearchQAAgent
from stepgym.envs import EnvPool
from stepgym.envs.searchqa import Collection, load_collection, load_questions
from stepgym.envs.searchqa import retrievers as retr


def _qps(retriever, queries, k, batch):
    t = time.perf_counter()
    if batch:
        for i in range(0, len(queries), batch):
            retriever.search(queries[i : i + batch], k)
    else:
        for q in queries:
            retriever.search([q], k)
    return len(queries) / (time.perf_counter() - t)


def _warm_start_seconds(name: str, index_dir: str, passages: int = 0) -> float:
    """Open the cached index in a fresh process (imports, JVM or model load, cache read), as a later run would."""
    make = {
        "bm25": f"r.LuceneBM25Retriever(c, {index_dir!r})",
        "dense": f"r.DenseRetriever(c, {index_dir!r}, show_progress=False)",
    }[name]
    code = (
        "import time; t = time.perf_counter(); from stepgym.envs.searchqa import retrievers as r, load_collection, "
        f"Collection; c = load_collection(); c = Collection(c.passages[:{passages}]) if {passages} else c; "
        f"x = {make}; assert getattr(x, 'build_seconds', None) is None; print(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _env_rate(name: str, index_dir: str, num_envs: int, rounds: int) -> tuple[float, float, float]:
    """(env steps/s, ms per step inside retrieval, ms per step outside retrieval) for oracle episodes."""
    tasks = [q.task_id for q in load_questions("all", "all")]
    pool = EnvPool(
        "stepgym/SearchQA-v0",
        num_envs,
        env_kwargs={"subset": "all", "split": "all", "retriever": name, "index_dir": index_dir},
    )
    retriever = pool.get_attr("retriever")[0]
    real, spent = retriever.search, [0.0]

    def timed(qs, k):
        t = time.perf_counter()
        try:
            return real(qs, k)
        finally:
            spent[0] += time.perf_counter() - t

    retriever.search = timed
    steps, t0, cursor = 0, time.perf_counter(), 0
    for _ in range(rounds):
        batch = [tasks[(cursor + i) % len(tasks)] for i in range(num_envs)]
        cursor += num_envs
        agents = [OracleSearchQAAgent() for _ in range(num_envs)]
        for agent, (obs, info) in zip(agents, pool.reset(options=[{"task_id": t} for t in batch])):
            agent.reset(obs, info)
        out = pool.step({i: a.act("", {}) for i, a in enumerate(agents)})
        out = pool.step({i: a.act(out[i].observation, out[i].info) for i, a in enumerate(agents)})
        assert all(s.info["em"] == 1.0 for s in out.values())
        steps += 2 * num_envs
    total = time.perf_counter() - t0
    del retriever.search
    pool.close()
    return steps / total, 1000 * spent[0] / steps, 1000 * (total - spent[0]) / steps


def _baseline_em(name: str, index_dir: str) -> dict[str, tuple[int, float]]:
    """Exact match of the "first passage title" baseline on the test split, per subset."""
    env = gym.make("stepgym/SearchQA-v0", subset="all", split="test", retriever=name, index_dir=index_dir).unwrapped
    scores: dict[str, list[float]] = {}
    for task in env.task_ids:
        steps = run_episode(env, FirstTitleAgent(), options={"task_id": task})
        scores.setdefault(env.task_subset(task), []).append(steps[-1][5]["em"])
    return {k: (len(v), sum(v) / len(v)) for k, v in scores.items()}


def _print_baseline(names: list[str], index_dir: str) -> None:
    print('\n"First passage title" baseline, exact match on the test split (top-3, one search):\n')
    for name in [n for n in names if n != "dense"]:
        em = _baseline_em(name, index_dir)
        print(f"| {name} | " + " | ".join(f"{k} {v:.3f} (n={n})" for k, (n, v) in em.items()) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=2000, help="questions used as queries (all subsets, in order)")
    ap.add_argument("--batch", type=int, default=64, help="queries per batched search call")
    ap.add_argument("--topk", type=int, default=3)
    ap.add_argument("--envs", type=int, default=64, help="parallel episodes")
    ap.add_argument("--rounds", type=int, default=10, help="rounds of --envs oracle episodes (2 steps each)")
    ap.add_argument("--retrievers", default="bm25,bm25s", help="comma list of bm25, bm25s, dense")
    ap.add_argument(
        "--dense-passages", type=int, default=-1, help="also run dense on the first N passages (0 = all; -1 = skip)"
    )
    ap.add_argument("--index-dir", default=None, help="cache root (default: a fresh temporary folder = cold build)")
    ap.add_argument("--skip-speed", action="store_true", help="only print the baseline's exact match")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    index_dir = args.index_dir or tempfile.mkdtemp(prefix="stepgym-bench-index-")
    collection = load_collection()
    queries = [q.question for q in load_questions("all", "all")][: args.queries]
    names = [n for n in args.retrievers.split(",") if n]
    if args.skip_speed:
        _print_baseline(names, index_dir)
        return
    print(f"# Search-QA retrieval benchmark: {platform.machine()} {platform.processor() or ''}".rstrip())
    print(f"collection: {len(collection)} passages, hash {collection.content_hash}; {len(queries)} queries")
    print(f"index dir: {index_dir}\n")
    print(f"| retriever | build s (cold) | start s (warm, new process) | q/s single | q/s batched ({args.batch}) |")
    print("|---|---|---|---|---|")
    for name in names:
        t = time.perf_counter()
        r = retr.get_retriever(name, collection, index_dir)
        built = time.perf_counter() - t
        warm = f"{_warm_start_seconds(name, index_dir):.2f}" if name == "bm25" else "- (no disk cache)"
        r.search(queries[:10], args.topk)  # warm-up (JIT, caches)
        single = _qps(r, queries[: min(500, len(queries))], args.topk, 0)
        batched = _qps(r, queries, args.topk, args.batch)
        print(f"| {name} | {built:.2f} | {warm} | {single:,.0f} | {batched:,.0f} |")
    if args.dense_passages >= 0:
        sub = collection if args.dense_passages == 0 else Collection(collection.passages[: args.dense_passages])
        t = time.perf_counter()
        r = retr.DenseRetriever(sub, index_dir, show_progress=True)
        built = time.perf_counter() - t
        rate = r.encoded_passages / built if r.encoded_passages else float("nan")
        warm = _warm_start_seconds("dense", index_dir, args.dense_passages)
        single = _qps(r, queries[:100], args.topk, 0)
        batched = _qps(r, queries[:1000], args.topk, args.batch)
        print(
            f"| dense ({len(sub)} passages, {rate:.1f} passages/s encoded) | {built:.1f} | {warm:.2f} "
            f"| {single:,.0f} | {batched:,.0f} |"
        )

    print(f"\n| retriever | env steps/s ({args.envs} oracle episodes) | ms/step in retrieval | ms/step env overhead |")
    print("|---|---|---|---|")
    for name in [n for n in names if n != "dense"]:
        rate, in_ret, overhead = _env_rate(name, index_dir, args.envs, args.rounds)
        print(f"| {name} | {rate:,.0f} | {in_ret:.3f} | {overhead:.3f} |")
    _print_baseline(names, index_dir)
    if args.index_dir is None:
        print(f"\n(cold caches were built in {index_dir}; delete it when done)")


if __name__ == "__main__":
    main()
