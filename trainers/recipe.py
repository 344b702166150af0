"""The recipe of one seed: base evaluation -> SFT warm start -> evaluation -> RL -> final evaluation.

A pretrained chat model that has never seen an env's protocol writes almost only invalid steps, so
RL from it has nothing to reinforce (issue 16: SmolLM2-135M never closes an ``<answer>`` tag). The
recipe first clones demonstrations the project makes itself (:mod:`stepgym.agents.demos`, played on
the *training* env kwargs through the same rollout code, renderer and layout as RL, so SFT and RL
see identical token streams), then runs RL from the warm-started weights. Each model is evaluated
on the same held-out plan, so the report can put *before training*, *after SFT* and *after
training* side by side; the base evaluation is the curve's step-0 point.

Resumable: every finished stage leaves ``<output_dir>/recipe/<stage>.json`` (and the SFT stage its
model folder ``<output_dir>/recipe/sft-model``); a rerun with the same settings skips it, and RL
resumes from its newest checkpoint (``trainers/runner.py``). A stage file whose key (the settings
that produced it) differs is recomputed, with a warning.

This module is env-agnostic: the evaluation and the RL run are callbacks from
:mod:`stepgym.trainers.experiment` (its plan, progress bars and caching), the demonstrations come
from the env's registered demonstrator.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepgym.trainers import report as R
from stepgym.trainers.config import TrainConfig

__all__ = [
    "STAGES",
    "RecipeResult",
    "peak_rss_bytes",
    "reset_peak_rss",
    "run_recipe",
    "save_model_atomically",
    "sft_stage",
]

logger = logging.getLogger(__name__)

STAGES = ("base", "sft", "sft_eval", "rl", "final")
"""Stage names in order (``recipe/<stage>.json``)."""

EvalFn = Callable[[Any, Any, str], dict[str, Any]]
"""``(model, tokenizer, stage) -> {"results": {decoding: {split: {subset: dict}}}, ...}``."""


@dataclass(frozen=True)
class RecipeResult:
    """What the recipe of one seed produced."""

    stages: dict[str, dict[str, Any]]
    """``{stage: its JSON record}`` (``result``, ``seconds``, ``peak_rss_bytes``, ``skipped``)."""
    rl_config: TrainConfig
    """The RL run's config (``model`` = the SFT model folder)."""
    rl_result: Any
    """The :class:`~stepgym.trainers.runner.RunResult` of the RL stage."""
    interrupted: bool


