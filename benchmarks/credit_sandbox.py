"""Credit sandbox learning comparison (issue 9, issue 22): grpo vs the step-level methods on a tiny model, on CPU.

Usage:
    python benchmarks/credit_sandbox.py [--steps 20] [--seeds 0 1 2] [--variants One Null]
        [--methods grpo stepopsd sdar gigpo rlsd craft sgcd paw atod triage ucob] [--jobs 2]
        [--out runs/credit_sandbox]

The arms are :data:`METHODS`: the published-code methods and the related 2026 methods of
ALGORITHMS.md §10 ([recon], at their default options; ``triage`` with the oracle judge of the
sandbox's commitments, ``atod`` and ``ucob`` with the hindsight self-teacher).

1. Warm start (once, cached in ``<out>/warm_start``): a random-init ~0.85M-parameter Qwen3 with the
   sandbox word-level tokenizer (``stepgym.agents.sandbox_model``), trained by cross-entropy
   (``stepgym.trainers.sft``, cosine lr) on NoisyExpert(p=0.5, alter) demonstrations of the ``One``
   worlds: the demos navigate perfectly and apply the wrong treatment half the time, so RL starts
   from mixed success whose only remedy is the decisive step (choosing the treatment the task names).
2. RL: ``stepgym.trainers.runner.run_training`` with every method under the same budget (steps, tasks per
   step, group size, lr, seeds), each method wrapped by ``stepgym.trainers.credit_probe.probed``
   (and ``wrap_rollout=probe_rollout``) so the credit-causality AUC of its per-step credit (and the
   rate of right treatments) is measured on every training batch. Runs go ``--jobs`` at a time in
   spawned processes. The teacher methods' hindsight is placed as a prefix (``--teacher-placement``).
3. Report: success vs RL step (mean +- std over seeds), steps to reach GRPO's final success, the
   AUC early / late in training, and the null-variant check; a markdown table and PNG plots in
   ``<out>``. Runs already finished (``history.json``) are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

VARIANT_ENV = {v: f"stepgym/Sandbox-{v}-v0" for v in ("One", "Two", "Delayed", "Null")}
METHODS = ["grpo", "stepopsd", "sdar", "gigpo", "rlsd", "craft", "sgcd", "paw", "atod", "triage", "ucob"]


def tasks_of(num_tasks: int) -> list[str]:
    from stepgym.envs.sandbox import SUBSETS

    return [f"{s}-train-{k}" for s in SUBSETS for k in range(num_tasks)]


def warm_start(out: Path, args: argparse.Namespace) -> Path:
    """Build + SFT the warm-start model once; returns its folder."""
    from stepgym.agents.models import load_model
    from stepgym.agents.sandbox_agents import NoisyExpert
    from stepgym.agents.sandbox_model import build_sandbox_model
    from stepgym.trainers.sft import collect_demonstrations, sft_train

    folder = out / "warm_start"
    if (folder / "config.json").is_file():
        return folder
    init = build_sandbox_model(out / "init", seed=0)
    model, tok = load_model(str(init))
    kw = {"num_tasks": args.num_tasks, "max_steps": args.max_turns}
    demos = collect_demonstrations(
        "stepgym/Sandbox-One-v0",
        lambda k: NoisyExpert(args.demo_p, "alter", seed=k),
        tok,
        tasks_of(args.num_tasks),
        env_kwargs=kw,
        group_size=8,
        layout="concat",
        max_turns=args.max_turns,
    )
    t0 = time.perf_counter()
    torch.manual_seed(0)
    losses = sft_train(
        model,
        demos,
        epochs=args.sft_epochs,
        lr=3e-3,
        batch_size=8,
        seed=0,
        pad_token_id=tok.pad_token_id,
        schedule="cosine",
    )
    print(
        f"warm start: {len(demos)} demos (success {np.mean([d.success for d in demos]):.2f}), "
        f"{len(losses)} SFT steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, {time.perf_counter() - t0:.0f} s"
    )
    tmp = out / "warm_start.tmp"
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    shutil.rmtree(init, ignore_errors=True)
    return folder


def run_one(model_dir: Path, variant: str, method: str, seed: int, args: argparse.Namespace, out: Path) -> list[dict]:
    """One RL run through ``run_training``; returns its per-step metrics (cached in history.json)."""
    from stepgym.trainers.config import TrainConfig
    from stepgym.trainers.credit_probe import probe_rollout, probed
    from stepgym.trainers.runner import run_training

    run_dir = out / variant / method / f"seed{seed}"
    cached = run_dir / "history.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = TrainConfig(
        model=str(model_dir),
        device="cpu",
        env_id=VARIANT_ENV[variant],
        env_kwargs={"num_tasks": args.num_tasks, "max_steps": args.max_turns, "invalid_penalty": args.invalid_penalty},
        num_envs=args.group_size * args.tasks_per_step,
        group_size=args.group_size,
        tasks_per_step=args.tasks_per_step,
        layout="concat",
        max_turns=args.max_turns,
        sampling={"max_new_tokens": 24, "temperature": 1.0, "stop": ["</action>"]},
        credit=probed(method),
        optim={"lr": args.lr},
        mini_batches=args.mini_batches,
        # each trajectory weighs the same: with token-mean, long failed episodes (invalid steps) outweigh
        # the successful ones and GRPO did not learn here (measured: 0.54 -> 0.44 in 16 steps)
        loss={"aggregation": args.aggregation},
        # generation log-probs are the trained model's own (fp32, same forward): no second pass needed
        recompute_old_logprobs=False,
        micro_batch_size=16,
        total_steps=args.steps,
        checkpoint_every=0,
        seed=seed,
        output_dir=str(run_dir),
        pad_token_id=0,
        eval={"every": 0},
        # hindsight once before the row's first generated token: the inline placement (before every
        # step) cost 40-45 s per RL step here against ~9 s for GRPO (measured on the first runs)
        teacher={"snapshot_interval": 5, "placement": args.teacher_placement},
    )
    hist = run_training(config, wrap_rollout=probe_rollout).history
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    cached.write_text(json.dumps(hist))
    return hist


def _run_timed(model_dir: Path, variant: str, method: str, seed: int, args: argparse.Namespace, out: Path):
    torch.set_num_threads(1)
    t = time.perf_counter()
    return run_one(model_dir, variant, method, seed, args, out), time.perf_counter() - t


# ---------------------------------------------------------------------------------------------- report
def series(hists: list[list[dict]], key: str) -> np.ndarray:
    """[seeds, steps] of ``key`` (NaN where missing)."""
    return np.array([[float(h.get(key, math.nan)) for h in hist] for hist in hists], dtype=float)


def smooth(x: np.ndarray, w: int = 3) -> np.ndarray:
    """Trailing moving average over the last ``w`` steps (fewer at the start)."""
    return np.array([np.nanmean(x[..., max(0, i - w + 1) : i + 1], axis=-1) for i in range(x.shape[-1])]).T


def fmt(m: float, s: float) -> str:
    return "n/a" if math.isnan(m) else f"{m:.2f} ± {s:.2f}"


def nanmean_std(x: np.ndarray) -> tuple[float, float]:
    x = x[~np.isnan(x)]
    return (float(x.mean()), float(x.std())) if x.size else (math.nan, math.nan)


def report(results: dict, args: argparse.Namespace, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    k = max(1, args.steps // 3)
    for variant, by_method in results.items():
        lines += [
            f"### {variant}",
            "",
            "| method | success, first step | success, last 3 steps | steps to GRPO's final | "
            "AUC \\|A\\| failed (first / last third) | AUC \\|A\\| successful (first / last third) | "
            "AUC \\|Δ\\| failed (last third) | AUC \\|Δ\\| successful (last third) | "
            "right treatment, first / last 3 steps | s / step |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        grpo_final = (
            float(np.mean(series(by_method["grpo"], "rollout/success")[:, -3:])) if "grpo" in by_method else math.nan
        )
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for method, hists in by_method.items():
            succ = series(hists, "rollout/success")  # [S, N]
            sm = smooth(succ)  # [S, N]
            mean_curve = sm.mean(0)
            reach = np.flatnonzero(mean_curve >= grpo_final - 1e-9)
            reach_s = f"{int(reach[0]) + 1}" if reach.size else f"> {args.steps}"
            first = fmt(float(succ[:, 0].mean()), float(succ[:, 0].std()))
            last = succ[:, -3:].mean(1)
            auc = {}
            for key in ("auc_adv_failed", "auc_adv_successful", "auc_delta_failed", "auc_delta_successful"):
                x = series(hists, f"credit/{key}")
                auc[key] = (nanmean_std(x[:, :k]), nanmean_std(x[:, -k:]))
            tstep = float(np.mean(series(hists, "time/step")))
            rc = series(hists, "credit/right_commitment")  # [S, N]
            rc_first, rc_last = nanmean_std(rc[:, :1]), nanmean_std(rc[:, -3:].mean(1))
            lines.append(
                f"| {method} | {first} | {fmt(float(last.mean()), float(last.std()))} | {reach_s} | "
                f"{fmt(*auc['auc_adv_failed'][0])} / {fmt(*auc['auc_adv_failed'][1])} | "
                f"{fmt(*auc['auc_adv_successful'][0])} / {fmt(*auc['auc_adv_successful'][1])} | "
                f"{fmt(*auc['auc_delta_failed'][1])} | {fmt(*auc['auc_delta_successful'][1])} | "
                f"{fmt(*rc_first)} / {fmt(*rc_last)} | {tstep:.1f} |"
            )
            x = np.arange(1, succ.shape[1] + 1)
            axes[0].plot(x, sm.mean(0), label=method)
            axes[0].fill_between(x, sm.mean(0) - sm.std(0), sm.mean(0) + sm.std(0), alpha=0.15)
            a = series(hists, "credit/auc_adv_failed")
            with np.errstate(all="ignore"):
                axes[1].plot(x, np.nanmean(smooth(a), axis=0), label=method)
        axes[0].set(title=f"{variant}: rollout success (3-step mean, ± std over seeds)", xlabel="RL step")
        axes[1].set(title=f"{variant}: causality AUC of |A|, failed trajectories", xlabel="RL step", ylim=(0, 1))
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / f"{variant.lower()}.png", dpi=90)
        plt.close(fig)
        if variant == "Null" and "grpo" in by_method:
            g = series(by_method["grpo"], "rollout/success")[:, -3:].mean(1)
            gr = series(by_method["grpo"], "credit/right_commitment")[:, -3:].mean(1)
            lines += [
                "",
                "Null check, last 3 steps minus GRPO's (noise = 2 x the standard error of the difference over seeds).",
                "Success is a coin drawn from the env's seeded generator at reset, so the same seeds give every",
                "method the same outcomes; the right-treatment rate shows whether a method moves the (nominally)",
                "decisive behaviour although the outcome carries no signal:",
                "",
            ]
            for method, hists in by_method.items():
                if method == "grpo":
                    continue
                parts = []
                for key, ref in (("rollout/success", g), ("credit/right_commitment", gr)):
                    m = series(hists, key)[:, -3:].mean(1)
                    diff = float(m.mean() - ref.mean())
                    se = math.sqrt(m.var(ddof=1) / len(m) + ref.var(ddof=1) / len(ref)) if len(m) > 1 else math.nan
                    verdict = "beyond noise" if abs(diff) > 2 * se else "within noise"
                    parts.append(f"{key.split('/')[1]} {diff:+.3f} (2·SE {2 * se:.3f}, {verdict})")
                lines.append(f"- {method}: " + "; ".join(parts))
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["One", "Null"], choices=list(VARIANT_ENV))
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--tasks-per-step", type=int, default=6)
    ap.add_argument("--num-tasks", type=int, default=4, help="tasks per subset (3 subsets)")
    ap.add_argument("--max-turns", type=int, default=12)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--mini-batches", type=int, default=2, help="optimizer steps per RL step")
    ap.add_argument("--invalid-penalty", type=float, default=0.1, help="the env's penalty per invalid step")
    ap.add_argument("--aggregation", default="seq-mean-token-mean", help="policy-loss aggregation (LossConfig)")
    ap.add_argument("--sft-epochs", type=int, default=60)
    ap.add_argument("--teacher-placement", default="prefix", choices=["prefix", "inline"])
    ap.add_argument("--demo-p", type=float, default=0.5)
    ap.add_argument("--jobs", type=int, default=2, help="RL runs at once (one torch thread each)")
    ap.add_argument("--out", default="runs/credit_sandbox")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model_dir = warm_start(out, args)
    runs = [(v, m, s) for v in args.variants for m in args.methods for s in args.seeds]
    results: dict[str, dict[str, list]] = {v: {m: [] for m in args.methods} for v in args.variants}
    # independent runs, ``--jobs`` at a time (one torch thread each): spawned so no torch state is forked
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as ex:
        futs = {ex.submit(_run_timed, model_dir, v, m, s, args, out): (v, m, s) for v, m, s in runs}
        bar = tqdm(total=len(runs), desc="RL runs", unit="run")
        for fut in as_completed(futs):
            v, m, s = futs[fut]
            hist, wall = fut.result()
            bar.update()
            succ = [round(h["rollout/success"], 2) for h in hist]
            bar.write(f"{v} {m} seed {s}: {wall:.0f} s, success {succ}")
        bar.close()
    for v, m, s in runs:  # in a fixed order, from the cached histories
        results[v][m].append(_run_timed(model_dir, v, m, s, args, out)[0])
    table = report(results, args, out)
    header = (
        f"steps={args.steps}, seeds={args.seeds}, group_size={args.group_size}, tasks_per_step="
        f"{args.tasks_per_step}, num_tasks={args.num_tasks}x3, lr={args.lr}, wall {time.perf_counter() - t0:.0f} s\n\n"
    )
    (out / f"table_{'_'.join(args.variants)}.md").write_text(header + table)
    print(header + table)


if __name__ == "__main__":
    main()
