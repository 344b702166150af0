"""The GRPO training loop, top to bottom.

"Our GRPO", exactly (the defaults of ``TrainConfig``; every knob named is a config field):

1. **Rollout.** Each training step ``s`` draws ``tasks_per_step`` tasks from ``train_subsets``
   (with NumPy seeded by ``step_seed(seed, s)``; with replacement only when there are fewer tasks)
   and the current policy plays ``group_size`` episodes of each, sampling at
   ``sampling.temperature``/``top_p`` with the same per-step seed. An episode ends at termination,
   at ``max_turns`` or at a token cap (truncation). Episodes that end on an env fault (the env
   raised, or returned a NaN/inf reward) are counted (``rollout/env_errors``,
   ``rollout/nonfinite_rewards``), left out of everything below with a warning, and stop the run
   when more than ``max_env_error_share`` of the step's episodes are faulty (``trainers/faults.py``).
2. **Rows.** Every ``TokenSequence`` is a row: one per agent step (``layout="per-step"``, the
   prompt holds the history) or one per trajectory (``"concat"``, observations in between). Only
   generated tokens are trainable (``mask``); observation, prompt and padding tokens never enter any
   loss term. A trajectory's score is its outcome plus the env's reward of each invalid step (its
   invalid-action penalty, applied once: ``trainers/batch.py``).
3. **Old log-probs.** ``logp_old`` is recomputed with the trainer's forward at the rollout
   temperature (``recompute_old_logprobs``; off = the engine's sampled log-probs).
4. **Credit.** The configured method (registry, ``trainers/credit.py``) turns scores into
   per-token advantages. Default ``grpo``: per group, ``A = (R - mean_g) / (std_g + 1e-6)``
   (unbiased std; all-equal groups give exactly 0), the trajectory's ``A`` broadcast to every
   trainable token of all its rows (DeepSeekMath, arXiv 2402.03300, outcome supervision).
   A method declares what it reads (``needs``) and :func:`~stepgym.trainers.credit_inputs.fill_credit_inputs`
   fills exactly that, so nothing here depends on the method: ``teacher`` -- teacher log-probs of the
   same tokens (the snapshot, the live policy or a separate ``teacher.model``, under hindsight context,
   ``teacher.*``); ``values`` (StepPO) -- the critic's values, a zero-initialised linear
   :class:`~stepgym.trainers.value.ValueHead` on the policy's last hidden state (shared backbone),
   attached after LoRA, read at the token before each step; ``entropy``, ``observations``, ``judge``
   (the related 2026 methods). NaN/inf advantages or returns on trainable tokens stop the run here.
5. **Update** (``ppo_update``). ``ppo_epochs`` passes; each shuffles the rows (seeded) and takes
   ``mini_batches`` AdamW steps, each accumulating gradients over micro-batches of
   ``micro_batch_size`` rows. Per token: the clipped surrogate ``-min(r A, clip(r, 1-eps_low,
   1+eps_high) A)`` with ``r`` per token (default) or GSPO's per sequence, optional dual clip;
   plus ``kl_coef`` x k3 KL to the reference (off by default), minus ``entropy_coef`` x entropy
   (off), plus the method's auxiliary loss (SDAR/OPSD) and, for StepPO, ``value_coef`` x the
   clipped MSE of ``V_k`` to the step return ``G_k`` at each step's value position only
   (ALGORITHMS.md §8). Aggregation default ``token-mean`` (sum over trainable tokens / their
   count, DAPO-style; ``seq-mean-token-mean`` is the GRPO paper's), with every normaliser computed
   over the whole mini-batch and all processes, so micro-batching and sharding do not change the
   update. Gradient norm clipped to ``optim.max_grad_norm`` (1.0); lr ``optim.lr`` (1e-6) with the
   configured warm-up/schedule, stepped per optimizer step. With the defaults (1 epoch, 1
   mini-batch, recomputed ``logp_old``) the update is on-policy: ``r = 1`` and clipping is inactive.
   A NaN/inf loss or gradient norm raises before ``optimizer.step()``.
6. **Sync, teacher, evaluation, checkpoint.** The rollout engine gets the new weights (in-process
   the policy shares the module); the teacher snapshot (:class:`~stepgym.distill.rescore.TeacherSnapshot`)
   is refreshed every ``teacher.snapshot_interval`` steps; every ``eval.every`` steps each eval subset
   is played once per task at ``eval.temperature``; every ``checkpoint_every`` steps, whenever
   ``checkpoint_minutes`` have passed since the last one, and at the end, an atomic checkpoint is
   written (a Hugging Face model folder with the training state in a subfolder, ``trainers/checkpoint.py``).
   Metrics go to ``<output_dir>/metrics.jsonl`` with namespaced keys.

The loop is written against two pluggable functions so it does not depend on a particular engine:

* ``rollout(model, task_ids, seed) -> list[Trajectory]`` -- ``stepgym.trainers.runner`` builds it
  from ``stepgym.agents.rollout.collect`` and a policy sharing the trained weights;
* ``teacher(teacher_model, batch, trajectories) -> (logp_teacher, target_mask)`` -- needed only by
  credit methods with ``needs_teacher`` (``stepgym.distill.rescore.teacher_logprobs`` provides it).

Several processes (``torchrun --nproc_per_node N -m stepgym.trainers.launch CONFIG.json``): rank 0
rolls out on an unsharded replica and broadcasts the trajectories; every rank computes the credit
on all rows and updates its contiguous share of them on the FSDP2-sharded model (optimizer after
sharding); the replica is re-synced from the full weights after every update.

Resuming: the newest intact checkpoint under ``<output_dir>/checkpoints`` is loaded (weights, value
head, LoRA adapters, teacher snapshot and the step it was taken, KL reference, optimizer, scheduler,
RNGs, step, training wall time so far); corrupt newer ones are renamed ``*.corrupt`` with a warning.
Every per-step random draw is seeded from ``(seed, step)``, so the steps after a resume reproduce an
uninterrupted run's metrics exactly.
"""

