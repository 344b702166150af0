"""Credit sandbox learning comparison (issues 9, 17): does step-level credit learn faster than GRPO?

Usage:
    python benchmarks/credit_sandbox.py --jobs 2        # the full comparison (DEFAULT_ARMS x seeds x warm starts)
    python benchmarks/credit_sandbox.py --quick         # tiny end-to-end check (a few minutes)
    python benchmarks/credit_sandbox.py --arms grpo oracle stepopsd --seeds 0 1 --warm-starts 2
    python benchmarks/credit_sandbox.py --report-only   # tabulate the runs finished so far
    python benchmarks/credit_sandbox.py --hsft-only     # issue 17 2(c): the hindsight teachers and their diagnostic
    python benchmarks/credit_sandbox.py --arms grpo stepopsd_hsft stepopsd_hsft_default  # ... and their runs

1. Warm starts (cached in ``<out>/warm_start<w>``): a random-init ~0.85M-parameter Qwen3 (init seed
   ``w``) with the sandbox word-level tokenizer, trained by cross-entropy on NoisyExpert(p=2/3,
   alter) demonstrations (demo seeds depend on ``w``) of the ``One`` training worlds and of the
   held-out evaluation worlds (``--sft-eval-worlds``): the demos navigate perfectly and apply each of
   the three treatments a third of the time, so the warm start has no preference at the decisive
   step and the only remedy for its failures there is credit on that step. The object to fetch hides
   where the agent cannot see it, so navigation needs a seen world; RL never trains on the evaluation
   worlds and must carry the treatment choice over to them.
2. RL (``run_training``), every arm of :data:`ARMS` under the same budget, for every (seed, warm
   start) pair; each credit method is wrapped by ``credit_probe.probed`` so the decisive-credit
   share and AUC of its advantages are logged on every training batch. Every ``--eval-every`` RL
   steps the policy is evaluated **greedily on held-out tasks** (the env's ``test`` split).
3. Report: the **area under the learning curve** (AULC: mean held-out greedy success over the
   evaluation points) per arm, mean +- SD (ddof=1) over the runs, and the **paired** difference to
   GRPO with a **bootstrap CI** over (seed, warm start) pairs (95 %, and Bonferroni-corrected for
   the number of comparisons); the decisive-credit share (``share_pos_excess``: lift over neutral
   steps at the same position; the placebo must sit at 0) and the right-treatment rate.

Issue 17 item 2(c), an informative teacher (``ISSUE17C_ARMS``, only when ``--arms`` names them): a COPY of
warm start ``w`` SFT'd on hindsight-conditioned NoisyExpert demonstrations of the training worlds
(:func:`hindsight_teacher`, cached in ``<out>/hindsight_teacher<w>``: every row is the teacher context the
runs' rescoring builds, hindsight ``outcome + peer`` at ``--teacher-placement``, then a successful trajectory's
tokens; ``trainers.sft.hindsight_sft_rows``), checked on held-out worlds (:func:`teacher_diagnostic`, the
log-prob gap on the decisive vs the neutral action tokens, ``diagnostic.json`` in that folder) and used as
StepOPSD's frozen ``teacher.model``. The student warm start is unchanged.

The loss aggregation is fixed before any run (:data:`AGGREGATION`) and printed; ``<out>/meta.json``
records every setting, and a resumed run with different settings stops (finished runs are reused
from their ``history.json``). To add an arm, add one line to :data:`ARMS`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

VARIANT_ENV = {v: f"stepgym/Sandbox-{v}-v0" for v in ("One", "Two", "Delayed", "Null")}

AGGREGATION = "seq-mean-token-mean"
"""Fixed before the runs (issue 17): every trajectory weighs the same in the policy loss. (Issue 9 chose it
after GRPO failed to learn with token-mean, where long failed episodes outweigh the successful ones.)"""

CONTROLS = "stepgym.trainers.credit_controls"
STRONG = {"budget": False, "lam0": 1.0, "alpha_clip": 0.8}
"""StepOPSD at its most step-sensitive setting of the grid; the negative controls use it too."""


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison: a credit method (a registry name) and its options."""

    credit: str
    kwargs: dict = field(default_factory=dict)
    note: str = ""
    hsft_teacher: bool = False
    """The teacher is warm start ``w``'s hindsight-SFT'd copy (:func:`hindsight_teacher`), not the policy's snapshot."""