# =========================================================================== peak memory per stage
def reset_peak_rss() -> bool:
    """Reset this process's peak resident set (``VmHWM``) so the next stage's peak is its own (Linux only).

    Writing ``5`` to ``/proc/self/clear_refs`` resets the high-water mark (Linux ``proc(5)``); returns
    whether it could.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """Peak resident set of this process since start or the last :func:`reset_peak_rss` (``None`` off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# =========================================================================== stage files
class _Stages:
    """``<output_dir>/recipe/<stage>.json`` records keyed by the settings that produced them."""

    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def done(self, stage: str, key: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(stage)
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        if record.get("key") != json.loads(json.dumps(key)):
            logger.warning("recipe stage %s: %s was made with other settings; running it again", stage, path)
            return None
        logger.info("recipe stage %s: done before (%s), skipped", stage, path)
        return {**record, "skipped": True}

    def run(self, stage: str, key: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        old = self.done(stage, key)
        if old is not None:
            return old
        reset_peak_rss()
        t0 = time.perf_counter()
        result = fn()
        record = {
            "stage": stage,
            "key": key,
            "result": result,
            "seconds": time.perf_counter() - t0,
            "peak_rss_bytes": peak_rss_bytes(),
        }
        R.write_json(self.path(stage), record)
        return {**record, "skipped": False}


# =========================================================================== SFT

def save_model_atomically(model: Any, tokenizer: Any, folder: str | Path) -> Path:
    """Save an HF model folder aside and rename it into place; returns ``folder``.

    Written aside, then renamed: a crash never leaves a half-written model that a rerun would trust.
    """
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder

def sft_stage(
    config: TrainConfig, model_dir: Path, on_step: Callable[[int, int, float], None] | None = None
) -> dict[str, Any]:
    """Collect the env's demonstrations on training tasks, keep the trusted ones, SFT the model, save it.

    ``on_step(step, total_steps, loss)`` is called after every SFT optimizer step (progress bars).

    Returns:
        ``{"demos", "kept", "kept_by_subset", "losses", "rows", "tokens", "demonstrator"}``.

    Raises:
        KeyError: The env has no registered demonstrator (the message says how to register one).
        RuntimeError: The keep-filter dropped every demonstration.
    """
    from stepgym.agents.demos import get_demonstrator
    from stepgym.trainers.runner import build_model, train_task_ids
    from stepgym.trainers.sft import collect_demonstrations, sft_train

    demonstrator = get_demonstrator(config.env_id)
    s = config.sft
    tasks = train_task_ids(config)  # the training env kwargs and train_subsets: never an evaluation task
    random.Random(config.seed).shuffle(tasks)
    tasks = tasks[: s.demo_tasks]
    model, tokenizer = build_model(config)
    demos = collect_demonstrations(
        config.env_id,
        demonstrator.make_agent,
        tokenizer,
        tasks,
        env_kwargs={**config.env_kwargs, **demonstrator.env_kwargs},
        layout=config.layout,
        max_turns=config.max_turns,
        seed=config.seed,
        stop=config.sampling.stop,
        num_envs=config.num_envs,
        max_new_tokens=config.sampling.max_new_tokens,
        max_prompt_tokens=config.max_prompt_tokens,
        max_total_tokens=config.max_total_tokens,
        instructions=config.instructions,
    )
    kept = [t for t in demos if demonstrator.keep(t)]
    by_subset: dict[str, int] = {}
    for t in kept:
        by_subset[t.subset] = by_subset.get(t.subset, 0) + 1
    logger.info(
        "SFT demonstrations: kept %d of %d (%s) -- %s",
        len(kept),
        len(demos),
        ", ".join(f"{k} {v}" for k, v in by_subset.items()) or "none",
        demonstrator.description or "the demonstrator's keep-filter",
    )
    if not kept:
        raise RuntimeError(
            f"the demonstrator of {config.env_id} kept none of its {len(demos)} episodes; raise sft.demo_tasks, "
            "check the training env kwargs (e.g. Search-QA's topk: the answer must be in the retrieved passages), "
            "or run without the SFT stage (--sft.enabled false)"
        )
    rows = [seq for t in kept for seq in t.sequences]
    total = s.epochs * -(-len(rows) // s.batch_size)  # sft_train: ceil(rows / batch) steps per epoch
    losses = sft_train(
        model,
        kept,
        epochs=s.epochs,
        lr=s.lr,
        batch_size=s.batch_size,
        seed=config.seed,
        pad_token_id=config.pad_token_id,
        max_grad_norm=config.optim.max_grad_norm or 1.0,
        schedule=s.schedule,
        on_step=(lambda k, loss: on_step(k, total, loss)) if on_step is not None else None,
        micro_batch_size=config.micro_batch_size,  # as RL's update: bounds the memory of one forward/backward
    )
    save_model_atomically(model, tokenizer, model_dir)
    return {
        "demonstrator": demonstrator.description,
        "demos": len(demos),
        "kept": len(kept),
        "kept_by_subset": by_subset,
        "rows": len(rows),
        "tokens": sum(len(r.ids) for r in rows),
        "trained_tokens": sum(sum(r.loss_mask) for r in rows),
        "losses": losses,
        "optimizer_steps": len(losses),
    }


# =========================================================================== the recipe
def run_recipe(
    config: TrainConfig,
    *,
    evaluate: EvalFn,
    eval_key: dict[str, Any],
    train_rl: Callable[[TrainConfig], Any],
    shared_dir: Path | None = None,
    on_sft_step: Callable[[int, int, float], None] | None = None,
) -> RecipeResult:
    """Run the five stages of one seed (``config.output_dir``), skipping those already done.

    Args:
        config: The seed's run config (``sft`` settings, ``model`` = the base model).
        evaluate: Evaluates a model on the held-out plan (the base, SFT and final stages alike).
        eval_key: What identifies that plan (split, tasks, decoding): part of each evaluation stage's key.
        train_rl: Runs (or resumes) RL with the config it is given; returns a ``RunResult``.
        shared_dir: Where the base, SFT and SFT-evaluation stages live when several arms (credit methods) share
            them (``<shared_dir>/recipe``); ``None``: ``config.output_dir``. Their keys hold no credit setting.
        on_sft_step: Progress of the SFT stage: ``(step, total_steps, loss)`` after every optimizer step.
    """
    from stepgym.trainers.runner import build_model, load_checkpoint_model

    own = _Stages(Path(config.output_dir) / "recipe")
    stages = _Stages(Path(shared_dir or config.output_dir) / "recipe")  # the stages before RL
    # absolute: the RL run's config (saved in every checkpoint) names it, and is read from other folders later
    model_dir = (stages.folder / "sft-model").resolve()
    records: dict[str, dict[str, Any]] = {}

    def eval_model(name: str, stage: str) -> Callable[[], dict[str, Any]]:
        def go() -> dict[str, Any]:
            if name == config.model:
                model, tok = build_model(config)
            else:
                model, tok = build_model(config.model_copy(update={"model": name}))
            model.eval()
            return evaluate(model, tok, stage)

        return go

    # ------------------------------------------------------------------ 1. base model (the step-0 point)
    records["base"] = stages.run("base", {"model": config.model, **eval_key}, eval_model(config.model, "base"))

    # ------------------------------------------------------------------ 2. SFT warm start
    sft_key = {
        "model": config.model,
        "seed": config.seed,
        "sft": config.sft.model_dump(mode="json"),
        "env_kwargs": dict(config.env_kwargs),
        "train_subsets": list(config.train_subsets),
        "layout": config.layout,
        "max_turns": config.max_turns,
        "max_new_tokens": config.sampling.max_new_tokens,
    }
    if not (model_dir / "config.json").is_file():
        stages.path("sft").unlink(missing_ok=True)  # a stage record without its model folder is not done
    records["sft"] = stages.run("sft", sft_key, lambda: sft_stage(config, model_dir, on_sft_step))

    # ------------------------------------------------------------------ 3. the warm start, evaluated
    sft_id = {"sft_model": str(model_dir), "sft_key": sft_key}
    records["sft_eval"] = stages.run("sft_eval", {**sft_id, **eval_key}, eval_model(str(model_dir), "sft_eval"))

    # ------------------------------------------------------------------ 4. RL from the warm start
    rl_config = config.model_copy(update={"model": str(model_dir)})
    reset_peak_rss()
    t0 = time.perf_counter()
    rl = train_rl(rl_config)
    records["rl"] = {
        "stage": "rl",
        "result": {"final_step": rl.final_step, "interrupted": rl.interrupted, "steps_run": len(rl.history)},
        "seconds": time.perf_counter() - t0,
        "peak_rss_bytes": peak_rss_bytes(),
        "skipped": not rl.history,
    }
    if rl.interrupted:
        return RecipeResult(stages=records, rl_config=rl_config, rl_result=rl, interrupted=True)
    R.write_json(own.path("rl"), records["rl"])

    # ------------------------------------------------------------------ 5. the RL model, evaluated
    def final() -> dict[str, Any]:
        model, tok, _ = load_checkpoint_model(rl.checkpoint)
        return evaluate(model, tok, "final")

    final_key = {**sft_id, "checkpoint": str(rl.checkpoint), "step": rl.final_step, **eval_key}
    records["final"] = own.run("final", final_key, final)
    return RecipeResult(stages=records, rl_config=rl_config, rl_result=rl, interrupted=False)