from __future__ import annotations

import copy
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from stepgym.agents.rollout import rollout_metrics
from stepgym.distill.judge import JudgeFn
from stepgym.distill.rescore import TeacherSnapshot
from stepgym.envs.capabilities import Task
from stepgym.envs.records import Trajectory
from stepgym.trainers.batch import RolloutBatch, collate
from stepgym.trainers.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from stepgym.trainers.config import TrainConfig, save_config
from stepgym.trainers.credit import check_credit_kwargs
from stepgym.trainers.credit_inputs import CreditInputSpec, attach_critic, check_providers, fill_credit_inputs
from stepgym.trainers.distributed import (
    full_state_dict,
    global_rank,
    is_distributed,
    shard_model,
    shard_rows,
    world_size,
)
from stepgym.trainers.faults import drop_env_faults
from stepgym.trainers.metrics import MultiSink, make_sinks
from stepgym.trainers.optim import apply_lora, build_optimizer, build_scheduler
from stepgym.trainers.threads import apply_thread_policy
from stepgym.trainers.update import NonFiniteError, UpdateInputs, compute_logprobs, ppo_update

__all__ = ["EvalFn", "RolloutFn", "TeacherFn", "step_seed", "train"]

logger = logging.getLogger(__name__)

RolloutFn = Callable[[torch.nn.Module, list[Task], int], list[Trajectory]]
"""``(model, task_ids, seed) -> trajectories`` (``group_size`` per task, sharing a ``group_id``)."""
TeacherFn = Callable[[torch.nn.Module, RolloutBatch, list[Trajectory]], tuple[Any, ...]]
"""``(teacher_model, batch, trajectories) -> (logp_teacher [B, L], target_mask [B, L])``, optionally followed by the
context view as rows (``distill.rescore.ContextView``; ``prefix``/``prompt`` placements)."""
EvalFn = Callable[[torch.nn.Module, int], dict[str, float]]
"""``(model, step) -> {"<subset>/<metric>": value}``; logged under ``eval/``."""


