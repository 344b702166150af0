"""ALFWorld recipe (issue 16): walkthrough demonstrations -> SFT of SmolLM2 -> held-out eval -> RL -> eval.

Usage (one core, ``STEPGYM_DATA=../shared/data HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1``)::

    python benchmarks/alfworld_recipe.py --out runs/alfworld-recipe            # every stage, resumable
    python benchmarks/alfworld_recipe.py --stages demos sft_time                # measure SFT speed only

Stages, each cached as ``<out>/<stage>.json`` (a rerun skips finished stages; delete a file to redo it):

1. ``demos``: ALFWorld's walkthrough expert (:class:`~stepgym.agents.alfworld_agents.WalkthroughAgent`)
   plays every ``valid_train`` game through :func:`stepgym.trainers.sft.collect_demonstrations` (the
   rollout code, renderer and layout RL uses); :func:`~stepgym.agents.alfworld_agents.won_cleanly` keeps
   the won, all-valid episodes. Counts per task type.
2. ``base``: greedy evaluation of the base model on a fixed ``valid_unseen`` sample (``--eval-per-type``
   games of each of the six task types), through :func:`stepgym.trainers.runner.evaluate_model`.
3. ``sft``: :func:`stepgym.trainers.sft.sft_train` (loss on the agent's tokens only), model saved to
   ``<out>/sft-model``; ``sft_eval`` evaluates it on the same sample.
4. ``rl-<arm>-s<seed>``: :func:`stepgym.trainers.runner.run_training` from the SFT model, one run per credit
   method (GRPO and StepOPSD, same budget and seeds), with the share of all-equal groups logged per step;
   ``final-<arm>-s<seed>`` evaluates its last checkpoint.

Every stage records its wall time and peak resident memory (``VmHWM``, reset at the stage start). The
layout is ``concat`` (one row per episode): a per-step row repeats the protocol and first observation
for every step, 5x the tokens per episode on these games, and SFT runs at ~50 tokens/s on one core.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV_ID = "stepgym/ALFWorld-v0"
TYPES = ("pick", "look", "clean", "heat", "cool", "pick_two")

logger = logging.getLogger("alfworld_recipe")


# --------------------------------------------------------------------------- stage bookkeeping
def stage(out: Path, name: str, fn: Callable[[], dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Run ``fn`` once: its result, wall time and peak RSS go to ``<out>/<name>.json`` (reused on rerun)."""
    path = out / f"{name}.json"
    if path.is_file():
        logger.info("stage %s: done before (%s)", name, path)
        return json.loads(path.read_text())
    from stepgym.trainers.recipe import peak_rss_bytes, reset_peak_rss

    reset_peak_rss()
    t0 = time.perf_counter()
    result = fn()
    rss = peak_rss_bytes()
    record = {"stage": name, **result, "seconds": time.perf_counter() - t0, "peak_rss_mb": rss and rss / 2**20}
    record["args"] = vars(args)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    logger.info("stage %s: %.0f s, peak RSS %.0f MiB", name, record["seconds"], record["peak_rss_mb"] or 0)
    return record


# --------------------------------------------------------------------------- the run's config
def base_config(args: argparse.Namespace, **update: Any) -> Any:
    """The one :class:`TrainConfig` every stage reads (layout, turns, sampling, evaluation plan)."""
    from stepgym.trainers.config import TrainConfig

    fields: dict[str, Any] = {
        "model": args.model,
        "device": "cpu",
        "threads": 1,
        "env_id": ENV_ID,
        "env_kwargs": {"split": "train", "max_steps": args.max_turns},
        "layout": "concat",
        "max_turns": args.max_turns,
        "max_prompt_tokens": 2048,
        "sampling": {"max_new_tokens": args.max_new_tokens, "temperature": args.rl_temperature, "stop": ["</action>"]},
        "num_envs": args.num_envs,
        "group_size": args.group_size,
        "tasks_per_step": args.tasks_per_step,
        "total_steps": args.rl_steps,
        "optim": {"lr": args.rl_lr},
        "loss": {"aggregation": "seq-mean-token-mean"},
        "micro_batch_size": 2,
        "recompute_old_logprobs": False,  # the in-process policy shares the trained fp32 weights
        "teacher": {"target": "action", "placement": "prefix", "snapshot_interval": 10},
        "checkpoint_every": 0,
        "eval": {
            "every": 0,
            "tasks_per_subset": args.eval_per_type,
            "temperature": 0.0,
            "env_kwargs": {"split": "valid_unseen", "max_steps": args.max_turns},
        },
        "pad_token_id": 0,
    }
    fields.update(update)
    return TrainConfig(**fields)


# --------------------------------------------------------------------------- stages
def demos_path(out: Path) -> Path:
    return out / "demos.jsonl"


