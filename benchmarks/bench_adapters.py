"""Env throughput of one env per ecosystem adapter: env steps/s and reset time, measured side by side.

Each env is driven in-process by a seeded scripted agent that writes the ecosystem's action format
(a random admissible command where the env lists them, a random guess or a wrong answer otherwise);
the envs take turns in rounds (round ``r`` runs ``--steps`` steps on every env, one after another) so
that load from other jobs falls on all of them alike. Steps/s counts the wall time of ``step`` calls
only; resets (a new task each episode) are timed apart. Construction (``gym.make``: imports, a
ScienceWorld JVM, compiling the TextWorld games) is excluded and printed once.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_adapters.py --steps 30 --rounds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from typing import Any

import gymnasium as gym
import stepgym.envs  # noqa: F401 -- registers the adapter ids

ENVS: dict[str, dict[str, Any]] = {
    "textarena/GuessTheNumber-v0": {"num_tasks": 1000},
    "reasoning_gym/leg_counting": {"num_tasks": 1000},
    "textworld/coin_collector": {"settings": {"level": 5}, "num_tasks": 2},
    "scienceworld/find-living-thing": {"split": "train"},
}
"""The env of each ecosystem measured, with its kwargs (few TextWorld games: each is compiled once)."""


def scripted_action(env_id: str, info: dict[str, Any], rng: random.Random) -> str:
    """One action in the env's format: random admissible, a random bracketed guess, or a wrong answer."""
    if info.get("admissible_actions"):
        return f"<action>{rng.choice(info['admissible_actions'])}</action>"
    if env_id.startswith("textarena/"):
        return f"I guess [{rng.randint(1, 20)}]"
    return f"<answer>{rng.randint(0, 10)}</answer>"


def run_steps(env: gym.Env, env_id: str, state: dict[str, Any], steps: int) -> tuple[float, list[float]]:
    """``steps`` steps (resetting on episode end); returns step seconds and the reset times."""
    rng = state["rng"]
    step_s, resets = 0.0, []
    for _ in range(steps):
        if state.get("info") is None:
            t = time.perf_counter()
            _, state["info"] = env.reset(seed=rng.randrange(10**6))
            resets.append(time.perf_counter() - t)
        action = scripted_action(env_id, state["info"], rng)
        t = time.perf_counter()
        _, _, term, trunc, info = env.step(action)
        step_s += time.perf_counter() - t
        state["info"] = None if term or trunc else {**state["info"], **info}
    return step_s, resets


def main() -> None:
    """Measure and print one row per env."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="steps per env per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (envs interleaved within each)")
    parser.add_argument("--envs", nargs="*", default=list(ENVS), help="env ids (default: one per ecosystem)")
    args = parser.parse_args()
    games_dir = tempfile.mkdtemp(prefix="bench-textworld-")
    envs, states = {}, {}
    for env_id in args.envs:
        kwargs = dict(ENVS.get(env_id, {}))
        if env_id.startswith("textworld/"):
            kwargs["games_dir"] = games_dir
        t = time.perf_counter()
        envs[env_id] = gym.make(env_id, **kwargs)
        if env_id.startswith("textworld/"):  # compile every game now: a reset then only starts the interpreter
            for task in envs[env_id].unwrapped.task_ids:
                envs[env_id].unwrapped.gamefile(task)
        states[env_id] = {"rng": random.Random(0), "info": None}
        print(f"{env_id}: gym.make {time.perf_counter() - t:.1f} s", flush=True)
    rates: dict[str, list[float]] = {e: [] for e in envs}
    resets: dict[str, list[float]] = {e: [] for e in envs}
    for r in range(args.rounds + 1):  # round 0 warms up (first resets compile TextWorld games, JIT the JVM)
        for env_id, env in envs.items():
            step_s, reset_s = run_steps(env, env_id, states[env_id], args.steps)
            if r > 0:
                rates[env_id].append(args.steps / step_s)
                resets[env_id].extend(reset_s)
    print(f"\n| env | steps/s (median of {args.rounds} rounds x {args.steps} steps) | min-max | reset s (mean, n) |")
    print("|---|---|---|---|")
    for env_id in envs:
        rs, zs = rates[env_id], resets[env_id]
        reset = f"{statistics.mean(zs):.3f} ({len(zs)})" if zs else "-"
        print(f"| `{env_id}` | {statistics.median(rs):.1f} | {min(rs):.1f}-{max(rs):.1f} | {reset} |")
    for env in envs.values():
        env.close()


if __name__ == "__main__":
    main()
