"""ALFWorld env throughput: raw engine vs our wrapper, in-process vs 1 and 2 worker processes.

Each configuration plays the same games with the same seeded random admissible actions
(``RandomAdmissibleAgent``), ``--steps`` steps per episode, and reports:

- reset time per game (load + reset of a new game file),
- env steps/s (wall time of the stepping phase only: resets are excluded),
- resident memory per worker after the run.

Two ways to drive 2 workers are measured side by side: *lockstep* (``EnvPool.step``: every round
sends one action per env and waits for all of them, so each round costs the slower engine step) and
*free-running* (``EnvPool.step_async`` + ``poll_steps``: each env gets its next action as soon as its
own step is back, so neither core waits for the other). The hardware ceiling is two raw engines in
two processes at once with no stepgym code (rates summed).

The raw engine is TextWorld's PDDL env with ALFWorld's wrappers, driven directly (no stepgym).
Then whole episodes, resets included (1 worker vs 2 workers driven by ``reset``+``step``,
``reset_async``+``step`` and ``reset_async``+``step_async``), and the games' walkthroughs. For each
pool run it also prints the share of time the worker processes were blocked waiting for work (from
``/proc/<pid>/schedstat``): the pool's own loss, less affected by other jobs' load than steps/s.

Usage::

    STEPGYM_DATA=../shared/data python benchmarks/bench_alfworld.py --games 8 --steps 15 --repeats 3
    STEPGYM_DATA=../shared/data python benchmarks/bench_alfworld.py --games 8 --steps 15 --step-costs
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

from stepgym.agents.alfworld_agents import RandomAdmissibleAgent, WalkthroughAgent
from stepgym.envs import EnvPool
from stepgym.envs.alfworld import ALFWorldEnv

ENV_ID = "stepgym/ALFWorld-v0"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class BlockedMeter:
    """How much of the timed wall time worker processes spent blocked (neither running nor runnable).

    From Linux ``/proc/<pid>/schedstat`` (CPU time, run-queue wait): blocked = wall - CPU - run-queue
    wait. A worker is blocked when it waits for its next request, e.g. in lockstep while the other
    worker finishes a slower step. It depends less than steps/s on other jobs' load, so it
    shows the pool's own loss on a busy machine too (0% where ``/proc`` has no schedstat).
    """

    def __init__(self, pids: list[int]):
        self.pids, self.wall, self.blocked = pids, 0.0, 0.0
        self._t0, self._s0 = 0.0, [(0, 0)] * len(pids)

    @staticmethod
    def _sched(pid: int) -> tuple[int, int]:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                cpu, wait, _ = f.read().split()
            return int(cpu), int(wait)
        except (OSError, ValueError):
            return 0, 0

    def start(self) -> None:
        self._s0 = [self._sched(p) for p in self.pids]
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        wall = time.perf_counter() - self._t0
        for p, (cpu0, wait0) in zip(self.pids, self._s0):
            cpu, wait = self._sched(p)
            self.wall += wall
            self.blocked += max(0.0, wall - (cpu - cpu0 + wait - wait0) / 1e9)

    @property
    def share(self) -> float:
        return self.blocked / self.wall if self.wall else 0.0


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


def step_costs(games: list[str], steps: int, data_dir: str | None) -> None:
    """CPU time of each raw engine step (``time.process_time``, so other jobs' load hardly enters),
    per game, and what two workers would get from those costs: lockstep (each step costs the slower
    of a pair of games' steps) and free-running in rounds (each round costs the slower game)."""
    env = ALFWorldEnv(data_dir=data_dir, games=games)
    tw = env._engine()
    per_game: list[list[float]] = []
    for k, g in enumerate(games):
        agent = RandomAdmissibleAgent(seed=k)
        tw.load(env.gamefile(g))
        state = tw.reset()
        costs = []
        for _ in range(steps):
            cmd = agent.act("", {"admissible_actions": list(state["admissible_commands"])})[8:-9]
            c = time.process_time()
            state, _, done = tw.step(cmd)
            costs.append(time.process_time() - c)
            if done:
                break
        per_game.append(costs)
        print(
            f"  {g[-48:]:48s} {1000 * statistics.mean(costs):6.1f} ms/step (sd {1000 * statistics.pstdev(costs):.1f})"
        )
    env.close()
    pairs = [(per_game[i], per_game[i + 1]) for i in range(0, len(per_game) - 1, 2)]
    work = sum(sum(a) + sum(b) for a, b in pairs)
    lock = sum(sum(max(x, y) for x, y in zip(a, b)) for a, b in pairs)
    rounds = sum(max(sum(a), sum(b)) for a, b in pairs)
    print(
        f"replayed with 2 workers (ideal 2x): lockstep {work / lock:.2f}x, free-running in rounds {work / rounds:.2f}x"
    )


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


def bench_pool(
    games: list[str], steps: int, backend: str, workers: int, data_dir: str | None, free_running: bool = False
) -> dict:
    """``workers`` envs (one per worker) play the games in rounds (all envs reset together, untimed).

    Lockstep: each ``pool.step`` call sends one action per running env and waits for all of them.
    Free-running: ``step_async``/``poll_steps``, each env steps again as soon as its own step is back;
    the stepping phase of a round is timed from the first ``step_async`` to the last result (the
    agent's own time included).
    """
    kwargs = {"games": games, "data_dir": data_dir}
    pool = EnvPool(ENV_ID, workers, backend=backend, num_workers=workers, env_kwargs=kwargs)
    meter = BlockedMeter([w.proc.pid for w in pool._workers] if backend == "process" else [])
    t_reset = t_step = t_both = cpu = 0.0  # cpu: this (driver) process's CPU time while stepping
    n = n_both = resets = 0
    for r in range(0, len(games), workers):
        batch = games[r : r + workers]
        idx = list(range(len(batch)))
        t = time.perf_counter()
        first = pool.reset(options=[{"task_id": g} for g in batch], indices=idx)
        t_reset += time.perf_counter() - t
        resets += 1
        agents = [RandomAdmissibleAgent(seed=r + i) for i in idx]
        infos = {i: info for i, (_, info) in zip(idx, first)}
        if free_running:
            meter.start()
            t, c = time.perf_counter(), time.process_time()
            pool.step_async({i: agents[i].act("", infos[i]) for i in infos})
            taken = dict.fromkeys(infos, 1)
            first_done = None  # when the first env of the round ran out of steps
            while pool.pending_steps():
                for i, s in pool.poll_steps(timeout=60.0).items():
                    n += 1
                    n_both += first_done is None
                    if not s.done and taken[i] < steps:
                        taken[i] += 1
                        pool.step_async({i: agents[i].act("", s.info)})
                    elif first_done is None:
                        first_done = time.perf_counter()
                        meter.stop()
            end = time.perf_counter()
            cpu += time.process_time() - c
            t_step += end - t
            t_both += (first_done or end) - t
            continue
        for _ in range(steps):
            actions = {i: agents[i].act("", infos[i]) for i in infos}
            if not actions:
                break
            meter.start()
            t, c = time.perf_counter(), time.process_time()
            out = pool.step(actions)
            t_step += time.perf_counter() - t
            cpu += time.process_time() - c
            meter.stop()
            n += len(out)
            infos = {i: s.info for i, s in out.items() if not s.done}
    mem = pool.worker_rss_mb() if backend != "inprocess" else [rss_mb()]
    pool.close()
    # a round resets `workers` games at once: reset time per round = wall time of one reset
    out = {"reset_s": t_reset / resets, "steps_per_s": n / t_step, "steps": n, "rss_mb": mem, "blocked": meter.share}
    out["driver_ms"] = 1000 * cpu / n if backend == "process" else 0.0
    if free_running:
        # while every env of the round is still stepping (what a pool that resets finished envs with
        # reset_async sustains): steps collected until the first env ran out of steps, over that time
        out["both_steps_per_s"], out["tail"] = n_both / t_both, 1 - t_both / t_step
    return out


def bench_episodes(
    games: list[str], workers: int, data_dir: str | None, mode: str, steps: int | None = None
) -> tuple[float, int, float]:
    """Wall time (resets included), env steps and worker blocked share to play every game once.

    A finished env starts the next game at once. ``mode``: ``"sync"`` resets with ``reset`` and steps
    with ``step`` (lockstep), ``"reset_async"`` overlaps resets with the other envs' lockstep steps, and
    ``"free"`` uses ``reset_async`` + ``step_async``/``poll_steps`` (each env steps again as soon as its
    own step is back). ``steps=None`` plays each game's walkthrough; otherwise ``steps`` random
    admissible actions, seeded per game, so every mode does the same work.
    """
    kwargs: dict = {"games": games, "data_dir": data_dir}
    if steps is not None:
        kwargs["max_steps"] = steps
    pool = EnvPool(ENV_ID, workers, backend="process", num_workers=workers, env_kwargs=kwargs)
    meter = BlockedMeter([w.proc.pid for w in pool._workers])
    meter.start()
    todo = list(games)
    agents: dict[int, object] = {}
    infos: dict[int, dict] = {}
    n = 0
    t0 = time.perf_counter()

    def start(i: int) -> None:
        g = todo.pop(0)
        agents[i] = WalkthroughAgent() if steps is None else RandomAdmissibleAgent(seed=games.index(g))
        if mode == "sync":
            obs, info = pool.reset(options=[{"task_id": g}], indices=[i])[0]
            begin(i, obs, info)
        else:
            pool.reset_async(options=[{"task_id": g}], indices=[i])

    def begin(i: int, obs: str, info: dict) -> None:
        if "error" in info:
            raise RuntimeError(f"reset of env {i} failed: {info['error']}")
        agents[i].reset(obs, info)
        infos[i] = info
        if mode == "free":
            pool.step_async({i: agents[i].act(obs, info)})

    for i in range(min(workers, len(todo))):
        start(i)
    while infos or pool.pending_resets() or pool.pending_steps():
        if mode == "free":
            resets, stepped = pool.poll(timeout=60.0)  # whatever finished first, resets or steps
            for i, (obs, info) in resets.items():
                begin(i, obs, info)
            for i, s in stepped.items():
                n += 1
                if not s.done:
                    pool.step_async({i: agents[i].act(s.observation, s.info)})
                else:
                    del infos[i]
                    if todo:
                        start(i)
            continue
        for i, (obs, info) in pool.poll_resets(timeout=0.0 if infos else 60.0).items():
            begin(i, obs, info)
        if not infos:
            continue
        out = pool.step({i: agents[i].act("", info) for i, info in infos.items()})
        n += len(out)
        for i, s in out.items():
            infos[i] = s.info
            if s.done:
                del infos[i]
                if todo:
                    start(i)
    wall = time.perf_counter() - t0
    meter.stop()
    pool.close()
    return wall, n, meter.share


def steps_table(games: list[str], args: argparse.Namespace) -> None:
    """Steps/s of every configuration, ``args.repeats`` times interleaved, and the ratios."""
    print(f"{len(games)} games of {args.split}, {args.steps} random admissible steps each, {args.repeats} repeat(s)")
    configs: list[tuple[str, Callable[[], dict]]] = [
        ("raw engine (no stepgym)", lambda: bench_raw(games, args.steps, args.data_dir)),
        ("stepgym in-process", lambda: bench_pool(games, args.steps, "inprocess", 1, args.data_dir)),
        ("stepgym process, 1 worker", lambda: bench_pool(games, args.steps, "process", 1, args.data_dir)),
        ("stepgym process, 2 workers lockstep", lambda: bench_pool(games, args.steps, "process", 2, args.data_dir)),
        (
            "stepgym process, 2 workers free-run",
            lambda: bench_pool(games, args.steps, "process", 2, args.data_dir, free_running=True),
        ),
        ("raw engine x2 processes at once", lambda: bench_raw_parallel(games, args.steps, args.data_dir)),
    ]
    # repeats run the configurations interleaved, so a change of machine load hits all of them
    runs = [[fn() for _, fn in configs] for _ in range(args.repeats)]
    print(f"{'configuration':36s} {'reset s':>8s} {'steps/s':>8s} {'steps':>6s} {'blocked':>8s}  RSS MiB per worker")
    for k, (name, _) in enumerate(configs):
        r = runs[-1][k]
        mem = ", ".join(f"{m:.0f}" for m in r["rss_mb"])
        rate = statistics.median(run[k]["steps_per_s"] for run in runs)
        blocked = f"{100 * statistics.median(run[k]['blocked'] for run in runs):7.1f}%" if "blocked" in r else ""
        print(f"{name:36s} {r['reset_s']:8.2f} {rate:8.1f} {r['steps']:6d} {blocked:>8s}  {mem}")
        if "both_steps_per_s" in r:
            both_rate = statistics.median(run[k]["both_steps_per_s"] for run in runs)
            print(f"{'  ... while both envs step':36s} {'':8s} {both_rate:8.1f}")
    print("(steps/s: median over repeats; blocked: share of the stepping time a worker process waited for work)")

    def ratio(a: int, b: int) -> float:  # median over repeats of the per-repeat ratio
        return statistics.median(run[a]["steps_per_s"] / run[b]["steps_per_s"] for run in runs)

    tail = statistics.median(run[4]["tail"] for run in runs)
    both = statistics.median(run[4]["both_steps_per_s"] / run[2]["steps_per_s"] for run in runs)
    print(f"wrapper overhead vs raw engine: {100 * (1 / ratio(1, 0) - 1):+.1f}% time per step")
    print(
        f"2 workers / 1 worker steps/s (target >= 1.8x): lockstep {ratio(3, 2):.2f}x; free-running {ratio(4, 2):.2f}x"
        f" over whole rounds, {both:.2f}x while both envs step (rounds end with one env alone for"
        f" {100 * tail:.0f}% of the stepping time)"
    )
    print(f"hardware ceiling, 2 raw engines at once / 1 raw engine: {ratio(5, 0):.2f}x")
    driver = ", ".join(f"{runs[-1][k]['driver_ms']:.2f}" for k in (2, 3, 4))
    print(f"driver process CPU per env step (1 worker, 2 lockstep, 2 free-running): {driver} ms")


def episodes(games: list[str], args: argparse.Namespace) -> None:
    """Whole episodes (resets included) with 1 and 2 workers, then walkthroughs with 2 workers."""
    # whole episodes, resets included: 1 worker plays them one after the other
    one_wall, n1, one_blocked = bench_episodes(games, 1, args.data_dir, "free", args.steps)
    line = [f"1 worker {one_wall:.1f} s (blocked {100 * one_blocked:.0f}%)"]
    for mode, label in [
        ("sync", "reset()+step()"),
        ("reset_async", "reset_async()+step()"),
        ("free", "reset_async()+step_async()"),
    ]:
        wall, n2, blocked = bench_episodes(games, 2, args.data_dir, mode, args.steps)
        assert n2 == n1, f"{mode} played {n2} steps, 1 worker {n1}"
        line.append(f"2 workers {label} {wall:.1f} s ({one_wall / wall:.2f}x, blocked {100 * blocked:.0f}%)")
    print(f"{len(games)} whole episodes ({n1} random steps, resets included): " + "; ".join(line))
    line = []
    for mode, label in [
        ("sync", "reset()+step()"),
        ("reset_async", "reset_async()+step()"),
        ("free", "reset_async()+step_async()"),
    ]:
        wall, _, blocked = bench_episodes(games, 2, args.data_dir, mode)
        line.append(f"{label} {wall:.1f} s (blocked {100 * blocked:.0f}%)")
    print(f"walkthroughs of {len(games)} games, 2 workers: " + "; ".join(line))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", default="valid_unseen")
    ap.add_argument("--games", type=int, default=6, help="games per configuration")
    ap.add_argument("--steps", type=int, default=20, help="random admissible steps per episode")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--repeats", type=int, default=1, help="run the steps/s configurations this many times")
    ap.add_argument("--skip-table", action="store_true", help="skip the steps/s table")
    ap.add_argument("--skip-episodes", action="store_true", help="skip whole episodes and walkthroughs")
    ap.add_argument("--step-costs", action="store_true", help="only the CPU cost of each engine step, per game")
    args = ap.parse_args()
    all_ids = ALFWorldEnv(split=args.split, data_dir=args.data_dir).task_ids
    stride = max(1, len(all_ids) // args.games)
    games = list(all_ids[::stride][: args.games])
    if args.step_costs:
        print(f"CPU time per raw engine step, {len(games)} games of {args.split}, {args.steps} random steps each:")
        step_costs(games, args.steps, args.data_dir)
        return
    if not args.skip_table:
        steps_table(games, args)
    if not args.skip_episodes:
        episodes(games, args)


if __name__ == "__main__":
    main()