def make_demos(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Walkthrough episodes of the train games -> ``<out>/demos.jsonl`` (kept ones only)."""
    from stepgym.agents.alfworld_agents import WalkthroughAgent, won_cleanly
    from stepgym.agents.models import load_tokenizer
    from stepgym.trainers.runner import train_task_ids
    from stepgym.trainers.sft import collect_demonstrations

    config = base_config(args)
    tasks = train_task_ids(config)  # valid_train only: never an evaluation game
    random.Random(0).shuffle(tasks)
    tasks = tasks[: args.demo_games] if args.demo_games else tasks
    demos = collect_demonstrations(
        ENV_ID,
        lambda key: WalkthroughAgent(),
        load_tokenizer(args.model),
        tasks,
        env_kwargs={**config.env_kwargs, "max_steps": 50},
        layout=config.layout,
        max_turns=50,
        num_envs=4,
    )
    kept = [d for d in demos if won_cleanly(d)]
    with open(demos_path(out), "w", encoding="utf-8") as f:
        for d in kept:
            f.write(d.model_dump_json() + "\n")
    return demo_stats(demos, kept)


def demo_stats(demos: list[Any], kept: list[Any]) -> dict[str, Any]:
    """Counts per task type, episode lengths and token counts of the demonstrations."""
    count = collections.Counter
    return {
        "games": len(demos),
        "kept": len(kept),
        "games_by_type": dict(count(d.subset for d in demos)),
        "kept_by_type": dict(count(d.subset for d in kept)),
        "steps_mean": sum(d.num_steps for d in kept) / max(len(kept), 1),
        "steps_max": max((d.num_steps for d in kept), default=0),
        "tokens": sum(len(s.ids) for d in kept for s in d.sequences),
        "agent_tokens": sum(sum(s.loss_mask) for d in kept for s in d.sequences),
        "drift": sum(bool(d.info.get("retokenization_drift")) for d in kept),
    }


def load_demos(out: Path) -> list[Any]:
    from stepgym.envs.records import Trajectory

    return [Trajectory.model_validate_json(line) for line in demos_path(out).read_text().splitlines() if line]


def run_sft(args: argparse.Namespace, out: Path, *, epochs: float) -> dict[str, Any]:
    """SFT of the base model on the kept demonstrations; saves ``<out>/sft-model`` unless only timing."""
    import torch
    from stepgym.agents.models import load_model
    from stepgym.trainers.sft import sft_train

    demos = load_demos(out)
    torch.manual_seed(args.seed)
    if args.sft_demos and epochs >= 1:  # the first N kept demonstrations in a seeded order (the CPU budget)
        demos = random.Random(args.seed).sample(demos, min(args.sft_demos, len(demos)))
    if epochs < 1:  # a timing run: a fraction of the rows, one pass
        demos = random.Random(0).sample(demos, max(args.sft_batch, int(len(demos) * epochs)))
    model, tok = load_model(args.model)
    t0 = time.perf_counter()
    losses = sft_train(
        model,
        demos,
        epochs=max(1, int(epochs)),
        lr=args.sft_lr,
        batch_size=args.sft_batch,
        seed=args.seed,
        pad_token_id=tok.pad_token_id or 0,
        schedule="cosine",
        on_step=lambda k, loss: logger.info("SFT step %d: loss %.3f (%.0f s)", k, loss, time.perf_counter() - t0),
    )
    seconds = time.perf_counter() - t0
    tokens = sum(len(s.ids) for d in demos for s in d.sequences) * max(1, int(epochs))
    if epochs >= 1:
        from stepgym.trainers.recipe import save_model_atomically

        save_model_atomically(model, tok, out / "sft-model")
    return {
        "demos": len(demos),
        "optimizer_steps": len(losses),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses": losses,
        "train_seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "threads": torch.get_num_threads(),
    }


def run_eval(args: argparse.Namespace, model: Any, tok: Any) -> dict[str, Any]:
    """Greedy evaluation on the fixed valid_unseen sample; per task type and overall."""
    from stepgym.trainers.evaluate import overall
    from stepgym.trainers.runner import eval_task_ids, evaluate_model

    config = base_config(args)
    tasks = eval_task_ids(config, seed=0)
    results, trajs = evaluate_model(config, model, tok, tasks, temperature=0.0, seed=0)
    per_game = {t.task_id: float(t.success) for t in trajs}
    samples = [
        {"task": t.task_id, "success": t.success, "actions": [s.action_text for s in t.steps][:12]}
        for t in trajs[:: max(1, len(trajs) // 6)]
    ]
    return {
        "results": {k: r.to_dict() for k, r in {**results, "avg": overall(results)}.items()},
        "per_game": per_game,
        "samples": samples,
    }


def eval_model_dir(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    import torch
    from stepgym.agents.models import load_model

    torch.manual_seed(0)
    model, tok = load_model(folder)
    model.eval()
    return run_eval(args, model, tok)


def run_rl(args: argparse.Namespace, out: Path, arm: str, seed: int) -> dict[str, Any]:
    """RL from the SFT model with credit ``arm``; keeps the per-step rollout metrics (all-equal-group share...)."""
    from stepgym.trainers.runner import run_training

    run_dir = out / f"rl-{arm}-s{seed}{args.rl_tag}"
    config = base_config(
        args, model=str(out / "sft-model"), credit=arm, seed=seed, output_dir=str(run_dir), checkpoint_every=0
    )
    t0 = time.perf_counter()
    result = run_training(config)
    seconds = time.perf_counter() - t0
    keys = (
        "rollout/success",
        "rollout/all_equal_groups",
        "rollout/invalid_action_rate",
        "rollout/response_tokens",
        "time/step",
        "time/rollout",
        "time/credit",
        "time/update",
    )
    history = [{k: h[k] for k in keys if k in h} for h in result.history]
    return {
        "checkpoint": str(result.checkpoint),
        "final_step": result.final_step,
        "seconds_per_step": seconds / max(len(result.history), 1),
        "history": history,
    }


# --------------------------------------------------------------------------- report
def table(records: dict[str, dict[str, Any]]) -> str:
    """Markdown: success (invalid-step share) per task type, one column per evaluated model."""
    cols = [k for k in records if "results" in records[k]]
    lines = ["| task type | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for t in (*TYPES, "avg"):
        cells = []
        for c in cols:
            r = records[c]["results"].get(t)
            cells.append("-" if r is None else f"{r['success']:.2f} ({r['invalid_rate']:.2f}) n={r['n']}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/alfworld-recipe")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--stages", nargs="+", default=["demos", "base", "sft", "sft_eval", "rl"])
    ap.add_argument("--demo-games", type=int, default=0, help="train games to play (0: all 200)")
    ap.add_argument("--sft-epochs", type=int, default=1)
    ap.add_argument("--sft-demos", type=int, default=0, help="kept demonstrations to train on (0: all)")
    ap.add_argument("--sft-lr", type=float, default=1e-4)
    ap.add_argument("--sft-batch", type=int, default=2)
    ap.add_argument("--eval-per-type", type=int, default=3)
    ap.add_argument("--max-turns", type=int, default=15)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--num-envs", type=int, default=8)
    ap.add_argument("--arms", nargs="+", default=["grpo", "stepopsd"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--seed", type=int, default=0, help="SFT seed")
    ap.add_argument("--rl-steps", type=int, default=2)
    ap.add_argument("--rl-lr", type=float, default=1e-5)
    ap.add_argument("--rl-temperature", type=float, default=1.0, help="RL sampling temperature")
    ap.add_argument("--rl-tag", default="", help="suffix of the RL stage names (a variant of the same arms)")
    ap.add_argument("--skip-final", action="store_true", help="RL stages without their final evaluation (timing)")
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--tasks-per-step", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # every module a stage needs, imported before the first stage: a run of an hour keeps the code it started
    # with even when the checkout changes under it (a merge while it runs)
    import stepgym.agents.alfworld_agents
    import stepgym.envs.alfworld
    import stepgym.trainers.evaluate
    import stepgym.trainers.recipe
    import stepgym.trainers.runner
    import stepgym.trainers.sft  # noqa: F401
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "args.json").write_text(json.dumps(vars(args), indent=1))
    records: dict[str, dict[str, Any]] = {}
    if "demos" in args.stages:
        records["demos"] = stage(out, "demos", lambda: make_demos(args, out), args)
    if "sft_time" in args.stages:
        records["sft_time"] = stage(out, "sft_time", lambda: run_sft(args, out, epochs=0.05), args)
    if "base" in args.stages:
        records["base"] = stage(out, "base", lambda: eval_model_dir(args, args.model), args)
    if "sft" in args.stages:
        records["sft"] = stage(out, "sft", lambda: run_sft(args, out, epochs=args.sft_epochs), args)
    if "sft_eval" in args.stages:
        records["sft_eval"] = stage(out, "sft_eval", lambda: eval_model_dir(args, str(out / "sft-model")), args)
    if "rl" in args.stages:
        from stepgym.trainers.runner import load_checkpoint_model

        for seed in args.seeds:
            for arm in args.arms:
                name = f"{arm}-s{seed}{args.rl_tag}"
                rl = stage(out, f"rl-{name}", lambda arm=arm, seed=seed: run_rl(args, out, arm, seed), args)
                records[f"rl-{name}"] = rl

                def final(rl: dict[str, Any] = rl) -> dict[str, Any]:
                    model, tok, _ = load_checkpoint_model(rl["checkpoint"])
                    return run_eval(args, model, tok)

                if not args.skip_final:
                    records[f"final-{name}"] = stage(out, f"final-{name}", final, args)
    for name, r in records.items():
        rss = r.get("peak_rss_mb")
        print(f"{name}: {r['seconds']:.0f} s, peak RSS {rss if rss is None else round(rss)} MiB")
    print(table(records))
    if "demos" in records:
        d = records["demos"]
        print(f"demos: kept {d['kept']} of {d['games']}: {d['kept_by_type']}")
    if math.isfinite(float(records.get("sft", {}).get("tokens_per_s", math.nan))):
        print(f"SFT: {records['sft']['tokens_per_s']:.0f} tokens/s")


if __name__ == "__main__":
    main()
