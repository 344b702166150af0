"""ALFWorld env throughput: raw engine vs our wrapper, in-process vs 1 and 2 worker processes.

Each configuration plays the same games with the same seeded random admissible actions
(``RandomAdmissibleAgent``), ``--steps`` steps per episode, and reports:

- reset time per game (load + reset of a new game file),
- env steps/s (step time only, summed over the envs stepped together),
- resident memory per worker after the run.

The raw engine is TextWorld's PDDL env with ALFWorld's wrappers, driven directly (no stepgym).
Also measures the overlap of resets with steps (``reset_async``) in an episode loop.

Usage::

    STEPGYM_DATA=../shared/data python benchmarks/bench_alfworld.py --games 6 --steps 20
"""

from __future__ import annotations

import argparse
import os
import time

from stepgym.agents.alfworld_agents import RandomAdmissibleAgent, WalkthroughAgent
from stepgym.envs import EnvPool
from stepgym.envs.alfworld import ALFWorldEnv

ENV_ID = "stepgym/ALFWorld-v0"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_raw(games: list[str], steps: int, data_dir: str | None) -> dict:
    """The engine alone: load + reset per game, then ``steps`` random admissible commands."""
    env = ALFWorldEnv(data_dir=data_dir, games=games)
    tw = env._engine()  # the wrapped TextWorld env, used directly
    t_reset = t_step = 0.0
    n = 0
    for k, g in enumerate(games):
        agent = RandomAdmissibleAgent(seed=k)
        t = time.perf_counter()
        tw.load(env.gamefile(g))
        state = tw.reset()
        t_reset += time.perf_counter() - t
        for _ in range(steps):
            cmd = agent.act("", {"admissible_actions": list(state["admissible_commands"])})[8:-9]
            t = time.perf_counter()
            state, _, done = tw.step(cmd)
            t_step += time.perf_counter() - t
            n += 1
            if done:
                break
    env.close()
    return {"reset_s": t_reset / len(games), "steps_per_s": n / t_step, "steps": n, "rss_mb": [rss_mb()]}


def _raw_in_child(args: tuple[list[str], int, str | None]) -> dict:
    return bench_raw(*args)


def bench_raw_parallel(games: list[str], steps: int, data_dir: str | None) -> dict:
    """The hardware ceiling: two raw engines in two processes at once (no stepgym code), rates summed."""
    import multiprocessing as mp

    halves = [(games[0::2], steps, data_dir), (games[1::2], steps, data_dir)]
    with mp.get_context("fork").Pool(2) as pool:
        outs = pool.map(_raw_in_child, halves)
    return {
        "reset_s": sum(o["reset_s"] for o in outs) / 2,
        "steps_per_s": sum(o["steps_per_s"] for o in outs),
        "steps": sum(o["steps"] for o in outs),
        "rss_mb": [m for o in outs for m in o["rss_mb"]],
    }


def bench_pool(games: list[str], steps: int, backend: str, workers: int, data_dir: str | None) -> dict:
    """``workers`` envs (one per worker) play the games in rounds; steps of all envs go together."""
    kwargs = {"games": games, "data_dir": data_dir}
    pool = EnvPool(ENV_ID, workers, backend=backend, num_workers=workers, env_kwargs=kwargs)
    t_reset = t_step = 0.0
    n = resets = 0
    for r in range(0, len(games), workers):
        batch = games[r : r + workers]
        idx = list(range(len(batch)))
        t = time.perf_counter()
        first = pool.reset(options=[{"task_id": g} for g in batch], indices=idx)
        t_reset += time.perf_counter() - t
        resets += 1
        agents = [RandomAdmissibleAgent(seed=r + i) for i in idx]
        infos = {i: info for i, (_, info) in zip(idx, first)}
        for _ in range(steps):
            actions = {i: agents[i].act("", infos[i]) for i in infos}
            if not actions:
                break
            t = time.perf_counter()
            out = pool.step(actions)
            t_step += time.perf_counter() - t
            n += len(out)
            infos = {i: s.info for i, s in out.items() if not s.done}
    mem = pool.worker_rss_mb() if backend != "inprocess" else [rss_mb()]
    pool.close()
    # a round resets `workers` games at once: reset time per round = wall time of one reset
    return {"reset_s": t_reset / resets, "steps_per_s": n / t_step, "steps": n, "rss_mb": mem}


