"""The GRPO training loop, top to bottom.

"Our GRPO", exactly: every step draws ``tasks_per_step`` tasks (seeded by ``(seed, step)``) and
rolls out ``group_size`` episodes of each with the current policy; every ``TokenSequence`` becomes a
row (``trainers/batch.py``); ``logp_old`` is recomputed by the trainer's forward (unless
``recompute_old_logprobs`` is off); methods that need a teacher get teacher log-probs of the same
tokens; the configured credit method (a registry entry, built-ins included) turns scores into
per-token advantages; ``ppo_update`` runs ``ppo_epochs`` x ``mini_batches`` clipped-surrogate
optimizer steps (optional k3 KL to the reference model, entropy bonus, auxiliary loss); the rollout
engine receives the new weights; the teacher snapshot is refreshed every
``teacher.snapshot_interval`` steps; evaluation and checkpoints run on their cadence. Metrics go to
``<output_dir>/metrics.jsonl`` with namespaced keys.

The loop is written against two pluggable functions so it does not depend on a particular engine:

* ``rollout(model, task_ids, seed) -> list[Trajectory]`` -- ``stepgym.trainers.runner`` builds it
  from ``stepgym.agents.rollout.collect`` and a policy sharing the trained weights;
* ``teacher(teacher_model, batch, trajectories) -> (logp_teacher, target_mask)`` -- needed only by
  credit methods with ``needs_teacher`` (``stepgym.distill.rescore.teacher_logprobs`` provides it).

Resuming: the newest checkpoint under ``<output_dir>/checkpoints`` is loaded (weights, optimizer,
scheduler, RNGs, step); every per-step random draw is seeded from ``(seed, step)``, so the steps
after a resume reproduce an uninterrupted run's metrics exactly.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from stepgym.envs.records import Trajectory
from stepgym.trainers.batch import RolloutBatch, collate
from stepgym.trainers.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from stepgym.trainers.config import TrainConfig, save_config
from stepgym.trainers.credit import check_credit_kwargs
from stepgym.trainers.distributed import shard_rows
from stepgym.trainers.metrics import make_sinks
from stepgym.trainers.optim import apply_lora, build_optimizer, build_scheduler
from stepgym.trainers.update import UpdateInputs, compute_logprobs, ppo_update

__all__ = ["EvalFn", "RolloutFn", "TeacherFn", "step_seed", "train"]

logger = logging.getLogger(__name__)

RolloutFn = Callable[[torch.nn.Module, list[str], int], list[Trajectory]]
"""``(model, task_ids, seed) -> trajectories`` (``group_size`` per task, sharing a ``group_id``)."""
TeacherFn = Callable[[torch.nn.Module, RolloutBatch, list[Trajectory]], tuple[torch.Tensor, torch.Tensor]]
"""``(teacher_model, batch, trajectories) -> (logp_teacher [B, L], target_mask [B, L])``."""
EvalFn = Callable[[torch.nn.Module, int], dict[str, float]]
"""``(model, step) -> {"<subset>/<metric>": value}``; logged under ``eval/``."""


def step_seed(seed: int, step: int) -> int:
    """The seed of every random draw of training step ``step`` (independent of the RNG history)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _draw_tasks(task_ids: Sequence[str], n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    replace_ = n > len(task_ids)
    return [task_ids[i] for i in rng.choice(len(task_ids), size=n, replace=replace_)]


def _broadcast_trajectories(trajs: list[Trajectory] | None) -> list[Trajectory]:
    """Rank 0's rollouts to every rank (JSON over ``broadcast_object_list``)."""
    if not (dist.is_available() and dist.is_initialized()):
        return trajs or []
    box = [[t.model_dump_json() for t in trajs] if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return [Trajectory.model_validate_json(s) for s in box[0]]


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def train(
    config: TrainConfig,
    *,
    model: torch.nn.Module,
    task_ids: Sequence[str],
    rollout: RolloutFn,
    teacher: TeacherFn | None = None,
    evaluate: EvalFn | None = None,
    on_weights_updated: Callable[[torch.nn.Module], None] | None = None,
    resume: bool = True,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` for ``config.total_steps`` steps; returns each step's metrics (this process).

    Args:
        config: The run.
        model: The policy (a causal LM, already on its device; LoRA is applied here when enabled).
        task_ids: Training tasks to draw from (already filtered to ``config.train_subsets``).
        rollout: Produces the step's trajectories (``stepgym.trainers.runner.make_rollout``).
        teacher: Teacher rescoring; required when the credit method needs a teacher.
        evaluate: Periodic evaluation (every ``config.eval.every`` steps).
        on_weights_updated: Weight sync to the rollout engine after each update (e.g. vLLM reload);
            an in-process policy sharing ``model`` needs none.
        resume: Continue from the newest checkpoint under ``<output_dir>/checkpoints`` if there is one.
        on_step: Called with ``(step, metrics)`` after every step (progress bars).
        should_stop: Polled after every step; ``True`` writes a checkpoint and returns early (Ctrl-C).

    Raises:
        ValueError: The credit method needs a teacher (or a value head) that was not given.
    """
    # ------------------------------------------------------------------ setup
    method = check_credit_kwargs(config.credit, dict(config.credit_kwargs))
    if method.needs_teacher and teacher is None:
        raise ValueError(f"credit method {method.name!r} needs teacher log-probs; pass teacher=... to train()")
    if method.needs_values:
        raise ValueError(f"credit method {method.name!r} needs a value head, which train() does not build yet")
    if not task_ids:
        raise ValueError("task_ids is empty; nothing to train on (check train_subsets)")
    out = Path(config.output_dir)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank == 0:
        save_config(config, out)
    torch.manual_seed(config.seed)
    model = apply_lora(model, config.lora)
    optimizer = build_optimizer(model.parameters(), config.optim)
    updates_per_step = config.ppo_epochs * config.mini_batches
    scheduler = build_scheduler(optimizer, config.optim, config.total_steps * updates_per_step)
    # the KL reference is the policy as given (before any checkpoint is loaded into it)
    reference = _frozen_copy(model) if config.loss.reference == "initial" else None
    start = 0
    ckpt_root = out / "checkpoints"
    if resume and latest_checkpoint(ckpt_root) is not None:
        start = load_checkpoint(ckpt_root, model=model, optimizer=optimizer, scheduler=scheduler).step
        logger.info("resumed from step %d", start)
    # after a resume the snapshot is the resumed policy: exact when checkpoint_every is a multiple of the interval
    teacher_model = _frozen_copy(model) if method.needs_teacher and config.teacher.mode == "snapshot" else None
    sink = make_sinks(out, config.metric_sinks, resume_step=start, config=config.model_dump(mode="json"))
    temperature = config.sampling.temperature
    history: list[dict[str, float]] = []

    for step in range(start, config.total_steps):
        t0 = time.perf_counter()
        seed = step_seed(config.seed, step)
        # ------------------------------------------------------------------ 1. rollout
        tasks = _draw_tasks(task_ids, config.tasks_per_step, seed)
        model.eval()
        trajs = _broadcast_trajectories(rollout(model, tasks, seed) if rank == 0 else None)
        t_rollout = time.perf_counter()

        # ------------------------------------------------------------------ 2. rows, rescoring, credit
        batch = collate(
            trajs,
            pad_token_id=config.pad_token_id,
            invalid_action_penalty=config.invalid_action_penalty,
            training_step=step * updates_per_step,
        )
        credit = batch.credit
        mb = config.micro_batch_size
        if config.recompute_old_logprobs:
            logp_old = compute_logprobs(
                model,
                batch.input_ids,
                batch.attention_mask,
                micro_batch_size=mb,
                temperature=temperature,
                score_mask=credit.mask,
            )
            credit = replace(credit, logp_old=logp_old * credit.mask)
        if method.needs_teacher:
            scorer = teacher_model if teacher_model is not None else model
            with torch.no_grad():
                logp_teacher, target_mask = teacher(scorer, batch, trajs)
            credit = replace(credit, logp_teacher=logp_teacher, target_mask=target_mask)
        out_credit = method(credit, **dict(config.credit_kwargs))
        logp_ref = None
        if config.loss.reference != "none":
            ref = reference if config.loss.reference == "initial" else teacher_model
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
        )
        if world > 1:
            inputs = inputs.rows(shard_rows(inputs.num_rows, rank, world))
        shuffle = torch.Generator().manual_seed(seed) if config.shuffle_rows else None
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
            generator=shuffle,
        )
        t_update = time.perf_counter()

        # ------------------------------------------------------------------ 4. weight sync, teacher snapshot
        if on_weights_updated is not None:
            on_weights_updated(model)
        done = step + 1
        if teacher_model is not None and done % config.teacher.snapshot_interval == 0:
            teacher_model.load_state_dict(model.state_dict())

        # ------------------------------------------------------------------ 5. metrics, evaluation
        metrics = {
            "rollout/success": float(credit.success.float().mean()),
            "rollout/score": float(credit.scores.mean()),
            "rollout/truncated": float(credit.truncated.float().mean()),
            "rollout/trajectories": float(len(trajs)),
            "rollout/rows": float(batch.num_rows),
            "rollout/trainable_tokens": float(credit.mask.sum()),
            "rollout/steps_per_episode": float(np.mean([t.num_steps for t in trajs])),
            **{f"credit/{k}": float(v) for k, v in out_credit.metrics.items()},
            **update_metrics,
        }
        if evaluate is not None and config.eval.every and done % config.eval.every == 0:
            model.eval()
            metrics.update({f"eval/{k}": float(v) for k, v in evaluate(model, done).items()})
        metrics.update(
            {
                "time/rollout": t_rollout - t0,
                "time/credit": t_credit - t_rollout,
                "time/update": t_update - t_credit,
                "time/step": time.perf_counter() - t0,
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
        if (config.checkpoint_every and done % config.checkpoint_every == 0) or last:
            save_checkpoint(
                ckpt_root,
                done,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                config=config,
                keep_last=config.keep_last,
            )
        if stop:
            logger.info("stopped after step %d (checkpoint written)", done)
            break
    sink.close()
    return history
