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
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import stepgym.envs  # noqa: F401 - registers the ids
from stepgym.agents.scripted import run_episode
from stepgym.agents.searchqa_agents import FirstTitleAgent, OracleSearchQAAgent
from stepgym.envs import EnvPool
from stepgym.envs.data import resolve_data_dir
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


# --------------------------------------------------------------------------- scale (issue 21)
def _du_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def scale_build(root: Path, n: int, factory: str, base_passages: int, n_queries: int, k: int, kinds: list[str]) -> dict:
    """Build (once; later calls read the cached reports) the synthetic collection and its indexes."""
    from searchqa_scale_data import make_collection
    from stepgym.envs.searchqa.faiss_index import factory_slug

    report: dict = {"passages": n, "factory": factory}
    t = time.perf_counter()
    corpus = make_collection(resolve_data_dir(None, "searchqa") / "corpus.jsonl", root / "corpus" / "corpus.jsonl", n)
    report["collection_seconds"] = time.perf_counter() - t
    report["corpus_mb"], report["corpus"] = _du_mb(corpus), str(corpus)
    if "bm25" in kinds:
        lucene, lucene_report = root / "lucene" / "index", root / "lucene" / "build.json"
        if not lucene_report.is_file():
            seconds = retr.build_lucene_index(corpus.parent, lucene, threads=1)
            lucene_report.write_text(json.dumps({"build_seconds": seconds, "threads": 1}))
        report["lucene_build_seconds"] = json.loads(lucene_report.read_text())["build_seconds"]
        report["lucene_mb"], report["lucene"] = _du_mb(lucene), str(lucene)
    if "dense" not in kinds:
        return report
    faiss_report = root / f"faiss-{n}-{factory_slug(factory)}.json"
    if faiss_report.is_file():
        return {**report, **json.loads(faiss_report.read_text())}
    report.update(_faiss_build(root, n, factory, base_passages, n_queries, k))
    faiss_report.write_text(json.dumps(report, indent=1))
    return report