def bench_overlap(games: list[str], workers: int, data_dir: str | None, use_async: bool) -> float:
    """Wall time to play every game's walkthrough with ``workers`` envs, resetting finished envs
    synchronously (``reset``) or overlapped with the others' steps (``reset_async``)."""
    kwargs = {"games": games, "data_dir": data_dir}
    pool = EnvPool(ENV_ID, workers, backend="process", num_workers=workers, env_kwargs=kwargs)
    todo = list(games)
    agents = [WalkthroughAgent() for _ in range(workers)]
    infos: dict[int, dict] = {}
    t0 = time.perf_counter()

    def start(i: int) -> None:
        g = todo.pop(0)
        if use_async:
            pool.reset_async(options=[{"task_id": g}], indices=[i])
        else:
            obs, info = pool.reset(options=[{"task_id": g}], indices=[i])[0]
            agents[i].reset(obs, info)
            infos[i] = info

    for i in range(workers):
        start(i)
    while infos or pool.pending_resets():
        for i, (obs, info) in pool.poll_resets(timeout=0.0 if infos else 5.0).items():
            agents[i].reset(obs, info)
            infos[i] = info
        if not infos:
            continue
        out = pool.step({i: agents[i].act("", info) for i, info in infos.items()})
        for i, s in out.items():
            infos[i] = s.info
            if s.done:
                del infos[i]
                if todo:
                    start(i)
    wall = time.perf_counter() - t0
    pool.close()
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="valid_unseen")
    ap.add_argument("--games", type=int, default=6, help="games per configuration")
    ap.add_argument("--steps", type=int, default=20, help="random admissible steps per episode")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    all_ids = ALFWorldEnv(split=args.split, data_dir=args.data_dir).task_ids
    stride = max(1, len(all_ids) // args.games)
    games = list(all_ids[::stride][: args.games])
    print(f"{len(games)} games of {args.split}, {args.steps} random admissible steps each")
    rows = [("raw engine (no stepgym)", bench_raw(games, args.steps, args.data_dir))]
    rows.append(("stepgym in-process", bench_pool(games, args.steps, "inprocess", 1, args.data_dir)))
    rows.append(("stepgym process, 1 worker", bench_pool(games, args.steps, "process", 1, args.data_dir)))
    rows.append(("stepgym process, 2 workers", bench_pool(games, args.steps, "process", 2, args.data_dir)))
    rows.append(("raw engine x2 processes at once", bench_raw_parallel(games, args.steps, args.data_dir)))
    print(f"{'configuration':30s} {'reset s':>8s} {'steps/s':>8s} {'steps':>6s}  RSS MiB per worker")
    for name, r in rows:
        mem = ", ".join(f"{m:.0f}" for m in r["rss_mb"])
        print(f"{name:30s} {r['reset_s']:8.2f} {r['steps_per_s']:8.1f} {r['steps']:6d}  {mem}")
    raw, inproc = rows[0][1]["steps_per_s"], rows[1][1]["steps_per_s"]
    one, two = rows[2][1]["steps_per_s"], rows[3][1]["steps_per_s"]
    print(f"wrapper overhead vs raw engine: {100 * (raw / inproc - 1):+.1f}% time per step")
    print(f"2 workers / 1 worker steps/s: {two / one:.2f}x")
    print(f"hardware ceiling, 2 raw engines at once / 1 raw engine: {rows[4][1]['steps_per_s'] / raw:.2f}x")
    sync = bench_overlap(games, 2, args.data_dir, use_async=False)
    overlapped = bench_overlap(games, 2, args.data_dir, use_async=True)
    print(f"walkthrough of {len(games)} games, 2 workers: reset() {sync:.1f} s, reset_async() {overlapped:.1f} s")


if __name__ == "__main__":
    main()
