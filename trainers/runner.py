"""From a :class:`~stepgym.trainers.config.TrainConfig` to a running experiment.

:func:`run_training` assembles the parts the loop in :mod:`stepgym.trainers.grpo` takes as
arguments: the model and tokenizer (:func:`build_model`), an env pool, the rollout policy -- by
default a transformers policy that shares the trained weights (so no weight sync is needed
in-process); with ``rollout.backend="vllm"`` a vLLM engine (:func:`build_vllm_policy`) whose weights
are replaced in place (:func:`rollout_state_dict`) before the first rollout and after every update
--, the chat renderer, the training tasks, the teacher rescoring (distill hindsight + batched
rescoring) for methods that need one, and periodic per-subset evaluation (always transformers).
:func:`load_checkpoint_model` and :func:`evaluate_model` serve evaluation of saved checkpoints
(``benchmarks/run.py --eval-only``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from stepgym.agents.hf import HFPolicy
from stepgym.agents.models import load_model, load_tokenizer
from stepgym.agents.policy import SamplingParams
from stepgym.agents.render import ChatRenderer
from stepgym.agents.rollout import collect
from stepgym.agents.vllm import VLLMPolicy, require_vllm
from stepgym.distill.cross_tokenizer import cross_tokenizer_logprobs
from stepgym.distill.hindsight import (
    DEFAULT_TEMPLATE,
    build_hindsight_batch,
    llm_contrast_hindsight_batch,
    render_hindsight,
)
from stepgym.distill.judge import JudgeFn, llm_judge, oracle_judge
from stepgym.distill.rescore import context_view, teacher_logprobs
from stepgym.envs import resolve_env_id
from stepgym.envs.capabilities import Task, seed_tasks
from stepgym.envs.pool import EnvPool
from stepgym.envs.records import Trajectory
from stepgym.trainers.batch import RolloutBatch
from stepgym.trainers.checkpoint import (
    is_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint_state,
    rollout_state_dict,
    train_config_path,
)
from stepgym.trainers.config import CONFIG_FILENAME, TrainConfig, load_config
from stepgym.trainers.credit import get_credit
from stepgym.trainers.credit_inputs import attach_critic
from stepgym.trainers.distributed import global_rank, is_distributed
from stepgym.trainers.evaluate import SubsetResult, evaluate, overall, sample_tasks, task_subsets
from stepgym.trainers.grpo import EvalFn, RolloutFn, TeacherFn, train
from stepgym.trainers.optim import apply_lora

__all__ = [
    "EngineSync",
    "RunResult",
    "build_model",
    "build_teacher_model",
    "build_vllm_policy",
    "eval_task_ids",
    "evaluate_model",
    "load_checkpoint_model",
    "make_evaluator",
    "make_judge",
    "make_rollout",
    "make_teacher",
    "resolve_device",
    "rollout_state_dict",
    "run_training",
    "train_task_ids",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """What :func:`run_training` did."""

    history: list[dict[str, float]]
    """One metrics dict per step run in this call (a resumed run starts after the checkpoint)."""
    interrupted: bool
    """``should_stop`` ended the run early (a checkpoint was written)."""
    final_step: int
    """Training steps completed in total (resumed ones included)."""
    checkpoint: Path | None
    """Newest checkpoint folder."""
    output_dir: Path
    """The run folder (``config.json``, ``metrics.jsonl``, ``checkpoints/``)."""
    train_seconds: float = 0.0
    """Training wall time up to the newest checkpoint, that of interrupted runs before a resume included."""


# =========================================================================== model
def resolve_device(config: TrainConfig) -> torch.device:
    """``config.device`` with ``auto`` resolved (CUDA when available)."""
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config.device is 'cuda' but torch sees no CUDA device; use device='cpu' or 'auto'")
    return torch.device(config.device)


def build_model(config: TrainConfig) -> tuple[Any, Any]:
    """The policy model and tokenizer named by ``config.model`` (``agents.models.load_model`` names)."""
    model, tokenizer = load_model(config.model, dtype=config.dtype, device=resolve_device(config), seed=config.seed)
    return model, tokenizer


def build_vllm_policy(config: TrainConfig, model: Any, tokenizer: Any) -> VLLMPolicy:
    """A vLLM engine serving ``model`` (saved to a temporary folder that is removed once the engine has loaded it).

    The engine runs in ``config.dtype``, seeded with ``config.seed``, with the context length, GPU
    memory share and extra arguments of ``config.rollout``.

    Raises:
        DependencyNotInstalled: vLLM is not importable here.
    """
    require_vllm()
    r = config.rollout
    max_len = r.max_model_len or config.max_prompt_tokens + config.sampling.max_new_tokens
    folder = Path(tempfile.mkdtemp(prefix="stepgym-vllm-"))
    try:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        t0 = time.perf_counter()
        kwargs: dict[str, Any] = {"enforce_eager": r.enforce_eager, **dict(r.engine_kwargs)}
        if resolve_device(config).type == "cuda":
            kwargs.setdefault("gpu_memory_utilization", r.gpu_memory_utilization)
        policy = VLLMPolicy(str(folder), dtype=config.dtype, seed=config.seed, max_model_len=max_len, **kwargs)
        logger.info("vLLM rollout engine started in %.1f s", time.perf_counter() - t0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return policy


def load_checkpoint_model(path: str | Path) -> tuple[Any, Any, TrainConfig]:
    """Model, tokenizer and run config of a checkpoint (a ``step-*`` folder, a run's ``checkpoints/`` or a run).

    The model is the trained module as the loop had it (LoRA adapters unmerged, StepPO's value head
    attached); for a plain causal LM use ``AutoModelForCausalLM.from_pretrained(step_dir)``. For a run
    or ``checkpoints/`` folder the newest intact checkpoint is used.

    Raises:
        FileNotFoundError: No checkpoint or no ``config.json`` at ``path``.
    """
    path = Path(path)
    root = path if latest_checkpoint(path) is not None else path / "checkpoints"
    ckpt: Path | None = path if is_checkpoint(path) else latest_checkpoint(root)
    if ckpt is None:
        raise FileNotFoundError(
            f"no checkpoint at {path}: pass a run folder (runs/NAME), its checkpoints/ folder, or a step-* folder"
        )
    config_file = train_config_path(ckpt)
    if not config_file.is_file():
        config_file = ckpt.parent.parent / CONFIG_FILENAME
    config = load_config(config_file)
    model, tokenizer = build_model(config)
    model = apply_lora(model, config.lora)
    attach_critic(model, get_credit(config.credit))  # checkpoints of methods with a critic hold its head too
    load_checkpoint(ckpt if is_checkpoint(path) else root, model=model, restore_rngs=False)
    model.eval()
    return model, tokenizer, config


# =========================================================================== tasks
def _eval_env_kwargs(config: TrainConfig) -> dict[str, Any]:
    return {**dict(config.env_kwargs), **dict(config.eval.env_kwargs)}


def train_task_ids(config: TrainConfig) -> list[Task]:
    """Training tasks: the env's tasks (made with ``config.env_kwargs``) in ``config.train_subsets``.

    An env without task ids trains on the reset seeds ``[0, config.seed_tasks)``.

    Raises:
        KeyError: A training subset the env does not have.
    """
    by = task_subsets(config.env_id, config.env_kwargs, seeds=seed_tasks(config.seed_tasks, "train"))
    chosen = sample_tasks(by, None, subsets=list(config.train_subsets) or None)
    return [t for ids in chosen.values() for t in ids]


def eval_task_ids(
    config: TrainConfig,
    *,
    subsets: Sequence[str] | None = None,
    n_per_subset: int | None = None,
    seed: int = 0,
) -> dict[str, list[Task]]:
    """A fixed evaluation sample per subset (``config.eval`` defaults), from the evaluation env kwargs.

    An env without task ids is evaluated on the reset seeds ``[seed_tasks, 2 * seed_tasks)``, disjoint from
    the training seeds.
    """
    by = task_subsets(config.env_id, _eval_env_kwargs(config), seeds=seed_tasks(config.seed_tasks, "eval"))
    names = list(subsets) if subsets else (list(config.eval.subsets) or None)
    return sample_tasks(by, n_per_subset or config.eval.tasks_per_subset, seed=seed, subsets=names)


# =========================================================================== loop parts
def _sampling(config: TrainConfig, *, temperature: float, seed: int | None) -> SamplingParams:
    s = config.sampling
    return SamplingParams(
        max_new_tokens=s.max_new_tokens, temperature=temperature, top_p=s.top_p, stop=tuple(s.stop), seed=seed
    )


def make_rollout(
    pool: EnvPool,
    policy: Any,
    renderer: ChatRenderer,
    config: TrainConfig,
    *,
    before_generate: Callable[[torch.nn.Module], None] | None = None,
) -> RolloutFn:
    """The loop's rollout: ``collect`` with the config's group size, layout, limits and seeded sampling.

    ``before_generate(model)`` runs first in every call (e.g. :class:`EngineSync` pushing new weights to vLLM).
    """
    current = policy

    def rollout(model: torch.nn.Module, task_ids: list[Task], seed: int) -> list[Trajectory]:
        nonlocal current
        if before_generate is not None:
            before_generate(model)
        # an HF policy generates with the module the loop hands over (under several processes:
        # rank 0's unsharded replica; under LoRA: the peft-patched base model)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        if isinstance(current, HFPolicy) and current.model is not base:
            current = HFPolicy(
                base, current.tokenizer, seed=config.seed, max_batch_size=current.max_batch_size, engine=current.engine
            )
        return collect(
            pool,
            current,
            task_ids,
            group_size=config.group_size,
            layout=config.layout,
            renderer=renderer,
            sampling=_sampling(config, temperature=config.sampling.temperature, seed=seed % 2**31),
            max_turns=config.max_turns,
            max_prompt_tokens=config.max_prompt_tokens,
            max_total_tokens=config.max_total_tokens,
            max_action_tokens=config.max_action_tokens,
            instructions=config.instructions,
            seed=seed % 2**31,
            group_prefix=f"s{seed % 100_000}:",
        )

    return rollout


class EngineSync:
    """Keeps a separate rollout engine's weights equal to the trained model's.

    The loop calls :meth:`mark_stale` after every update (``train(on_weights_updated=...)``); the
    rollout calls the object before generating, which pushes :func:`rollout_state_dict` with
    ``policy.update_weights`` if the weights changed since the last push. The first call always
    pushes, so a resumed run (whose checkpoint was loaded after the engine started) generates with
    the resumed weights.
    """

    def __init__(self, policy: Any):
        self.policy = policy
        self.stale = True
        self.pushes = 0
        self.seconds = 0.0

    def mark_stale(self, model: torch.nn.Module) -> None:
        """The trained weights changed."""
        self.stale = True

    def __call__(self, model: torch.nn.Module) -> None:
        """Push the weights of ``model`` to the engine if they changed."""
        if not self.stale:
            return
        t0 = time.perf_counter()
        self.policy.update_weights(rollout_state_dict(model))
        self.seconds += time.perf_counter() - t0
        self.pushes += 1
        self.stale = False
        logger.info("pushed weights to the rollout engine in %.2f s", time.perf_counter() - t0)


def _text_generator(policy: Any, tokenizer: Any, *, max_new_tokens: int, seed: int) -> Callable[[list[str]], list[str]]:
    """``prompts -> texts`` with ``policy`` (any backend), one user message each, greedy."""
    renderer = ChatRenderer(tokenizer)
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=seed)

    def generate(prompts: list[str]) -> list[str]:
        ids = [
            renderer.encode(renderer.render_text([{"role": "user", "content": p}], add_generation_prompt=True))
            for p in prompts
        ]
        return [c.text for c in policy.generate(ids, sampling)]

    return generate


def make_teacher(tokenizer: Any, config: TrainConfig, policy: Any = None, *, with_view: bool = False) -> TeacherFn:
    """The loop's teacher: hindsight text per trajectory (ALGORITHMS.md §4.2) -> batched rescoring.

    The hindsight parts are ``teacher.hindsight`` (a method's own parts, e.g. SGCD's contrast, fill it
    when it is left unset: ``config_defaults``); with ``teacher.contrast="policy"`` the ``contrast`` part is
    written by ``policy`` (SGCD's LLM-written contrast). ``with_view`` (methods needing ``context_view``,
    UCOB) also returns the rows with the block inserted (:func:`~stepgym.distill.rescore.context_view`).

    Raises:
        ValueError: ``with_view`` under the ``inline`` placement (one block per step, no single view row).
    """
    t = config.teacher
    if with_view and t.placement == "inline":
        raise ValueError(
            f"credit method {config.credit!r} trains the policy under the teacher's context view, which needs one "
            "context block per row; set teacher.placement='prompt' (or 'prefix'), not 'inline'"
        )
    parts = tuple(t.hindsight)
    written = "contrast" in parts and t.contrast == "policy"
    if written and policy is None:
        raise ValueError("teacher.contrast='policy' needs the policy to write the contrast; pass policy=...")
    write = None
    if written:
        write = _text_generator(policy, tokenizer, max_new_tokens=t.contrast_max_tokens, seed=config.seed)
    plain = tuple(p for p in parts if not (written and p == "contrast"))
    cross = _cross_tokenizer(config, tokenizer)
    if cross is not None and with_view:
        raise ValueError(
            f"credit method {config.credit!r} trains the policy under the teacher's context view, which a teacher "
            f"with another tokenizer ({t.model!r}) cannot give; drop teacher.model"
        )
    if cross is not None and parts and t.placement != "prompt":
        raise ValueError(
            f"teacher.model {t.model!r} has another tokenizer, so it reads hindsight only before the row "
            f"(teacher.placement='prompt'), not {t.placement!r}; set teacher.placement='prompt' or teacher.hindsight=[]"
        )

    def teacher(model: torch.nn.Module, batch: RolloutBatch, trajs: list[Trajectory]) -> tuple[Any, ...]:
        texts = build_hindsight_batch(trajs, plain)
        if write is not None:
            extra = llm_contrast_hindsight_batch(trajs, write)
            texts = ["\n".join(x for x in pair if x) or None for pair in zip(texts, extra)]
        rows = [seq for traj in trajs for seq in traj.sequences]
        if cross is not None:  # another vocabulary: the teacher scores the rows' text (distill/cross_tokenizer.py)
            logp_t, target = cross_tokenizer_logprobs(
                model,
                cross,
                tokenizer,
                rows,
                hindsight_texts=[
                    DEFAULT_TEMPLATE.format(text=texts[int(i)]) if texts[int(i)] else None
                    for i in batch.credit.traj_index
                ],
                target=t.target,
                placement=t.placement,
                temperature=config.sampling.temperature or 1.0,
            )
            device = batch.input_ids.device
            return logp_t.to(device), target.to(device)
        per_traj = [render_hindsight(text, tokenizer) for text in texts]
        hindsight = [per_traj[int(i)] for i in batch.credit.traj_index]
        logp_t, target = teacher_logprobs(
            model,
            rows,
            hindsight,
            target=t.target,
            placement=t.placement,
            temperature=config.sampling.temperature or 1.0,
            batch_size=config.micro_batch_size,
        )
        L = batch.input_ids.shape[1]
        if logp_t.shape[1] != L:  # rows are padded to the same longest row; guard the contract
            raise RuntimeError(f"teacher rows have length {logp_t.shape[1]} but the batch has {L}")
        device = batch.input_ids.device
        if not with_view:
            return logp_t.to(device), target.to(device)
        # one block per row: the same rows as a batch the update can run forward on (UCOB's two views)
        view = context_view(rows, hindsight, placement=t.placement, length=L, device=device)
        return logp_t.to(device), target.to(device), view

    return teacher


def _cross_tokenizer(config: TrainConfig, tokenizer: Any) -> Any | None:
    """The tokenizer of ``teacher.model`` when it differs from the policy's (rescoring by text), else ``None``."""
    name = config.teacher.model
    if name is None:
        return None
    teacher_tok = load_tokenizer(name)
    if teacher_tok.get_vocab() == tokenizer.get_vocab():
        return None
    logger.info(
        "teacher.model %r has another tokenizer (%d tokens) than the policy %r (%d): it scores the rows' text, "
        "aligned to the policy's tokens by character spans (distill/cross_tokenizer.py, [recon])",
        name,
        len(teacher_tok),
        config.model,
        len(tokenizer),
    )
    return teacher_tok


def build_teacher_model(config: TrainConfig, tokenizer: Any) -> torch.nn.Module | None:
    """The separate teacher of ``teacher.model`` (frozen, eval, on the policy's device), or ``None``.

    A teacher with another tokenizer scores the rows' text (:func:`make_teacher`; ``distill/cross_tokenizer.py``).
    """
    name = config.teacher.model
    if name is None:
        return None
    model, _ = load_model(name, dtype=config.dtype, device=resolve_device(config), seed=config.seed)
    return model.eval().requires_grad_(False)


def make_judge(config: TrainConfig, policy: Any, tokenizer: Any) -> JudgeFn:
    """The step judge of ``config.judge``: env signals, or ``policy`` answering the judge prompt (greedy)."""
    if config.judge == "oracle":
        return oracle_judge
    return llm_judge(_text_generator(policy, tokenizer, max_new_tokens=config.judge_max_tokens, seed=config.seed))


def _flat_eval(results: Mapping[str, SubsetResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, r in {**results, "avg": overall(results)}.items():
        out[f"{name}/success"] = r.success
        out[f"{name}/outcome"] = r.outcome
        if r.f1 is not None:
            out[f"{name}/f1"] = r.f1
    return out


def evaluate_model(
    config: TrainConfig,
    model: Any,
    tokenizer: Any,
    tasks: Mapping[str, Sequence[Task]],
    *,
    temperature: float,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    pool: EnvPool | None = None,
    policy: Any = None,
) -> tuple[dict[str, SubsetResult], list[Trajectory]]:
    """One episode per task with ``model`` (greedy when ``temperature == 0``), aggregated per subset.

    ``policy`` replaces the transformers policy over ``model`` (e.g. an :class:`~stepgym.agents.openai.OpenAIPolicy`
    of a served model; ``model`` is then unused and ``tokenizer`` only renders the prompts).
    """
    policy = policy if policy is not None else HFPolicy(model, tokenizer, seed=seed, engine=config.rollout.engine)
    return evaluate(
        policy,
        ChatRenderer(tokenizer),
        config.env_id,
        tasks,
        env_kwargs=_eval_env_kwargs(config),
        sampling=_sampling(config, temperature=temperature, seed=seed),
        layout=config.layout,
        max_turns=config.max_turns,
        max_prompt_tokens=config.max_prompt_tokens,
        max_total_tokens=config.max_total_tokens,
        max_action_tokens=config.max_action_tokens,
        instructions=config.instructions,
        num_envs=config.num_envs,
        backend=config.env_backend,
        seed=seed,
        pool=pool,
        progress=progress,
    )


def make_evaluator(config: TrainConfig, tokenizer: Any) -> EvalFn:
    """The loop's periodic evaluation: a fixed task sample, ``eval.temperature``; keys ``<subset>/<metric>``."""
    tasks = eval_task_ids(config)

    def evaluate_fn(model: torch.nn.Module, step: int) -> dict[str, float]:
        results, _ = evaluate_model(config, model, tokenizer, tasks, temperature=config.eval.temperature, seed=step)
        return _flat_eval(results)

    return evaluate_fn


# =========================================================================== the run
def _rollout(
    pool: EnvPool,
    policy: Any,
    renderer: ChatRenderer,
    config: TrainConfig,
    wrap: Callable[[RolloutFn], RolloutFn] | None,
    sync: EngineSync | None,
) -> RolloutFn:
    fn = make_rollout(pool, policy, renderer, config, before_generate=sync)
    return wrap(fn) if wrap is not None else fn


def _no_rollout(model: torch.nn.Module, task_ids: list[Task], seed: int) -> list[Trajectory]:
    raise RuntimeError("rollouts run on rank 0 only; train() must not call rollout on another rank")


def run_training(
    config: TrainConfig,
    *,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    wrap_rollout: Callable[[RolloutFn], RolloutFn] | None = None,
) -> RunResult:
    """Build every part from ``config`` and train; resumes from ``<output_dir>/checkpoints``.

    Args:
        config: The run.
        on_step: Called with ``(step, metrics)`` after every training step.
        should_stop: Polled after every step; ``True`` checkpoints and returns (``interrupted``).
        wrap_rollout: Wraps the rollout function (e.g. to inspect every batch of trajectories).
    """
    method = get_credit(config.credit)
    rank = global_rank()
    # everything that can fail without the model is checked before it loads (that takes minutes at scale)
    resolve_env_id(config.env_id)  # did-you-mean for a misspelt id
    if config.rollout.backend == "vllm":
        require_vllm()
    tasks = train_task_ids(config)
    model, tokenizer = build_model(config)
    renderer = ChatRenderer(tokenizer)
    sync: EngineSync | None = None
    if config.rollout.backend == "vllm" and rank == 0:
        # a separate engine: its weights are replaced in place before the first rollout and after each update
        policy: Any = build_vllm_policy(config, model, tokenizer)
        sync = EngineSync(policy)
    else:
        # the policy shares the trained module: LoRA (applied in train()) patches it in place
        policy = HFPolicy(model, tokenizer, seed=config.seed, engine=config.rollout.engine)
    # under several processes only rank 0 steps envs and generates; the loop broadcasts its trajectories
    pool = (
        EnvPool(config.env_id, config.num_envs, backend=config.env_backend, env_kwargs=config.env_kwargs)
        if rank == 0
        else None
    )
    stopped = False

    def stop() -> bool:
        nonlocal stopped
        stopped = bool(should_stop and should_stop())
        if is_distributed():  # rank 0 decides, so every rank stops at the same step
            box = [stopped]
            dist.broadcast_object_list(box, src=0)
            stopped = bool(box[0])
        return stopped

    try:
        history = train(
            config,
            model=model,
            task_ids=tasks,
            rollout=_rollout(pool, policy, renderer, config, wrap_rollout, sync) if pool is not None else _no_rollout,
            teacher=make_teacher(tokenizer, config, policy, with_view="context_view" in method.needs)
            if method.needs_teacher
            else None,
            teacher_model=build_teacher_model(config, tokenizer) if method.needs_teacher else None,
            judge=make_judge(config, policy, tokenizer) if "judge" in method.needs else None,
            evaluate=make_evaluator(config, tokenizer) if config.eval.every and rank == 0 else None,
            on_step=on_step,
            should_stop=stop,
            on_weights_updated=sync.mark_stale if sync is not None else None,
            tokenizer=tokenizer,
        )
    finally:
        if pool is not None:
            pool.close()
    out = Path(config.output_dir)
    ckpt = latest_checkpoint(out / "checkpoints")
    final = int(ckpt.name.split("-")[-1]) if ckpt is not None else 0
    seconds = float(read_checkpoint_state(ckpt).extra.get("train_seconds", 0.0)) if ckpt is not None else 0.0
    return RunResult(
        history=history, interrupted=stopped, final_step=final, checkpoint=ckpt, output_dir=out, train_seconds=seconds
    )