def _faiss_build(root: Path, n: int, factory: str, base_passages: int, n_queries: int, k: int) -> dict:
    import faiss
    import numpy as np
    from searchqa_scale_data import synthetic_vectors
    from stepgym.envs.searchqa.encoders import TextEncoder
    from stepgym.envs.searchqa.faiss_index import build_index, factory_slug, training_size

    report: dict = {}
    shipped = load_collection()
    enc = TextEncoder()
    t = time.perf_counter()
    base = enc.encode_passages([p.contents for p in shipped.passages[:base_passages]])
    report["base_encode_seconds"] = time.perf_counter() - t
    questions = [q.question for q in load_questions("all", "all")]
    qvec = enc.encode_queries(questions[:: max(1, len(questions) // n_queries)][:n_queries])
    # training sample: the first chunks' vectors (the generator is seeded, so the same vectors are added later)
    n_train = training_size(factory, n)
    train = np.concatenate(list(synthetic_vectors(base, n_train)), axis=0)
    best_s = np.full((len(qvec), k), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(qvec), k), dtype=np.int64)
    offset = [0]

    def chunks():
        for chunk in synthetic_vectors(base, n):
            s = qvec @ chunk.T  # exact inner products of the query sample, streamed: no 3 GB flat index in RAM
            top = np.argpartition(-s, k - 1, axis=1)[:, :k]
            cand_s = np.concatenate([best_s, np.take_along_axis(s, top, 1)], axis=1)
            cand_i = np.concatenate([best_i, top + offset[0]], axis=1)
            order = np.argsort(-cand_s, axis=1)[:, :k]
            best_s[:], best_i[:] = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
            offset[0] += len(chunk)
            yield chunk

    t = time.perf_counter()
    index = build_index(factory, base.shape[1], [], train)
    report["faiss_train_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    for chunk in chunks():
        index.add(chunk)
    report["faiss_add_seconds"] = time.perf_counter() - t

    index_file = root / f"dense-{factory_slug(factory)}.faiss"
    faiss.write_index(index, str(index_file))
    report["faiss_mb"] = _du_mb(index_file)
    report["flat_mb_would_be"] = n * base.shape[1] * 4 / 2**20
    np.save(root / "base.npy", base)  # the real passage embeddings the synthetic vectors mix, for reruns
    np.save(root / "queries.npy", qvec)
    np.save(root / f"truth-{n}.npy", best_i)
    report["index_file"] = str(index_file)
    return report


_SERVE = """
import json, sys, time
sys.path.insert(0, {bench!r})
import numpy as np
from searchqa_scale_data import latency_ms, rss_mb
from stepgym.envs.searchqa import SearchQAEnv, load_questions
kind, b = {kind!r}, json.loads({build!r})
questions = [q.question for q in load_questions("all", "all")]
t = time.perf_counter()
if kind == "bm25":
    env = SearchQAEnv(retriever="bm25", index_path=b["lucene"], retriever_kwargs={{"threads": {threads}}})
else:
    env = SearchQAEnv(retriever="dense", index_path=b["index_file"], corpus_path=b["corpus"],
                      retriever_kwargs={{"nprobe": {nprobe}, "show_progress": False}})
out = {{"open_seconds": time.perf_counter() - t}}
r = env.retriever
r.search(questions[:64], {k})  # warm-up
qs = questions[:{n_queries}]
t = time.perf_counter()
for i in range(0, len(qs), 64):
    r.search(qs[i : i + 64], {k})
out["qps_batched"] = len(qs) / (time.perf_counter() - t)
out["p50_ms"], out["p99_ms"] = latency_ms(lambda q: r.search([q], {k}), qs[:{n_single}])
if kind == "dense":
    qvec, truth = np.load({queries!r}), np.load({truth!r})
    t = time.perf_counter()
    _, got = r._index.search(qvec, truth.shape[1])
    out["faiss_only_qps"] = len(qvec) / (time.perf_counter() - t)
    out["recall_at_10"] = float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(got, truth)]))
    out["recall_at_3"] = float(np.mean([len(set(a[:3]) & set(b[:3])) / 3 for a, b in zip(got, truth)]))
out["rss_mb"], out["peak_rss_mb"] = rss_mb()
print(json.dumps(out))
"""


def scale_serve(kind: str, build: dict, root: Path, nprobe: int, threads: int, n_queries: int, n_single: int) -> dict:
    """Open the built index in a fresh process through the env and measure it (RSS is that process's)."""
    code = _SERVE.format(
        bench=str(Path(__file__).parent),
        kind=kind,
        build=json.dumps(build),
        threads=threads,
        nprobe=nprobe,
        k=3,
        n_queries=n_queries,
        n_single=n_single,
        queries=str(root / "queries.npy"),
        truth=str(root / f"truth-{build['passages']}.npy"),
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"serving {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def scale_main(args: argparse.Namespace) -> None:
    """The >= 2M-passage figures and the 21M projection (README, "Search-QA at scale")."""
    root = Path(args.scale).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    kinds = args.scale_only.split(",")
    b = scale_build(root, args.scale_passages, args.factory, args.base_passages, args.truth_queries, 10, kinds)
    print(f"# Search-QA at scale: {b['passages']:,} synthetic passages; load average {os.getloadavg()}")
    print(json.dumps(b, indent=1))
    rows = {}
    for kind in kinds:
        rows[kind] = scale_serve(kind, b, root, args.nprobe, args.lucene_threads, args.queries, args.single)
        print(kind, json.dumps(rows[kind]), f"load average {os.getloadavg()}")
    proj = 21_000_000 / b["passages"]
    print(f"\nprojection to 21M passages (x{proj:.1f}, linear in passages at the same index settings):")
    print(f"  JSONL store {b['corpus_mb'] * proj / 1024:.1f} GB; byte offsets {21e6 * 8 / 2**20:.0f} MB")
    if "lucene_mb" in b:
        print(
            f"  Lucene {b['lucene_mb'] * proj / 1024:.1f} GB on disk; "
            f"build {b['lucene_build_seconds'] * proj / 3600:.1f} h wall at this run's load (1 thread)"
        )
    if "faiss_mb" not in b:
        return
    rss = rows["dense"]["rss_mb"]
    print(
        f"  RAM of the env process: ~{rss:.0f} MB at 2M; codes and offsets are memory-mapped and paged in on use, so "
        f"21M adds at most {(b['faiss_mb'] * (proj - 1) + 21e6 * 8 / 2**20) / 1024:.1f} GB of page cache, not heap"
    )
    print(
        f"  {b['factory']} {b['faiss_mb'] * proj / 1024:.2f} GB on disk (flat would be "
        f"{b['flat_mb_would_be'] * proj / 1024:.1f} GB); add {b['faiss_add_seconds'] * proj / 3600:.2f} h + train "
        f"{b['faiss_train_seconds']:.0f} s"
    )


def encode_main(n: int, rounds: int) -> None:
    """Passage encoding speed of the shipped collection's first ``n`` passages: batch sizes and int8, interleaved."""
    import numpy as np
    import torch
    from stepgym.envs.searchqa.encoders import TextEncoder

    texts = [p.contents for p in load_collection().passages[:n]]
    variants = {"fp32 batch 32": (32, False), "fp32 batch 128": (128, False), "int8 batch 32": (32, True)}
    encoders = {name: TextEncoder(batch_size=b, int8=q) for name, (b, q) in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    emb: dict[str, np.ndarray] = {}
    for _ in range(rounds):  # interleaved, so load changes hit every variant alike
        for name, enc in encoders.items():
            t = time.perf_counter()
            emb[name] = enc.encode_passages(texts)
            times[name].append(time.perf_counter() - t)
    print(f"torch threads {torch.get_num_threads()}, {n} passages x {rounds} rounds, load {os.getloadavg()}")
    print("| variant | passages/s (best round) | median | cosine to fp32 batch 32 (min) |\n|---|---|---|---|")
    for name in encoders:
        cos = float(np.min(np.sum(emb[name] * emb["fp32 batch 32"], axis=1)))
        best, med = n / min(times[name]), n / sorted(times[name])[len(times[name]) // 2]
        print(f"| {name} | {best:.1f} | {med:.1f} | {cos:.4f} |", flush=True)


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
    scale = ap.add_argument_group("scale (issue 21): a synthetic collection of millions of passages")
    scale.add_argument("--scale", default=None, metavar="DIR", help="build/measure at scale in DIR (not the repo)")
    scale.add_argument("--scale-passages", type=int, default=2_000_000)
    scale.add_argument("--factory", default="IVF1024,PQ48", help="FAISS factory string of the dense index")
    scale.add_argument("--nprobe", type=int, default=32)
    scale.add_argument("--base-passages", type=int, default=1024, help="shipped passages really encoded (MiniLM)")
    scale.add_argument("--truth-queries", type=int, default=200, help="queries with exact top-10 for recall")
    scale.add_argument("--single", type=int, default=200, help="one-query searches timed for p50/p99")
    scale.add_argument("--lucene-threads", type=int, default=1)
    ap.add_argument("--encode-sample", type=int, default=0, help="only measure passage encoding on N passages")
    ap.add_argument("--encode-rounds", type=int, default=3)
    scale.add_argument("--scale-only", default="bm25,dense", help="comma list: which of bm25, dense to build/measure")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.scale:
        scale_main(args)
        return
    if args.encode_sample:
        encode_main(args.encode_sample, args.encode_rounds)
        return

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
