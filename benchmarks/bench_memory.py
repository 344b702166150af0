#!/usr/bin/env python
"""The memory guard's estimate against the measured peak RSS of real training runs.

Each setting trains in a fresh child process (``run_training`` on the preset's config, as the main job
does, without the final evaluation whose peak is lower) and reports its peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``: the JVM of Pyserini's BM25 runs in-process and is included) and
the longest token row it trained on. The parent compares with
:func:`stepgym.trainers.experiment.check_model_fits`' estimate (:mod:`stepgym.trainers.memory`).

    OMP_NUM_THREADS=1 STEPGYM_DATA=../shared/data python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    # the main job's default: python benchmarks/run.py --env searchqa (one step instead of two)
    "smoke": ("searchqa", {"total_steps": 1}),
    # larger: 4 questions x 2 rollouts, micro-batch 8, 64 new tokens per turn, top-3 passages
    "larger": (
        "searchqa",
        {
            "total_steps": 1,
            "tasks_per_step": 4,
            "micro_batch_size": 8,
            "num_envs": 8,
            "sampling": {"max_new_tokens": 64},
            "env_kwargs": {"topk": 3},
        },
    ),
}

CHILD = r"""
import json, resource, sys
from stepgym.trainers.config import TrainConfig
from stepgym.trainers.runner import run_training
cfg = TrainConfig(**json.loads(sys.argv[1]))
longest = [0]
def wrap(fn):
    def rollout(model, task_ids, seed):
        trajs = fn(model, task_ids, seed)
        longest[0] = max([longest[0]] + [len(s.ids) for t in trajs for s in t.sequences])
        return trajs
    return rollout
run_training(cfg, wrap_rollout=wrap)
print("RESULT " + json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                              "longest_row": longest[0]}))
"""


def config_for(env: str, over: dict, model: str, out: str) -> dict:
    from stepgym.trainers import presets as P
    from stepgym.trainers.experiment import deep_merge, resolve_env

    env_id = resolve_env(env)
    data = deep_merge(P.get_preset("smoke", env_id).config, over)
    data.update(model=model, env_id=env_id, output_dir=out)
    return data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    from stepgym.trainers.experiment import build_config, check_model_fits, estimate_run_memory

    gib = 2**30
    rows = []
    for name in args.settings:
        env, over = SETTINGS[name]
        with tempfile.TemporaryDirectory() as tmp:
            data = config_for(env, over, args.model, str(Path(tmp) / "run"))
            cfg = build_config(data)
            line = check_model_fits(cfg, training=True)
            r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(data)], capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
        got = json.loads(r.stdout.rsplit("RESULT ", 1)[1])
        at_row = estimate_run_memory(cfg, training=True, seq_len=got["longest_row"])
        rows.append((name, got, at_row.total, line))
        print(f"{name}: guard said {line}", flush=True)
    print("\n| setting | measured peak RSS (GiB) | longest row | estimate at that row (GiB) | ratio | guard range |")
    print("|---|---|---|---|---|---|")
    for name, got, est, line in rows:
        peak = got["peak_rss"] / gib
        guard = line.split("needs ~")[1].split(" GiB")[0]
        print(f"| {name} | {peak:.2f} | {got['longest_row']} | {est / gib:.2f} | {est / gib / peak:.2f} | {guard} |")


if __name__ == "__main__":
    main()