ARMS: dict[str, Arm] = {
    "grpo": Arm("grpo", note="baseline: trajectory-constant advantage"),
    "oracle": Arm(f"{CONTROLS}:oracle", note="positive control: the advantage on the decisive action only"),
    "placebo_step": Arm(f"{CONTROLS}:placebo_step", note="update-size control: the oracle's update on a neutral step"),
    "no_update": Arm(f"{CONTROLS}:no_update", note="update-size control: advantage 0, no policy gradient"),
    "gigpo": Arm("gigpo"),
    "rlsd": Arm("rlsd"),
    "stepopsd": Arm("stepopsd", note="default: budget on, lam0 0.2, alpha_clip 0.2"),
    "stepopsd_nobudget": Arm("stepopsd", {"budget": False}),
    "stepopsd_lam1": Arm("stepopsd", {"budget": False, "lam0": 1.0}),
    "stepopsd_clip08": Arm("stepopsd", {"budget": False, "alpha_clip": 0.8}),
    "stepopsd_lam1_clip08": Arm("stepopsd", dict(STRONG)),
    "stepopsd_nohindsight": Arm(f"{CONTROLS}:stepopsd_nohindsight", dict(STRONG), "negative control: staleness only"),
    "stepopsd_shuffled_peer": Arm(f"{CONTROLS}:stepopsd_shuffled_peer", dict(STRONG), "negative control"),
    # issue 9's sdar and the related 2026 methods of ALGORITHMS.md §10 (issue 22; [recon], default options;
    # ``triage`` with the oracle judge of the sandbox's commitments, ``atod``/``ucob`` with the hindsight teacher)
    **{m: Arm(m) for m in ("sdar", "craft", "sgcd", "paw", "atod", "triage", "ucob")},
    # issue 17 item 2(c): StepOPSD taught by the hindsight-SFT'd copy of the warm start (frozen, never refreshed)
    "stepopsd_hsft": Arm("stepopsd", dict(STRONG), "teacher: hindsight-SFT'd warm start", hsft_teacher=True),
    "stepopsd_hsft_default": Arm(
        "stepopsd", note="default options; teacher: hindsight-SFT'd warm start", hsft_teacher=True
    ),
}
"""The arms (name -> method and options): issue 17's list, then issue 22's methods. GRPO is the reference of every
paired difference; ``--arms`` picks a subset."""

ISSUE17_ARMS = tuple(ARMS)[: list(ARMS).index("stepopsd_shuffled_peer") + 1]
"""Issue 17's thirteen arms (nine methods and settings, two update-size and two negative controls): the first tier."""
ISSUE17C_ARMS = ("stepopsd_hsft", "stepopsd_hsft_default")
"""Issue 17 item 2(c): StepOPSD with the hindsight-SFT teacher (strong and default options): the second tier."""
ISSUE22_ARMS = ("craft", "sgcd", "paw", "atod", "triage", "ucob")
"""Issue 22's six methods: the third tier (``sdar``, issue 9's, runs only when ``--arms`` names it)."""
DEFAULT_ARMS = list(ISSUE17_ARMS)
"""The comparison of issue 17 (its ``Done when``); issue 22's methods join with ``--arms ... craft sgcd paw atod triage
ucob`` (their tier runs after issue 17's)."""

QUICK = {
    "steps": 2,
    "eval_every": 1,
    "eval_tasks": 2,
    "seeds": [0, 1],
    "warm_starts": 1,
    "arms": ["grpo", "oracle", "stepopsd"],
    "variants": ["One"],
    "group_size": 4,
    "tasks_per_step": 2,
    "num_tasks": 2,
    "max_turns": 8,
    "sft_epochs": 3,
    "hsft_epochs": 2,
}
"""``--quick``: every stage once with tiny settings (a smoke of the machinery, not a result)."""


def warm_start(out: Path, args: argparse.Namespace, w: int = 0) -> Path:
    """Build + SFT warm start ``w`` once (init seed ``w``, demo seeds ``10000 w + 1000 i + k``); returns its folder."""
    from stepgym.agents.models import load_model
    from stepgym.agents.sandbox_agents import NoisyExpert
    from stepgym.agents.sandbox_model import build_sandbox_model
    from stepgym.envs.sandbox import SUBSETS
    from stepgym.trainers.sft import collect_demonstrations, sft_train

    folder = out / f"warm_start{w}"
    if (folder / "config.json").is_file():
        return folder
    init = build_sandbox_model(out / f"init{w}", seed=w)
    model, tok = load_model(str(init))
    # the RL training worlds, and (``--sft-eval-worlds``) the held-out evaluation worlds: see ``parse_args``
    # (the evaluation draws its tasks from the first ``max(eval_tasks, num_tasks)`` test worlds: ``train_config``)
    n_eval = max(args.eval_tasks, args.num_tasks)
    splits = [("train", args.num_tasks)] + ([("test", n_eval)] if args.sft_eval_worlds else [])
    demos = []
    for i, (split, n) in enumerate(splits):
        demos += collect_demonstrations(
            "stepgym/Sandbox-One-v0",
            lambda k, i=i: NoisyExpert(args.demo_p, "alter", seed=10000 * w + 1000 * i + k),
            tok,
            [f"{s}-{split}-{k}" for s in SUBSETS for k in range(n)],
            env_kwargs={"num_tasks": n, "max_steps": args.max_turns, "split": split},
            group_size=8,
            layout="concat",
            max_turns=args.max_turns,
            seed=10000 * w + 1000 * i,
        )
    t0 = time.perf_counter()
    torch.manual_seed(w)
    losses = sft_train(
        model,
        demos,
        epochs=args.sft_epochs,
        lr=3e-3,
        batch_size=8,
        seed=w,
        pad_token_id=tok.pad_token_id,
        schedule="cosine",
    )
    print(
        f"warm start {w}: {len(demos)} demos (success {np.mean([d.success for d in demos]):.2f}), "
        f"{len(losses)} SFT steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, {time.perf_counter() - t0:.0f} s"
    )
    tmp = out / f"warm_start{w}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    shutil.rmtree(init, ignore_errors=True)
    return folder


