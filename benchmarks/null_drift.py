"""Why the right-treatment rate falls in ``Sandbox-Null`` for every method (issue 17, item 4).

In ``Null`` the outcome is a coin drawn at reset, independent of every action, so a trajectory's score
``coin - invalid_penalty * n_invalid`` (``trainers/batch.py``) has exactly one channel the actions can
move: the invalid-step penalty. This script measures how that channel relates to the first commitment
(right treatment, wrong treatment, none) of each episode:

1. **Scripted** (no model): the expert plan with the treatment kept, altered or skipped, and an invalid
   command inserted with probability ``q`` before each step: episode length, invalid steps and score.
2. **Model** (``--model``, default the warm start of ``credit_sandbox.py``): one batch of sampled
   episodes (temperature 1, as in training) of the warm-start policy; per commitment class the count,
   length, invalid steps, penalty and the mean **GRPO advantage** (the direction GRPO pushes each class;
   in ``Null`` only the penalty can make it non-zero in expectation).

Usage::

    python benchmarks/null_drift.py [--model runs/credit_sandbox/warm_start0] [--group-size 8] [--repeats 4]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

ENV = "stepgym/Sandbox-Null-v0"


class SloppyPlan:
    """The expert plan with the treatment kept / altered / skipped, and an invalid command before a step w.p. ``q``."""

    def __init__(self, how: str, q: float, seed: int):
        self.how, self.q, self.rng = how, q, random.Random(seed)

    def reset(self, observation: str, info: dict) -> None:
        from stepgym.envs.sandbox.world import APPLIANCE

        plan = list(info["expert_plan"])
        for cmd in info["nominal_decisive_commands"]:
            i = plan.index(cmd)
            treatment, rest = cmd.split(" ", 1)
            obj = rest.split(" with ")[0]
            if self.how == "skip":
                del plan[i]
            elif self.how == "wrong":
                wrong = self.rng.choice(sorted(t for t in APPLIANCE if t != treatment))
                plan[i] = f"{wrong} {obj} with {APPLIANCE[wrong]}"
        self.plan, self.k = plan, 0

    def act(self, observation: str, info: dict) -> str:
        if self.rng.random() < self.q:
            return "<action>take the thing</action>"  # inadmissible: an invalid step, the plan waits
        cmd = self.plan[self.k] if self.k < len(self.plan) else "look"
        self.k += 1
        return f"<action>{cmd}</action>"


def scripted(args: argparse.Namespace) -> list[str]:
    import gymnasium as gym
    import stepgym.envs  # noqa: F401
    from stepgym.agents.scripted import run_episode

    env = gym.make(ENV, num_tasks=args.num_tasks, max_steps=args.max_turns, invalid_penalty=args.invalid_penalty)
    tasks = env.unwrapped.task_ids
    lines = [
        "| invalid prob. q | first commitment | steps | invalid steps | truncated | success (coin) | score |",
        "|---|---|---|---|---|---|---|",
    ]
    for q in (0.0, 0.1, 0.2):
        for how in ("right", "wrong", "skip"):
            rows = []
            for i in range(args.scripted_episodes):
                steps = run_episode(
                    env.unwrapped, SloppyPlan(how, q, seed=i), seed=i, options={"task_id": tasks[i % len(tasks)]}
                )
                info = steps[-1][5]
                n_inv = sum(not s[5]["valid_action"] for s in steps)
                won = float(info["won"])
                rows.append((len(steps), n_inv, float(steps[-1][4]), won, won - args.invalid_penalty * n_inv))
            m = np.array(rows).mean(0)
            lines.append(f"| {q} | {how} | {m[0]:.2f} | {m[1]:.2f} | {m[2]:.2f} | {m[3]:.2f} | {m[4]:.3f} |")
    return lines


def first_commitment(traj) -> str:
    return next((s.info["commitment"] for s in traj.steps if s.info.get("commitment")), None) or "none"


def model_rollouts(args: argparse.Namespace) -> list[str]:
    from stepgym.agents.models import load_model
    from stepgym.envs.pool import EnvPool
    from stepgym.envs.sandbox import SUBSETS
    from stepgym.trainers.credit import group_advantages
    from stepgym.trainers.credit_probe import sandbox_rollout

    model, tok = load_model(args.model)
    model.eval()
    kw = {"num_tasks": args.num_tasks, "max_steps": args.max_turns, "invalid_penalty": args.invalid_penalty}
    tasks = [f"{s}-train-{k}" for s in SUBSETS for k in range(args.num_tasks)]
    pool = EnvPool(ENV, num_envs=args.group_size * len(tasks), env_kwargs=kw)
    rollout = sandbox_rollout(pool, tok, group_size=args.group_size, max_turns=args.max_turns)
    per: dict[str, list[tuple[float, ...]]] = {"right": [], "wrong": [], "none": []}
    try:
        for r in range(args.repeats):
            with torch.no_grad():
                trajs = rollout(model, tasks, 1000 + r)
            scores = torch.tensor([float(t.outcome) + sum(s.reward for s in t.steps if not s.valid) for t in trajs])
            ids = {g: i for i, g in enumerate(dict.fromkeys(t.group_id for t in trajs))}
            groups = torch.tensor([ids[t.group_id] for t in trajs])
            adv = group_advantages(scores, groups)
            for t, s, a in zip(trajs, scores.tolist(), adv.tolist()):
                n_inv = sum(not st.valid for st in t.steps)
                per[first_commitment(t)].append((len(t.steps), n_inv, float(t.success), s, a))
    finally:
        pool.close()
    n = sum(len(v) for v in per.values())
    lines = [
        f"model `{args.model}`, {n} episodes ({args.repeats} x {len(tasks)} tasks x {args.group_size}), temperature 1, "
        f"invalid_penalty {args.invalid_penalty}, max_turns {args.max_turns}",
        "",
        "| first commitment | share | steps | invalid steps | success (coin) | score | mean GRPO advantage ± SE |",
        "|---|---|---|---|---|---|---|",
    ]
    for cls, rows in per.items():
        if not rows:
            lines.append(f"| {cls} | 0 | | | | | |")
            continue
        x = np.array(rows)
        se = x[:, 4].std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else math.nan
        lines.append(
            f"| {cls} | {len(x) / n:.2f} | {x[:, 0].mean():.2f} | {x[:, 1].mean():.2f} | {x[:, 2].mean():.2f} | "
            f"{x[:, 3].mean():.3f} | {x[:, 4].mean():+.3f} ± {se:.3f} |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/credit_sandbox/warm_start0")
    ap.add_argument("--num-tasks", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=12)
    ap.add_argument("--invalid-penalty", type=float, default=0.1)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--scripted-episodes", type=int, default=300)
    ap.add_argument("--skip-model", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lines = ["Scripted (Null, coin p = 0.5):", "", *scripted(args), ""]
    if not args.skip_model:
        if not (Path(args.model) / "config.json").is_file():
            raise SystemExit(f"no model at {args.model}: run benchmarks/credit_sandbox.py first or pass --model")
        lines += ["Warm-start policy (Null):", "", *model_rollouts(args), ""]
    lines.append(f"wall {time.perf_counter() - t0:.0f} s")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
