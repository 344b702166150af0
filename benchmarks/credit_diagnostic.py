"""Credit-causality diagnostic (issue 9): every credit method on the SAME batch, per sandbox variant.

For each variant (``stepgym/Sandbox-{One,Two,Delayed,Null}-v0``) one fixed batch of trajectories is
played by ``NoisyExpert(p, "alter")`` (it applies the wrong treatment with probability ``p`` per
decisive step, so groups mix successes and failures and the decisive steps are known), tokenized
with the model's chat template exactly as a rollout would be (``collect``, concat layout). The
student log-probs are the model's own (``compute_logprobs``), the teacher log-probs come from the
same model under hindsight (``runner.make_teacher``: outcome + peer, inline, step targets) -- the
inputs the trainer gives a credit method. Every method (and the ``oracle`` positive control) then
computes its advantages on that one batch, and the diagnostic reports the decisive-credit share
(``credit_probe.batch_share``: lift against GRPO, against same-position neutral steps, placebo) and
the AUC with which the per-step mean ``|A|`` (and the teacher gap
``|Delta|`` = ``|logp_teacher - logp_student|`` on target tokens) ranks decisive steps above the
neutral steps of the same trajectory (``stepgym.distill.diagnostics``), in failed and in successful
trajectories. 0.5 = no preference (GRPO's constant advantage), 1 = every decisive step first.

Usage::

    python benchmarks/credit_diagnostic.py [--model runs/credit_sandbox/warm_start0] [--p 0.5]
        [--num-tasks 4] [--group-size 8] [--methods grpo stepopsd sdar gigpo rlsd]

``--model`` defaults to the warm start of ``benchmarks/credit_sandbox.py`` when it exists, else a
random-init sandbox model (whose teacher gap is noise: a floor to compare with).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

VARIANTS = ("One", "Two", "Delayed", "Null")
METHODS = ["grpo", "stepopsd", "sdar", "gigpo", "rlsd", "stepgym.trainers.credit_controls:oracle"]


def fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def scored_demos(
    model, tok, env_id: str, tasks: list[str], env_kwargs: dict, *, p: float, group_size: int, max_turns: int,
    seed: int, micro_batch_size: int, agent_seed: int = 1000,
) -> tuple:
    """NoisyExpert(p, "alter") episodes of ``tasks`` in the concat layout, their decisive flags, the collated batch
    and its credit batch with ``logp_old`` scored by ``model`` (the setup this diagnostic, hindsight_probe and
    credit_sandbox's hindsight-teacher diagnostic share). Episode ``k``'s agent is seeded ``agent_seed + k``.
    """
    from stepgym.agents.sandbox_agents import NoisyExpert
    from stepgym.distill.diagnostics import decisive_flags
    from stepgym.trainers.batch import collate
    from stepgym.trainers.sft import collect_demonstrations
    from stepgym.trainers.update import compute_logprobs

    trajs = collect_demonstrations(
        env_id,
        lambda k: NoisyExpert(p, "alter", seed=agent_seed + k),
        tok,
        tasks,
        env_kwargs=env_kwargs,
        group_size=group_size,
        layout="concat",
        max_turns=max_turns,
        seed=seed,
    )
    flags = decisive_flags(trajs)
    batch = collate(trajs, pad_token_id=tok.pad_token_id)
    credit = batch.credit
    with torch.no_grad():
        logp = compute_logprobs(
            model, batch.input_ids, batch.attention_mask, micro_batch_size=micro_batch_size, score_mask=credit.mask
        )  # [B, L]
    return trajs, flags, batch, replace(credit, logp_old=logp * credit.mask)


def diagnose(model, tok, variant: str, args: argparse.Namespace) -> dict:
    from stepgym.envs.sandbox import SUBSETS
    from stepgym.trainers.config import TrainConfig
    from stepgym.trainers.credit import get_credit
    from stepgym.trainers.credit_probe import announce, batch_auc, batch_share
    from stepgym.trainers.runner import make_teacher

    env_id = f"stepgym/Sandbox-{variant}-v0"
    kw = {"num_tasks": args.num_tasks, "max_steps": 40}
    tasks = [f"{s}-train-{k}" for s in SUBSETS for k in range(args.num_tasks)]
    trajs, flags, batch, credit = scored_demos(
        model, tok, env_id, tasks, kw, p=args.p, group_size=args.group_size, max_turns=40, seed=args.seed,
        micro_batch_size=16,
    )
    config = TrainConfig(model="unused", env_id=env_id, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        logp_t, target = make_teacher(tok, config)(model, batch, trajs)
    teacher_credit = replace(credit, logp_teacher=logp_t, target_mask=target)
    row: dict = {
        "success": float(np.mean([t.success for t in trajs])),
        "episodes": len(trajs),
        "decisive_steps": int(sum(sum(f) for f in flags)),
    }
    announce(trajs)  # the oracle reads the decisive flags
    for method in args.methods:
        m = get_credit(method)
        out = m(teacher_credit if m.needs_teacher else credit)
        res = batch_auc(teacher_credit if m.needs_teacher else credit, out.advantages, flags)
        row[method] = {**res, **batch_share(credit, out.advantages, flags)}
    delta = batch_auc(teacher_credit, torch.zeros_like(credit.mask), flags)
    gap = (teacher_credit.logp_teacher - teacher_credit.logp_old) * teacher_credit.targets  # [B, L]
    row["delta"] = {**delta, **batch_share(credit, gap, flags)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--p", type=float, default=0.5, help="NoisyExpert: chance of a wrong treatment per decisive step")
    ap.add_argument("--num-tasks", type=int, default=4, help="tasks per subset (3 subsets)")
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    args = ap.parse_args()
    from stepgym.agents.models import load_model
    from stepgym.agents.sandbox_model import sandbox_model_dir

    torch.set_num_threads(1)
    default = Path("runs/credit_sandbox/warm_start0")
    model_dir = args.model or (str(default) if (default / "config.json").is_file() else str(sandbox_model_dir(0)))
    model, tok = load_model(model_dir)
    model.eval()
    t0 = time.perf_counter()
    lines = [
        f"model `{model_dir}`; NoisyExpert(p={args.p}, alter), {args.num_tasks} tasks per subset x "
        f"{args.group_size} episodes, seed {args.seed}",
        "",
        "| variant | success | decisive steps | method | AUC \\|A\\| failed | AUC \\|A\\| successful | "
        "share lift (GRPO = 1) | lift over same-position neutral | placebo | signed lift failed / successful |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in args.variants:
        row = diagnose(model, tok, variant, args)
        for i, method in enumerate([*args.methods, "delta"]):
            r = row[method]
            key = "delta" if method == "delta" else "adv"
            name = "\\|Δ\\| (teacher gap)" if method == "delta" else method
            head = f"{variant} | {row['success']:.2f} | {row['decisive_steps']}" if i == 0 else " | | "
            lines.append(
                f"| {head} | {name.split(':')[-1]} | "
                f"{fmt(r[f'auc_{key}_failed'])} | {fmt(r[f'auc_{key}_successful'])} | "
                f"{fmt(r['share_lift'])} | {fmt(r['share_pos_excess'])} | {fmt(r['share_placebo_excess'])} | "
                f"{fmt(r['share_signed_failed'])} / {fmt(r['share_signed_successful'])} |"
            )
    lines.append("")
    lines.append(f"wall {time.perf_counter() - t0:.0f} s")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