def runs_hindsight() -> tuple[str, ...]:
    """The hindsight parts the runs' teacher reads (``TeacherConfig.hindsight``'s default: outcome + peer)."""
    from stepgym.trainers.config import TeacherConfig

    return tuple(TeacherConfig().hindsight)


HSFT_SETTINGS = ("hsft_epochs", "hsft_lr", "hsft_groups", "teacher_placement", "demo_p", "num_tasks", "max_turns")
"""Settings a cached hindsight teacher was built with (``hsft.json``; a reuse with others stops)."""


def teacher_dir_of(model_dir: Path) -> Path:
    """``<out>/hindsight_teacher<w>`` for the warm start ``<out>/warm_start<w>``."""
    name = Path(model_dir).name
    if not name.startswith("warm_start"):
        raise ValueError(f"{model_dir} is not a credit-sandbox warm start folder (warm_start<w>): no teacher folder")
    return Path(model_dir).with_name(name.replace("warm_start", "hindsight_teacher", 1))


def hindsight_teacher(out: Path, args: argparse.Namespace, w: int = 0) -> Path:
    """SFT a copy of warm start ``w`` on hindsight-conditioned demos of the TRAIN worlds once; returns its folder.

    ``NoisyExpert(demo_p, "alter")`` plays ``--hsft-groups`` rounds of 8 episodes per training task (agent seeds
    ``10000 w + 5000 + 100 r + k``: not the warm start's); each row is the teacher context the runs' rescoring
    builds (:func:`runs_hindsight` at ``--teacher-placement``) and a successful trajectory's tokens, the loss on
    those agent tokens only (``trainers.sft.hindsight_sft_rows``). Cosine AdamW, ``--hsft-epochs`` at
    ``--hsft-lr``. Written atomically, with its settings and losses in ``hsft.json``.
    """
    from stepgym.agents.models import load_model
    from stepgym.agents.sandbox_agents import NoisyExpert
    from stepgym.envs.sandbox import SUBSETS
    from stepgym.trainers.sft import collect_demonstrations, hindsight_sft_rows, sft_train

    folder = out / f"hindsight_teacher{w}"
    settings = {k: getattr(args, k) for k in HSFT_SETTINGS}
    if (folder / "config.json").is_file():
        old = json.loads((folder / "hsft.json").read_text())["settings"]
        if old != settings:
            raise SystemExit(f"{folder} was built with {old}, not {settings}; delete it or use the same settings")
        return folder
    student = out / f"warm_start{w}"
    if not (student / "config.json").is_file():
        raise FileNotFoundError(f"{student} is missing: the hindsight teacher copies warm start {w}; build it first")
    model, tok = load_model(str(student))
    tasks = [f"{s}-train-{k}" for s in SUBSETS for k in range(args.num_tasks)]
    demos = []
    for r in range(args.hsft_groups):
        demos += collect_demonstrations(
            "stepgym/Sandbox-One-v0",
            lambda k, r=r: NoisyExpert(args.demo_p, "alter", seed=10000 * w + 5000 + 100 * r + k),
            tok,
            tasks,
            env_kwargs={"num_tasks": args.num_tasks, "max_steps": args.max_turns, "split": "train"},
            group_size=8,
            layout="concat",
            max_turns=args.max_turns,
            seed=10000 * w + 5000 + 100 * r,
        )
    rows = hindsight_sft_rows(demos, tok, parts=runs_hindsight(), placement=args.teacher_placement)
    t0 = time.perf_counter()
    torch.manual_seed(w)
    losses = sft_train(model, rows, epochs=args.hsft_epochs, lr=args.hsft_lr, batch_size=8, seed=w, schedule="cosine")
    wall = time.perf_counter() - t0
    print(
        f"hindsight teacher {w}: {len(demos)} demos (success {np.mean([d.success for d in demos]):.2f}), "
        f"{rows.num_rows} rows, {len(losses)} SFT steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, {wall:.0f} s"
    )
    tmp = out / f"hindsight_teacher{w}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    info = {
        "settings": settings,
        "demos": len(demos),
        "success": float(np.mean([d.success for d in demos])),
        "rows": rows.num_rows,
        "losses": losses,
        "seconds": wall,
    }
    (tmp / "hsft.json").write_text(json.dumps(info))
    tmp.rename(folder)
    return folder


