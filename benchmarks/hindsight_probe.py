"""Hindsight probe with a real chat model (issue 17, item 2(b)): can SmolLM2-135M-Instruct read the sandbox's hindsight?

The question: given "final_correctness: incorrect" and a successful peer's trajectory, does the teacher
(the model itself, under hindsight) lower the log-prob of the *wrong treatment* it is shown -- more than it
lowers the other actions of the same trajectory? That is the signal StepOPSD needs from its teacher; the
0.85M sandbox model cannot read text (issue 17, item 2(a)), a 135M instruction-tuned model might.

Forward passes only. ``NoisyExpert(p, "alter")`` plays ``Sandbox-One`` (it navigates perfectly and applies
the wrong treatment with probability ``p``, so a failed episode's one decisive step is its wrong
commitment), rendered with the model's own chat template in the concatenated layout, exactly as a
rollout. Then, per hindsight condition (placement ``inline``/``prefix``; the peer, or a peer from
another task as the negative control), ``runner.make_teacher`` rescores the action tokens, and per
(trajectory, step) the probe takes the mean teacher gap ``Δ = log p_teacher - log p_student`` over the
step's action tokens. Per failed trajectory with a peer: ``Δ_dec`` on the wrong commitment, ``Δ_neu``
the mean over its neutral steps, and the **contrast** ``Δ_dec - Δ_neu`` (< 0: the hindsight singles out
the wrong treatment). Successful trajectories (hindsight "correct", no peer) give the same numbers for
the right commitment. CIs: percentile bootstrap over trajectories (95 %).

Usage::

    python benchmarks/hindsight_probe.py [--model smollm2-135m] [--num-tasks 2] [--group-size 8]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from credit_diagnostic import scored_demos
from credit_sandbox import paired_bootstrap

CONDITIONS = {
    "inline, outcome + peer": ("inline", ("outcome", "peer")),
    "prefix, outcome + peer": ("prefix", ("outcome", "peer")),
    "prefix, outcome + shuffled peer (control)": ("prefix", ("outcome", "shuffled_peer")),
}
"""Name -> (placement, hindsight parts). The shuffled peer shows another task solved: same form, no information."""


def step_gaps(credit, logp_t: torch.Tensor, target: torch.Tensor, n_traj: int) -> list[np.ndarray]:
    """Per trajectory, the mean teacher gap over each step's action tokens (NaN for a step without any)."""
    from stepgym.distill.diagnostics import per_step_credit

    keep = target * credit.action_mask * credit.mask  # [B, L]
    gap = (logp_t - credit.logp_old) * keep  # [B, L]
    return per_step_credit(gap, credit.step_index, credit.traj_index, mask=keep, num_trajectories=n_traj, reduce="mean")


def contrasts(gaps: list[np.ndarray], flags: list[list[bool]], select: list[bool]) -> dict[str, np.ndarray]:
    """``Δ_dec``, ``Δ_neu`` and their difference per selected trajectory with a decisive and a neutral step."""
    dec, neu, lowest = [], [], []
    for g, f, use in zip(gaps, flags, select):
        f = np.asarray(f[: len(g)], dtype=bool)
        if not use or not f.any() or f.all():
            continue
        d, n = g[f], g[~f]
        d, n = d[np.isfinite(d)], n[np.isfinite(n)]
        if not d.size or not n.size:
            continue
        dec.append(d.mean())
        neu.append(n.mean())
        lowest.append(float(d.min() < n.min()))
    dec_a, neu_a = np.array(dec), np.array(neu)
    return {"dec": dec_a, "neu": neu_a, "contrast": dec_a - neu_a, "lowest": np.array(lowest)}


def fmt_ci(x: np.ndarray) -> str:
    if not x.size:
        return "n/a"
    lo, hi = paired_bootstrap(x)
    ci = "" if math.isnan(lo) else f" [{lo:+.3f}, {hi:+.3f}]"
    return f"{x.mean():+.3f}{ci}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--p", type=float, default=0.5, help="NoisyExpert: chance of a wrong treatment")
    ap.add_argument("--num-tasks", type=int, default=2, help="tasks per subset (3 subsets)")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-turns", type=int, default=12)
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    args = ap.parse_args()

    from stepgym.agents.models import load_model
    from stepgym.envs.sandbox import SUBSETS
    from stepgym.trainers.config import TrainConfig
    from stepgym.trainers.runner import make_teacher

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    model.eval()
    env_id = "stepgym/Sandbox-One-v0"
    trajs, flags, batch, credit = scored_demos(
        model,
        tok,
        env_id,
        [f"{s}-train-{k}" for s in SUBSETS for k in range(args.num_tasks)],
        {"num_tasks": args.num_tasks, "max_steps": args.max_turns},
        p=args.p,
        group_size=args.group_size,
        max_turns=args.max_turns,
        seed=args.seed,
        micro_batch_size=4,
    )
    groups = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t.success)
    failed_peer = [not t.success and any(groups[t.group_id]) for t in trajs]
    succeeded = [bool(t.success) for t in trajs]
    lines = [
        f"model `{args.model}`; NoisyExpert(p={args.p}, alter) on Sandbox-One, {args.num_tasks} tasks per subset x "
        f"{args.group_size} episodes ({len(trajs)} episodes, {sum(succeeded)} successes, {sum(failed_peer)} failed "
        f"with a successful peer), {int(batch.attention_mask.sum(1).float().mean())} tokens per row on average. "
        "Δ = log p_teacher - log p_student, mean over a step's action tokens; mean [95 % bootstrap CI] over "
        "trajectories.",
        "",
        "| condition | trajectories | Δ wrong treatment (failed) | Δ neutral steps (failed) | contrast (failed) | "
        "wrong treatment lowered most | Δ right treatment (successful, 'correct') | contrast (successful) | s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.conditions:
        placement, parts = CONDITIONS[name]
        t1 = time.perf_counter()
        config = TrainConfig(
            model="unused",
            env_id=env_id,
            pad_token_id=tok.pad_token_id,
            micro_batch_size=4,
            teacher={"placement": placement, "hindsight": parts, "target": "action"},
        )
        with torch.no_grad():
            logp_t, target = make_teacher(tok, config)(model, batch, trajs)
        gaps = step_gaps(credit, logp_t, target, len(trajs))
        bad = contrasts(gaps, flags, failed_peer)
        good = contrasts(gaps, flags, succeeded)
        lowest = f"{bad['lowest'].mean():.2f}" if bad["lowest"].size else "n/a"
        lines.append(
            f"| {name} | {bad['dec'].size} / {good['dec'].size} | {fmt_ci(bad['dec'])} | {fmt_ci(bad['neu'])} | "
            f"{fmt_ci(bad['contrast'])} | {lowest} | {fmt_ci(good['dec'])} | {fmt_ci(good['contrast'])} | "
            f"{time.perf_counter() - t1:.0f} |"
        )
        print(lines[-1], flush=True)
    lines += ["", f"wall {time.perf_counter() - t0:.0f} s (one torch thread)"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
