"""Throughput of the credit-sandbox envs (in-process env steps per second) and scripted-agent success rates.

Usage: python benchmarks/bench_sandbox.py [--episodes 2000]

Steps are driven by the expert plan with ``<action>`` tags (parsing included), through ``gym.make``
(with Gymnasium's default wrappers) and on the unwrapped env.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import stepgym.envs  # noqa: F401
from stepgym.agents.sandbox_agents import NoisyExpert, RandomAdmissibleAgent, SandboxExpert
from stepgym.agents.scripted import run_episode
from stepgym.envs.sandbox import SandboxEnv, all_commands

VARIANTS = ["One", "Two", "Delayed", "Null"]


def throughput(env, episodes: int) -> tuple[float, int]:
    steps = 0
    t0 = time.perf_counter()
    for seed in range(episodes):
        _, info = env.reset(seed=seed)
        for cmd in info["expert_plan"]:
            _, _, term, trunc, info = env.step(f"<action>{cmd}</action>")
            steps += 1
            if term or trunc:
                break
    return steps / (time.perf_counter() - t0), steps


def success(variant: str, agent, episodes: int) -> tuple[float, float]:
    env = gym.make(f"stepgym/Sandbox-{variant}-v0").unwrapped
    wins, length = 0, 0
    for seed in range(episodes):
        steps = run_episode(env, agent, seed=seed)
        wins += steps[-1][5]["won"]
        length += len(steps)
    return wins / episodes, length / episodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--episodes", type=int, default=2000)
    args = ap.parse_args()
    print(f"vocabulary: {len(SandboxEnv.vocabulary())} words, {len(all_commands())} possible commands")
    print("| variant | steps/s (gym.make) | steps/s (unwrapped) | expert | noisy p=0.3 | random | expert steps |")
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        made, _ = throughput(gym.make(f"stepgym/Sandbox-{v}-v0"), args.episodes)
        raw, _ = throughput(gym.make(f"stepgym/Sandbox-{v}-v0").unwrapped, args.episodes)
        n = min(args.episodes, 500)
        exp, exp_len = success(v, SandboxExpert(), n)
        noisy, _ = success(v, NoisyExpert(0.3, "mixed", seed=0), n)
        rnd, _ = success(v, RandomAdmissibleAgent(seed=0), n)
        print(f"| {v} | {made:,.0f} | {raw:,.0f} | {exp:.2f} | {noisy:.2f} | {rnd:.2f} | {exp_len:.1f} |")


if __name__ == "__main__":
    main()