HSFT_CONDITIONS = {
    "hindsight-SFT teacher, outcome + peer": ("hsft", True),
    "hindsight-SFT teacher, no hindsight (control)": ("hsft", False),
    "self (warm start), outcome + peer (the runs' old teacher)": ("self", True),
}
"""Diagnostic conditions: teacher model, and whether it reads the runs' hindsight (:func:`runs_hindsight`). The
controls separate reading the hindsight from the SFT's drift (no hindsight) and show issue 17's self-teacher."""


def teacher_diagnostic(out: Path, args: argparse.Namespace, w: int = 0) -> dict:
    """Is the hindsight teacher informative? Its log-prob gap on decisive vs neutral action tokens, held out.

    NoisyExpert(``demo_p``) episodes of the held-out evaluation worlds (test split, agent seeds
    ``10000 w + 9000 + k``: in neither SFT), scored by the student warm start without hindsight and by each
    :data:`HSFT_CONDITIONS` teacher (``runner.make_teacher``, the runs' placement). Per trajectory (hindsight_probe's
    ``step_gaps``/``contrasts``): ``Δ`` = teacher minus student log-prob, mean over the decisive step's action
    tokens and over the neutral steps', and the contrast ``Δ_dec - Δ_neu``, for failed trajectories with a
    successful peer and for successful ones, mean with a 95 % percentile bootstrap CI over trajectories.
    Informative: the failed contrast's CI below 0 and the successful one's above. Cached as
    ``<out>/hindsight_teacher<w>/diagnostic.json``.
    """
    from credit_diagnostic import scored_demos
    from hindsight_probe import contrasts, step_gaps
    from stepgym.agents.models import load_model
    from stepgym.envs.sandbox import SUBSETS
    from stepgym.trainers.config import TrainConfig
    from stepgym.trainers.runner import make_teacher

    folder = out / f"hindsight_teacher{w}"
    cached = folder / "diagnostic.json"
    if cached.is_file():
        res = json.loads(cached.read_text())
    else:
        student, tok = load_model(str(out / f"warm_start{w}"))
        teacher, _ = load_model(str(folder))
        student.eval()
        teacher.eval()
        n = max(args.eval_tasks, args.num_tasks)
        env_id = VARIANT_ENV["One"]
        trajs, flags, batch, credit = scored_demos(
            student,
            tok,
            env_id,
            [f"{s}-test-{k}" for s in SUBSETS for k in range(n)],
            {"num_tasks": n, "max_steps": args.max_turns, "split": "test"},
            p=args.demo_p,
            group_size=8,
            max_turns=args.max_turns,
            seed=10000 * w + 9000,
            micro_batch_size=16,
            agent_seed=10000 * w + 9000,
        )
        groups: dict[str, list[bool]] = {}
        for t in trajs:
            groups.setdefault(t.group_id, []).append(t.success)
        failed_peer = [not t.success and any(groups[t.group_id]) for t in trajs]
        succeeded = [bool(t.success) for t in trajs]
        res = {"episodes": len(trajs), "success": float(np.mean(succeeded)), "conditions": {}}
        for name, (which, reads) in HSFT_CONDITIONS.items():
            config = TrainConfig(
                model="unused",
                env_id=env_id,
                pad_token_id=tok.pad_token_id,
                micro_batch_size=16,
                teacher={"placement": args.teacher_placement, "hindsight": runs_hindsight() if reads else ()},
            )
            with torch.no_grad():
                logp_t, target = make_teacher(tok, config)(teacher if which == "hsft" else student, batch, trajs)
            gaps = step_gaps(credit, logp_t, target, len(trajs))
            row = {}
            for part, select in (("failed", failed_peer), ("successful", succeeded)):
                c = contrasts(gaps, flags, select)
                row[part] = {"n": int(c["dec"].size)}
                for k in ("dec", "neu", "contrast"):
                    lo, hi = paired_bootstrap(c[k])
                    row[part][k] = [float(c[k].mean()) if c[k].size else math.nan, lo, hi]
            f, s = row["failed"]["contrast"], row["successful"]["contrast"]
            row["informative"] = bool(f[2] < 0 and s[1] > 0)  # NaN compares False: not shown informative
            res["conditions"][name] = row
        cached.write_text(json.dumps(res, indent=1))
    lines = [
        f"hindsight teacher {w}, held-out worlds: {res['episodes']} NoisyExpert episodes (success "
        f"{res['success']:.2f}); Δ = teacher - student log-prob on action tokens, mean [95 % CI] over trajectories",
        "| condition | n failed / successful | Δ decisive (failed) | Δ neutral (failed) | contrast (failed) | "
        "contrast (successful) | informative |",
        "|---|---|---|---|---|---|---|",
    ]

    def ci(v: list) -> str:
        return "n/a" if math.isnan(v[0]) else f"{v[0]:+.3f} [{fmt(v[1])}, {fmt(v[2])}]"

    for name, row in res["conditions"].items():
        fl, sc = row["failed"], row["successful"]
        lines.append(
            f"| {name} | {fl['n']} / {sc['n']} | {ci(fl['dec'])} | {ci(fl['neu'])} | {ci(fl['contrast'])} | "
            f"{ci(sc['contrast'])} | {'yes' if row['informative'] else 'no'} |"
        )
    print("\n".join(lines), flush=True)
    return res