def step_seed(seed: int, step: int) -> int:
    """The seed of every random draw of training step ``step`` (independent of the RNG history)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _draw_tasks(task_ids: Sequence[Task], n: int, seed: int) -> list[Task]:
    rng = np.random.default_rng(seed)
    replace_ = n > len(task_ids)
    return [task_ids[i] for i in rng.choice(len(task_ids), size=n, replace=replace_)]


def _broadcast_trajectories(trajs: list[Trajectory] | None) -> list[Trajectory]:
    """Rank 0's rollouts to every rank (JSON over ``broadcast_object_list``)."""
    if not is_distributed():
        return trajs or []
    box = [[t.model_dump_json() for t in trajs] if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return [Trajectory.model_validate_json(s) for s in box[0]]


def _sync_replica(model: torch.nn.Module, replica: torch.nn.Module | None) -> None:
    """Copy the sharded ``model``'s full weights into rank 0's unsharded ``replica`` (a collective)."""
    full = full_state_dict(model)
    if replica is not None:
        replica.load_state_dict(full)


def _intact(ckpt_root: Path) -> str:
    newest = latest_checkpoint(ckpt_root)
    where = f"the newest checkpoint {newest} is intact; resume from it" if newest else "no checkpoint was written yet"
    return f"Nothing was saved for this step: {where}."


def _check_credit_finite(
    name: str,
    advantages: torch.Tensor,  # [B, L]
    returns: torch.Tensor | None,  # [B, L]
    mask: torch.Tensor,  # [B, L]
    step: int,
    ckpt_root: Path,
) -> None:
    """Refuse NaN/inf advantages or returns on trainable tokens before they reach the update."""
    on = mask > 0
    for what, t in (("advantages", advantages), ("returns", returns)):
        if t is None:
            continue
        bad = ~torch.isfinite(t[on])
        if bad.any():
            raise NonFiniteError(
                f"training step {step + 1}: credit method {name!r} returned non-finite {what} on "
                f"{int(bad.sum())} of {int(on.sum())} trainable tokens, so no update was made. "
                f"{_intact(ckpt_root)} Check the method's inputs (scores, logp_old, values) for NaN/inf."
            )


def _rank0_says(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (a decision taken from a clock must be the same everywhere)."""
    if not is_distributed():
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def train(
    config: TrainConfig,
    *,
    model: torch.nn.Module,
    task_ids: Sequence[Task],
    rollout: RolloutFn,
    teacher: TeacherFn | None = None,
    teacher_model: torch.nn.Module | None = None,
    judge: JudgeFn | None = None,
    evaluate: EvalFn | None = None,
    on_weights_updated: Callable[[torch.nn.Module], None] | None = None,
    resume: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    tokenizer: Any = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.total_steps`` steps; returns each step's metrics (this process).

    Args:
        config: The run.
        model: The policy (a causal LM, already on its device; LoRA is applied here when enabled).
        task_ids: Training tasks to draw from (already filtered to ``config.train_subsets``); task ids, or
            reset seeds for an env without task ids.
        rollout: Produces the step's trajectories (``stepgym.trainers.runner.make_rollout``).
        teacher: Teacher rescoring; required when the credit method needs a teacher.
        teacher_model: A separate teacher model (same tokenizer, frozen, on the policy's device); ``None``
            = the policy's snapshot (``teacher.mode="snapshot"``) or the live policy.
        judge: Step-role judge; required when the credit method needs one (TRIAGE).
        evaluate: Periodic evaluation (every ``config.eval.every`` steps).
        on_weights_updated: Weight sync to the rollout engine after each update (e.g. vLLM reload);
            an in-process policy sharing ``model`` needs none.
        resume: Continue from the newest checkpoint under ``<output_dir>/checkpoints`` if there is one.
        on_step: Called with ``(step, metrics)`` after every step (progress bars).
        should_stop: Polled after every step; ``True`` writes a checkpoint and returns early (Ctrl-C).
        tokenizer: Saved into every checkpoint, so a step folder loads with ``AutoTokenizer.from_pretrained``.

    Under ``torch.distributed`` every rank calls ``train`` with the same (unsharded) model and
    config: rank 0 runs ``rollout`` (and ``evaluate``) on an unsharded replica, every rank takes its
    rows' share of the update on the FSDP2-sharded model, and the replica is re-synced after each
    update. ``rollout``/``evaluate`` are called only on rank 0 and ``teacher`` on every rank.

    Raises:
        ValueError: The credit method needs a teacher or judge that was not given.
        NonFiniteError: The credit method returned NaN/inf, or a loss or gradient became NaN/inf;
            the step is abandoned before any optimizer step with non-finite values and before its
            checkpoint, so the newest checkpoint on disk is intact.
        EnvFaultError: More than ``config.max_env_error_share`` of a step's episodes ended on an env
            fault (before that step's update and checkpoint).
    """
    # ------------------------------------------------------------------ setup
    method = check_credit_kwargs(config.credit, dict(config.credit_kwargs))
    check_providers(method, teacher=teacher, judge=judge)
    input_spec = CreditInputSpec.from_config(config)
    if not task_ids:
        raise ValueError("task_ids is empty; nothing to train on (check train_subsets)")
    out = Path(config.output_dir)
    rank = global_rank()
    world = world_size()
    if rank == 0:
        save_config(config, out)
    torch.manual_seed(config.seed)
    thread_policy = apply_thread_policy(config.threads)  # once: the trainer and the in-process generator share it
    model = apply_lora(model, config.lora)
    # a critic when the method needs values (StepPO): a zero-initialised head on the policy's last hidden state
    value_head = attach_critic(model, method)
    # the KL reference is the policy as given (before any checkpoint is loaded into it)
    reference = _frozen_copy(model) if config.loss.reference == "initial" else None
    snapshot = None  # a separate teacher model (teacher.model, given as teacher_model) is never refreshed
    if method.needs_teacher and teacher_model is None:
        interval = config.teacher.snapshot_interval if config.teacher.mode == "snapshot" else 0  # 0: live policy
        snapshot = TeacherSnapshot(model, interval, prepare=shard_model if world > 1 else None)
    rollout_model = model
    if world > 1:
        # generation runs on rank 0 alone, so it needs an unsharded replica (re-synced after each update)
        rollout_model = _frozen_copy(model) if rank == 0 else None
        model = shard_model(model)
        reference = shard_model(reference) if reference is not None else None
    # frozen modules a resume must give back exactly
    frozen = {"teacher": snapshot.model} if snapshot is not None and snapshot.model is not None else {}
    if reference is not None:
        frozen["reference"] = reference
    optimizer = build_optimizer(model.parameters(), config.optim)  # after sharding: over the DTensor shards
    low = [p for group in optimizer.param_groups for p in group["params"] if p.dtype in (torch.bfloat16, torch.float16)]
    if low and config.optim.lr < 1e-4:
        logger.warning(
            "AdamW updates %d half-precision tensors in place at lr=%g: bfloat16 keeps 8 significant bits, so "
            "an update below ~0.2%% of a weight rounds away and most weights never move (there are no float32 "
            "master weights). Train in dtype='float32', or with LoRA (peft keeps adapters in float32).",
            len(low),
            config.optim.lr,
        )
    updates_per_step = config.ppo_epochs * config.mini_batches
    scheduler = build_scheduler(optimizer, config.optim, config.total_steps * updates_per_step)
    start, prior_seconds = 0, 0.0
    ckpt_root = out / "checkpoints"
    if resume and list_checkpoints(ckpt_root):
        state = load_checkpoint(ckpt_root, model=model, optimizer=optimizer, scheduler=scheduler, modules=frozen)
        start, prior_seconds = state.step, float(state.extra.get("train_seconds", 0.0))
        logger.info("resumed from step %d (%s)", start, state.path)
        if state.skipped and world > 1:
            dist.barrier()  # every rank has passed over them before they are moved
        for bad in state.skipped if rank == 0 else ():
            aside = bad.with_name(f"{bad.name}.corrupt")
            shutil.rmtree(aside, ignore_errors=True)
            bad.rename(aside)
            logger.warning("moved the corrupt checkpoint %s aside to %s", bad, aside)
        if "teacher" in frozen:
            if "teacher" in state.modules:
                snapshot.restore(int(state.extra["teacher_step"]))
            else:  # a checkpoint of the older layout has no snapshot
                logger.warning(
                    "%s holds no teacher snapshot; the snapshot restarts from the resumed policy", state.path
                )
                snapshot.model.load_state_dict(model.state_dict())
                snapshot.restore(start)
        if "reference" in frozen and "reference" not in state.modules:
            logger.warning("%s holds no KL reference; the reference is the model as given to train()", state.path)
        if world > 1:
            _sync_replica(model, rollout_model)
    kinds, dump = config.metric_sinks, config.model_dump(mode="json")
    sink = make_sinks(out, kinds, resume_step=start, config=dump) if rank == 0 else MultiSink([])
    temperature = config.sampling.temperature
    history: list[dict[str, float]] = []
    train_seconds = prior_seconds  # training wall time, the interrupted runs' before a resume included
    last_save = time.monotonic()

    def checkpoint(done: int) -> None:
        nonlocal last_save
        save_checkpoint(
            ckpt_root,
            done,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            config=config,
            keep_last=config.keep_last,
            tokenizer=tokenizer,
            modules=frozen,
            export_model=rollout_model,
            extra={"train_seconds": train_seconds, "teacher_step": snapshot.taken_at if snapshot is not None else -1},
        )
        last_save = time.monotonic()

    for step in range(start, config.total_steps):
        t0 = time.perf_counter()
        seed = step_seed(config.seed, step)
        # ------------------------------------------------------------------ 1. rollout
        tasks = _draw_tasks(task_ids, config.tasks_per_step, seed)
        model.eval()
        trajs = _broadcast_trajectories(rollout(rollout_model, tasks, seed) if rank == 0 else None)
        rollout_stats = rollout_metrics(trajs)  # over every episode, env faults included (counted)
        trajs = drop_env_faults(
            trajs, env_id=config.env_id, max_share=config.max_env_error_share, step=step, saved=_intact(ckpt_root)
        )
        t_rollout = time.perf_counter()

        # ------------------------------------------------------------------ 2. rows, rescoring, credit
        batch = collate(trajs, pad_token_id=config.pad_token_id, training_step=step)  # schedules count training steps
        filled = fill_credit_inputs(
            method,
            batch,
            trajs,
            spec=input_spec,
            model=model,
            value_head=value_head,
            teacher_model=snapshot.get(model, step) if snapshot is not None else teacher_model,
            teacher=teacher,
            judge=judge,
        )
        credit = filled.credit
        mb = config.micro_batch_size
        out_credit = method(credit, **dict(config.credit_kwargs))
        _check_credit_finite(method.name, out_credit.advantages, out_credit.returns, credit.mask, step, ckpt_root)
        logp_ref = None
        if config.loss.reference != "none":
            ref = reference if config.loss.reference == "initial" else snapshot.get(model, step)
            logp_ref = compute_logprobs(
                ref,
                batch.input_ids,
                batch.attention_mask,
                micro_batch_size=mb,
                temperature=temperature,
                score_mask=credit.mask,
            )
        t_credit = time.perf_counter()

        # ------------------------------------------------------------------ 3. update
        inputs = UpdateInputs(
            batch.input_ids,
            batch.attention_mask,
            credit.mask,
            credit.logp_old,
            out_credit.advantages,
            logp_ref=logp_ref,
            aux=out_credit.aux,
            **filled.critic_targets(out_credit),
        )
        if world > 1:
            inputs = inputs.rows(shard_rows(inputs.num_rows, rank, world))
        shuffle = torch.Generator().manual_seed(seed) if config.shuffle_rows else None
        try:
            update_metrics = ppo_update(
                model,
                optimizer,
                inputs,
                loss_config=config.loss,
                ppo_epochs=config.ppo_epochs,
                mini_batches=config.mini_batches,
                micro_batch_size=mb,
                max_grad_norm=config.optim.max_grad_norm,
                temperature=temperature,
                scheduler=scheduler,
                value_head=value_head,
                generator=shuffle,
            )
        except NonFiniteError as e:
            raise NonFiniteError(f"training step {step + 1}: {e} {_intact(ckpt_root)}") from e
        t_update = time.perf_counter()

        # ------------------------------------------------------------------ 4. weight sync, teacher snapshot
        if world > 1:
            _sync_replica(model, rollout_model)
        if on_weights_updated is not None and rank == 0:
            on_weights_updated(rollout_model)
        done = step + 1

        # ------------------------------------------------------------------ 5. metrics, evaluation
        metrics = {
            **rollout_stats,
            "rollout/score": float(credit.scores.mean()),
            "rollout/rows": float(batch.num_rows),
            "rollout/trainable_tokens": float(credit.mask.sum()),
            **{f"credit/{k}": float(v) for k, v in out_credit.metrics.items()},
            **update_metrics,
        }
        t_eval = time.perf_counter()
        if evaluate is not None and config.eval.every and done % config.eval.every == 0 and rank == 0:
            rollout_model.eval()
            metrics.update({f"eval/{k}": float(v) for k, v in evaluate(rollout_model, done).items()})
        t_eval = time.perf_counter() - t_eval
        step_seconds = time.perf_counter() - t0
        train_seconds += step_seconds
        metrics.update(
            {
                "time/rollout": t_rollout - t0,
                # inside the rollout (rollout_metrics: each trajectory's share of the batched calls, summed)
                "time/generate": rollout_stats["time/generate_s"],
                "time/env": rollout_stats["time/env_s"],
                "time/credit": t_credit - t_rollout,
                "time/update": t_update - t_credit,
                "time/eval": t_eval,
                "time/step": step_seconds,
                "time/total": train_seconds,
                **thread_policy.metrics(),
            }
        )
        if rank == 0:
            sink.log(metrics, done)
        history.append(metrics)

        if on_step is not None:
            on_step(done, metrics)

        # ------------------------------------------------------------------ 6. checkpoint
        stop = should_stop is not None and should_stop()
        last = done == config.total_steps or stop
        # by wall time too, so a crash or a second Ctrl-C loses at most checkpoint_minutes of finished steps
        late = _rank0_says(
            bool(config.checkpoint_minutes) and time.monotonic() - last_save >= 60 * config.checkpoint_minutes
        )
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or last or late:
            checkpoint(done)
        if stop:
            logger.info("stopped after step %d (checkpoint written)", done)
            break
    sink.close()
    return history