def run_dir_of(out: Path, variant: str, arm: str, seed: int, w: int) -> Path:
    return out / variant / f"w{w}" / arm / f"seed{seed}"


def train_config(model_dir: Path, variant: str, arm: str, seed: int, args: argparse.Namespace, run_dir: Path):
    """The ``TrainConfig`` of one RL run (every arm shares everything but ``credit``/``credit_kwargs``)."""
    from stepgym.trainers.config import TrainConfig
    from stepgym.trainers.credit_probe import probed

    spec = ARMS[arm]
    # hindsight once before the row's first generated token: the inline placement (before every
    # step) cost 40-45 s per RL step here against ~9 s for GRPO (measured in issue 9)
    teacher: dict = {"snapshot_interval": 5, "placement": args.teacher_placement}
    if spec.hsft_teacher:  # a frozen, separate teacher with the same tokenizer (never refreshed)
        teacher["model"] = str(teacher_dir_of(model_dir))
    return TrainConfig(
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
        credit=probed(spec.credit),
        credit_kwargs=dict(spec.kwargs),
        optim={"lr": args.lr},
        mini_batches=args.mini_batches,
        loss={"aggregation": AGGREGATION},
        # generation log-probs are the trained model's own (fp32, same forward): no second pass needed
        recompute_old_logprobs=False,
        micro_batch_size=16,
        total_steps=args.steps,
        checkpoint_every=0,
        seed=seed,
        output_dir=str(run_dir),
        pad_token_id=0,
        # greedy, on held-out worlds (the test split draws its worlds from disjoint seeds)
        eval={
            "every": args.eval_every,
            "tasks_per_subset": args.eval_tasks,
            "temperature": 0.0,
            "env_kwargs": {"split": "test", "num_tasks": max(args.eval_tasks, args.num_tasks)},
        },
        teacher=teacher,
    )


def run_one(model_dir: Path, variant: str, arm: str, seed: int, w: int, args: argparse.Namespace, out: Path):
    """One RL run through ``run_training``; returns its per-step metrics (cached in history.json)."""
    from stepgym.trainers.credit_probe import probe_rollout
    from stepgym.trainers.runner import run_training

    run_dir = run_dir_of(out, variant, arm, seed, w)
    cached = run_dir / "history.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    if run_dir.exists():
        shutil.rmtree(run_dir)
    config = train_config(model_dir, variant, arm, seed, args, run_dir)
    hist = run_training(config, wrap_rollout=probe_rollout).history
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    cached.write_text(json.dumps(hist))
    return hist


def warm_eval(model_dir: Path, variant: str, w: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Step 0: the warm start's greedy held-out success on the RL runs' evaluation tasks (cached; same for every arm).

    The comparison says nothing unless this is strictly between 0 and 1 (the policy sometimes succeeds).
    """
    from stepgym.agents.models import load_model
    from stepgym.trainers.runner import eval_task_ids, evaluate_model

    cached = out / variant / f"w{w}" / "warm_eval.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    config = train_config(model_dir, variant, "grpo", 0, args, cached.parent)
    model, tok = load_model(str(model_dir))
    model.eval()
    results, trajs = evaluate_model(config, model, tok, eval_task_ids(config), temperature=0.0, seed=0)
    res = {f"{k}/success": float(r.success) for k, r in results.items()}
    res["episodes"] = float(len(trajs))
    res["avg/success"] = float(np.mean([t.success for t in trajs]))
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps(res))
    return res


def run_order(variants: list[str], arms: list[str], warm: list[int], seeds: list[int]) -> list[tuple]:
    """``(variant, arm, seed, warm start)`` runs: issue 17's arms, then 17(c)'s, then the rest; pair by pair in a tier.

    Pair-major order means a run cut off by the clock leaves complete (warm start, seed) pairs across the arms
    of a tier (so the paired differences use every finished pair), and every arm sees the same drift in load.
    """
    first = ISSUE17_ARMS + ISSUE17C_ARMS
    tiers = [
        [a for a in arms if a in ISSUE17_ARMS],
        [a for a in arms if a in ISSUE17C_ARMS],
        [a for a in arms if a not in first],
    ]
    return [(v, a, s, w) for v in variants for tier in tiers for s in seeds for w in warm for a in tier]


def _teacher_timed(out: Path, args: argparse.Namespace, w: int) -> dict:
    torch.set_num_threads(1)
    hindsight_teacher(out, args, w)
    return teacher_diagnostic(out, args, w)


def _run_timed(model_dir: Path, variant: str, arm: str, seed: int, w: int, args: argparse.Namespace, out: Path):
    torch.set_num_threads(1)
    t = time.perf_counter()
    return run_one(model_dir, variant, arm, seed, w, args, out), time.perf_counter() - t


# ---------------------------------------------------------------------------------------------- statistics
def curve(hist: list[dict], key: str = "eval/avg/success") -> np.ndarray:
    """The values of ``key`` at the steps that logged it (the evaluation points)."""
    return np.array([float(h[key]) for h in hist if key in h], dtype=float)


def aulc(hist: list[dict]) -> float:
    """Area under the held-out learning curve, normalised: the mean success over the equally spaced eval points."""
    c = curve(hist)
    return float(c.mean()) if c.size else math.nan


def mean_sd(x: np.ndarray) -> tuple[float, float]:
    """Mean and SD with ddof=1 over the finite values (SD NaN below two values)."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    if not x.size:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan


def paired_bootstrap(
    diff: np.ndarray, *, level: float = 0.95, n_boot: int = 10000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences (resampling the pairs; Efron & Tibshirani 1993).

    NaN below two pairs (one pair has no spread to resample).
    """
    d = np.asarray(diff, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_boot, d.size))].mean(1)  # [n_boot]
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def run_mean(hist: list[dict], key: str) -> float:
    """Mean of a training metric over the steps that have a finite value (NaN if none)."""
    x = np.array([float(h.get(key, math.nan)) for h in hist], dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def fmt(m: float, s: float = math.nan, digits: int = 3) -> str:
    if math.isnan(m):
        return "n/a"
    return f"{m:.{digits}f}" if math.isnan(s) else f"{m:.{digits}f} ± {s:.{digits}f}"


def report(results: dict, args: argparse.Namespace) -> str:
    """Markdown tables: AULC with paired bootstrap CIs against GRPO, the decisive-credit share, rates."""
    lines = []
    for variant, by_arm in results.items():
        pairs = sorted({p for runs in by_arm.values() for p in runs})  # (w, seed)
        m = max(1, len(by_arm) - 1)  # comparisons against GRPO
        level_b = 1 - 0.05 / m
        lines += [
            f"### {variant}",
            "",
            f"n = {len(pairs)} (warm start, seed) pairs; AULC = mean greedy held-out success over the eval points; "
            f"SD with ddof=1; Δ = paired difference to GRPO, percentile bootstrap over pairs (95 % and "
            f"Bonferroni {100 * level_b:.1f} % for {m} comparisons).",
            "",
            "| arm | AULC | final eval success | Δ AULC vs GRPO | 95 % CI | Bonferroni CI | "
            "decisive share (lift over same-position neutral) | placebo | share lift (GRPO = 1) | "
            "right treatment (train) | any treatment (train) | s / step |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        ref = {p: aulc(h) for p, h in by_arm.get("grpo", {}).items()}
        for arm, runs in by_arm.items():
            a = np.array([aulc(runs[p]) for p in pairs if p in runs])
            final = np.array([curve(runs[p])[-1] if curve(runs[p]).size else math.nan for p in pairs if p in runs])
            if arm != "grpo" and ref:
                d = np.array([aulc(runs[p]) - ref[p] for p in pairs if p in runs and p in ref])
                dm = mean_sd(d)[0]
                ci = paired_bootstrap(d)
                cib = paired_bootstrap(d, level=level_b)
                dtxt, citxt, cibtxt = fmt(dm), f"[{fmt(ci[0])}, {fmt(ci[1])}]", f"[{fmt(cib[0])}, {fmt(cib[1])}]"
            else:
                dtxt = citxt = cibtxt = "-"
            per_run = {
                k: np.array([run_mean(runs[p], f"credit/{k}") for p in pairs if p in runs])
                for k in ("share_pos_excess", "share_placebo_excess", "share_lift", "right_commitment", "commitment")
            }
            tstep = np.array([run_mean(runs[p], "time/step") for p in pairs if p in runs])
            lines.append(
                f"| {arm} | {fmt(*mean_sd(a))} | {fmt(*mean_sd(final))} | {dtxt} | {citxt} | {cibtxt} | "
                f"{fmt(*mean_sd(per_run['share_pos_excess']))} | {fmt(*mean_sd(per_run['share_placebo_excess']))} | "
                f"{fmt(*mean_sd(per_run['share_lift']))} | {fmt(*mean_sd(per_run['right_commitment']))} | "
                f"{fmt(*mean_sd(per_run['commitment']))} | "
                f"{fmt(mean_sd(tstep)[0], digits=1)} |"
            )
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
SETTINGS = (
    "steps",
    "eval_every",
    "eval_tasks",
    "group_size",
    "tasks_per_step",
    "num_tasks",
    "max_turns",
    "lr",
    "mini_batches",
    "invalid_penalty",
    "sft_epochs",
    "teacher_placement",
    "demo_p",
    "sft_eval_worlds",
)
"""Settings every run of one ``--out`` folder must share (checked against ``meta.json`` on resume)."""


def check_meta(out: Path, args: argparse.Namespace) -> None:
    """Write ``meta.json`` on the first call; stop when a resume would mix settings."""
    meta = {"aggregation": AGGREGATION, **{k: getattr(args, k) for k in SETTINGS}}
    path = out / "meta.json"
    if path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in meta.items() if old.get(k) != v}
        if diff:
            raise SystemExit(
                f"{out} holds runs with other settings {diff} (old, new); use another --out or the same settings"
            )
    else:
        path.write_text(json.dumps(meta, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny end-to-end run of every stage (overrides the sizes)")
    # the defaults (session 5, fixed before the run): a 60-epoch warm start and lr 5e-4, after the 20-epoch /
    # lr 1e-3 run collapsed (every arm ended below its step-0 success, benchmarks/README.md); 6 RL steps
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--eval-every", type=int, default=2, help="RL steps between greedy held-out evaluations")
    ap.add_argument("--eval-tasks", type=int, default=4, help="held-out tasks per subset (3 subsets), greedy")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    ap.add_argument("--warm-starts", type=int, default=2, help="independent warm starts (init + demo seeds)")
    ap.add_argument("--variants", nargs="+", default=["One"], choices=list(VARIANT_ENV))
    ap.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--tasks-per-step", type=int, default=2)
    ap.add_argument("--num-tasks", type=int, default=4, help="training tasks per subset (3 subsets)")
    ap.add_argument("--max-turns", type=int, default=12)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--mini-batches", type=int, default=2, help="optimizer steps per RL step")
    ap.add_argument("--invalid-penalty", type=float, default=0.1, help="the env's penalty per invalid step")
    ap.add_argument("--sft-epochs", type=int, default=60)
    ap.add_argument("--teacher-placement", default="prefix", choices=["prefix", "inline"])
    # issue 17 2(c)'s hindsight teacher (only for ISSUE17C_ARMS; recorded in its own hsft.json, not meta.json)
    ap.add_argument("--hsft-epochs", type=int, default=12, help="hindsight teacher: SFT epochs (cosine)")
    ap.add_argument("--hsft-lr", type=float, default=1e-3, help="hindsight teacher: SFT learning rate")
    ap.add_argument(
        "--hsft-only",
        action="store_true",
        help="only build the warm starts' hindsight teachers and print their diagnostic (look before the runs)",
    )
    ap.add_argument(
        "--hsft-groups", type=int, default=2, help="hindsight teacher: rounds of 8 NoisyExpert episodes per train task"
    )
    ap.add_argument(
        "--demo-p",
        type=float,
        default=2 / 3,
        help="NoisyExpert's chance of a wrong treatment in the demos; 2/3 = right and each wrong one 1/3, so the "
        "warm start has no greedy preference among the treatments (with 0.5 greedy picks the right one: ceiling)",
    )
    ap.add_argument(
        "--sft-eval-worlds",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the warm start's demos also cover the held-out evaluation worlds (RL never trains on them): the "
        "object to fetch hides in a receptacle the agent cannot see, so a policy can only navigate a world it has "
        "seen; what RL must carry over to the evaluation worlds is the decisive choice of treatment",
    )
    ap.add_argument("--jobs", type=int, default=2, help="RL runs at once (one torch thread each)")
    ap.add_argument("--out", default="runs/credit_sandbox")
    ap.add_argument(
        "--report-only", action="store_true", help="only tabulate the runs already finished in --out (no training)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if k == "arms" and args.arms != DEFAULT_ARMS:  # ``--quick --arms ...``: the named arms, tiny sizes
                continue
            setattr(args, k, v)
        if args.out == ap.get_default("out"):  # never mix the smoke's runs into the comparison's folder
            args.out = "runs/credit_sandbox_quick"
    if args.hsft_only and args.report_only:
        ap.error("--hsft-only builds the hindsight teachers and --report-only builds nothing: choose one")
    if "grpo" not in args.arms:
        ap.error("--arms must include grpo (the reference of every paired difference)")
    if args.steps % args.eval_every:
        ap.error(
            f"--steps {args.steps} must be a multiple of --eval-every {args.eval_every} (so the last step is evaluated)"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check_meta(out, args)
    print(f"loss aggregation (fixed before the runs): {AGGREGATION}")
    t0, load0 = time.perf_counter(), os.getloadavg()
    if args.report_only:  # the finished runs only: never builds, trains or evaluates anything
        model_dirs = {w: out / f"warm_start{w}" for w in range(args.warm_starts)}
    else:
        model_dirs = {w: warm_start(out, args, w) for w in range(args.warm_starts)}
    if args.hsft_only or (not args.report_only and any(ARMS[a].hsft_teacher for a in args.arms)):  # only if needed
        # one warm start's teacher per process (``--jobs`` at once, one torch thread each), spawned as the runs are
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(model_dirs))), mp_context=ctx) as ex:
            for fut in [ex.submit(_teacher_timed, out, args, w) for w in model_dirs]:
                fut.result()
        if args.hsft_only:
            return
    runs = run_order(args.variants, args.arms, list(model_dirs), args.seeds)
    warm = {}
    for v in args.variants:
        for w in model_dirs:
            cached = out / v / f"w{w}" / "warm_eval.json"
            warm[v, w] = json.loads(cached.read_text()) if args.report_only and cached.is_file() else None
            if not args.report_only:
                warm[v, w] = warm_eval(model_dirs[w], v, w, args, out)
                print(f"{v} warm start {w}: greedy held-out success at step 0 {warm[v, w]['avg/success']:.3f}")
    if not args.report_only:
        # independent runs, ``--jobs`` at a time (one torch thread each): spawned so no torch state is forked
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as ex:
            futs = {ex.submit(_run_timed, model_dirs[w], v, a, s, w, args, out): (v, a, s, w) for v, a, s, w in runs}
            for i, fut in enumerate(as_completed(futs), 1):
                v, a, s, w = futs[fut]
                hist, wall = fut.result()
                held_out = curve(hist).round(2).tolist()
                print(
                    f"[{i}/{len(runs)}] {v} {a} warm start {w} seed {s}: {wall:.0f} s, held-out success {held_out}",
                    flush=True,
                )
    results: dict = {v: {a: {} for a in args.arms} for v in args.variants}
    for v, a, s, w in runs:  # from the cached histories (--report-only: those that exist)
        cached = run_dir_of(out, v, a, s, w) / "history.json"
        if cached.is_file():
            results[v][a][(w, s)] = json.loads(cached.read_text())
    done = sum(len(r) for by_arm in results.values() for r in by_arm.values())
    load1 = os.getloadavg()
    warm_txt = "; ".join(f"{v} w{w} {fmt(r['avg/success']) if r else 'not evaluated'}" for (v, w), r in warm.items())
    first = [h[0] for by_arm in results.values() for r in by_arm.values() for h in r.values() if h]
    warm_txt += (
        "; training rollouts of the warm start (step 1, temperature 1, every run): success "
        f"{fmt(*mean_sd([h.get('rollout/success', math.nan) for h in first]))}, any treatment "
        f"{fmt(*mean_sd([h.get('credit/commitment', math.nan) for h in first]))}, right treatment "
        f"{fmt(*mean_sd([h.get('credit/right_commitment', math.nan) for h in first]))}"
    )
    header = (
        f"aggregation={AGGREGATION} (fixed up front), steps={args.steps}, eval every {args.eval_every} "
        f"(greedy, {args.eval_tasks} held-out tasks per subset), seeds={args.seeds}, warm starts={args.warm_starts}, "
        f"sft_epochs={args.sft_epochs}, group_size={args.group_size}, tasks_per_step={args.tasks_per_step}, "
        f"num_tasks={args.num_tasks}x3, max_turns={args.max_turns}, lr={args.lr}, mini_batches={args.mini_batches}, "
        f"invalid_penalty={args.invalid_penalty}, teacher placement {args.teacher_placement}. "
        f"{done} of {len(runs)} runs finished."
        f"{' (QUICK: a smoke of the machinery, not a result)' if args.quick else ''}\n\n"
        f"Warm starts, greedy held-out success at step 0: {warm_txt}.\n\n"
        + (
            ""
            if args.report_only
            else f"Wall {time.perf_counter() - t0:.0f} s; load average (1, 5, 15 min) {load0[0]:.1f}/{load0[1]:.1f}/"
            f"{load0[2]:.1f} at the start, {load1[0]:.1f}/{load1[1]:.1f}/{load1[2]:.1f} at the end.\n\n"
        )
    )
    text = header + report(results, args)
    (out / f"table_{'_'.join(args.variants)}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
