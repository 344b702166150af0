"""Reports of the main job: per-subset tables over seeds, results.json, curves.png, provenance.

Everything here is plain data in, files out; nothing trains or evaluates. A result of one seed is
``{split: {subset: SubsetResult-dict}}``; :func:`aggregate` turns several seeds into mean and std
per subset plus the unweighted average over subsets (the papers' "avg" column).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from stepgym.trainers.presets import env_attribute

__all__ = [
    "aggregate",
    "comparison_table",
    "data_fingerprint",
    "git_commit",
    "hardware",
    "metric_name",
    "paired_bootstrap_ci",
    "plot_curves",
    "plot_stage_curve",
    "read_metrics",
    "render_episode",
    "results_table",
    "stage_table",
    "write_json",
    "write_samples",
]

REPO = Path(__file__).resolve().parent.parent
"""The checkout this module runs from (an editable install); outside a git checkout the commit is ``None``."""
AVG = "avg"


# =========================================================================== provenance
def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout (``None`` values outside a git checkout)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware() -> dict[str, Any]:
    """CPU, cores, RAM, accelerator and library versions of this machine."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": platform.platform(),
    }
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        info["ram_gib"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["gpus"] = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available()
            else []
        )
    except ImportError:
        info["torch"] = None
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def data_fingerprint(env_id: str, env_kwargs: Mapping[str, Any], task_ids: Iterable[str | int]) -> dict[str, Any]:
    """Content hashes of the data behind a run: the task id list and the files those tasks read.

    Search-QA: every ``questions.jsonl`` and ``corpus.jsonl``; ALFWorld: the game file of each task;
    other envs: the task ids only (their tasks are generated from seeds).
    """
    ids = sorted(str(t) for t in task_ids)  # reset seeds of an env without task ids, too
    out: dict[str, Any] = {
        "tasks": len(ids),
        "task_ids_sha256": hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16],
    }
    files: list[Path] = []
    try:
        from stepgym.envs.data import resolve_data_dir

        if env_id == "stepgym/SearchQA-v0":
            root = resolve_data_dir(env_kwargs.get("data_dir"), "searchqa")
            files = sorted(root.glob("*/questions.jsonl")) + [root / "corpus.jsonl"]
            out["data_dir"] = str(root)
        elif env_id == "stepgym/ALFWorld-v0":
            root = resolve_data_dir(env_kwargs.get("data_dir"), "alfworld")
            files = [root / "json_2.1.1" / t / "game.tw-pddl" for t in ids]
            out["data_dir"] = str(root)
    except Exception as e:  # noqa: BLE001 - provenance must not fail a finished run
        out["error"] = f"{type(e).__name__}: {e}"
    if files:
        h = hashlib.sha256()
        for f in files:
            if f.is_file():
                h.update(f"{f.name}:{_file_sha(f)}\n".encode())
        out["files"] = len(files)
        out["files_sha256"] = h.hexdigest()[:16]
    return out


# =========================================================================== aggregation
def metric_name(env_id: str) -> str:
    """The headline metric's column name: the env's ``headline_metric`` attribute (``"success"`` if none)."""
    return str(env_attribute(env_id, "headline_metric", "success"))


def aggregate(per_seed: Sequence[Mapping[str, Mapping[str, Mapping[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Mean and std over seeds of every subset's success, per split, plus the average over subsets.

    Args:
        per_seed: One ``{split: {subset: SubsetResult.to_dict()}}`` per seed (subset ``avg`` is ignored:
            it is recomputed as the unweighted mean over subsets of each seed).

    Returns:
        ``{split: {subset: {"mean", "std", "n", "seeds", "values", "f1_mean"}}}`` with ``avg`` last.
    """
    from stepgym.trainers.evaluate import mean_std  # here: the CLI imports this module before any env or agent

    out: dict[str, dict[str, Any]] = {}
    splits = list(dict.fromkeys(s for seed in per_seed for s in seed))
    for split in splits:
        subsets = list(dict.fromkeys(k for seed in per_seed for k in seed.get(split, {}) if k != AVG))
        rows: dict[str, Any] = {}
        seed_avgs: list[float] = []
        for seed in per_seed:
            res = {k: v for k, v in seed.get(split, {}).items() if k != AVG}
            if res:
                seed_avgs.append(sum(float(v["success"]) for v in res.values()) / len(res))
        for sub in subsets:
            vals = [float(seed[split][sub]["success"]) for seed in per_seed if sub in seed.get(split, {})]
            f1s = [
                float(seed[split][sub]["f1"])
                for seed in per_seed
                if sub in seed.get(split, {}) and seed[split][sub].get("f1") is not None
            ]
            ns = [int(seed[split][sub]["n"]) for seed in per_seed if sub in seed.get(split, {})]
            m, s = mean_std(vals)
            rows[sub] = {
                "mean": m,
                "std": s,
                "n": ns[0] if len(set(ns)) == 1 else ns,
                "seeds": len(vals),
                "values": vals,
                "f1_mean": mean_std(f1s)[0] if f1s else None,
            }
        m, s = mean_std(seed_avgs)
        rows[AVG] = {
            "mean": m,
            "std": s,
            "n": sum(r["n"] if isinstance(r["n"], int) else r["n"][0] for r in rows.values()),
            "seeds": len(seed_avgs),
            "values": seed_avgs,
            "f1_mean": None,
        }
        out[split] = rows
    return out


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def results_table(agg: Mapping[str, Mapping[str, Any]], metric: str) -> str:
    """Markdown table: a row per subset (``avg`` last when there are several), a ``metric %`` and ``n`` column a split.

    Values are percentages; ``n`` is episodes per seed (the average row: summed over subsets).
    """
    splits = list(agg)
    subsets = list(dict.fromkeys(k for s in splits for k in agg[s] if k != AVG))
    subsets += [AVG] if len(subsets) != 1 else []  # an env without subsets: its one row is the result
    seeds = max((r["seeds"] for s in splits for r in agg[s].values()), default=0)
    head = ["subset"]
    for s in splits:
        head += [f"{s} {metric} % (mean ± std, {seeds} seed{'s' if seeds != 1 else ''})", f"{s} n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sub in subsets:
        row = [f"**{sub}**" if sub == AVG else sub]
        for s in splits:
            r = agg[s].get(sub)
            if r is None:
                row += ["-", "-"]
            else:
                row += [f"{_pct(r['mean'])} ± {_pct(r['std'])}", str(r["n"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(results: Mapping[str, Mapping[str, Mapping[str, Mapping[str, Any]]]], metric: str) -> str:
    """Markdown comparison of several evaluations (``--eval-only``): one column per evaluation.

    Args:
        results: ``{column label: {split: {subset: SubsetResult-dict}}}`` (e.g. ``"step-2 greedy"``).
        metric: Headline metric name for the caption.
    """
    labels = list(results)
    splits = list(dict.fromkeys(s for lab in labels for s in results[lab]))
    head = ["split", "subset", *(f"{lab} {metric} %" for lab in labels), "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for split in splits:
        subsets = list(dict.fromkeys(k for lab in labels for k in results[lab].get(split, {}) if k != AVG))
        for sub in [*subsets, AVG]:
            cells, n = [], "-"
            for lab in labels:
                res = {k: v for k, v in results[lab].get(split, {}).items() if k != AVG}
                if sub == AVG:
                    val = sum(float(v["success"]) for v in res.values()) / len(res) if res else math.nan
                    n = str(sum(int(v["n"]) for v in res.values()))
                else:
                    val = float(res[sub]["success"]) if sub in res else math.nan
                    n = str(res[sub]["n"]) if sub in res else n
                cells.append(_pct(val))
            name = f"**{sub}**" if sub == AVG else sub
            lines.append("| " + " | ".join([split, name, *cells, n]) + " |")
    return "\n".join(lines) + "\n"


# =========================================================================== files
def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN written as ``null``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl`` (an absent file gives ``[]``)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path, *, title: str = "") -> Path | None:
    """Reward and success vs training step (one thin line per seed, their mean thick), as a PNG.

    Args:
        runs: ``{seed label: metrics rows}`` (from :func:`read_metrics`).
        path: Output PNG.
        title: Figure title.

    Returns:
        The PNG path, or ``None`` when no run has a logged step.
    """
    if not any(runs.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("rollout/score", "reward (trajectory score)"), ("rollout/success", "success (training rollouts)")]
    # the recipe's diagnostics, where the rollouts logged them (issue 16): is the model writing valid steps,
    # how much does it write, and do its groups have mixed outcomes (GRPO learns nothing from all-equal ones)
    for key, label in (
        ("rollout/invalid_action_rate", "invalid-step share"),
        ("rollout/response_tokens", "response length (tokens / episode)"),
        ("rollout/all_equal_groups", "all-equal groups share"),
    ):
        if any(key in r for rows in runs.values() for r in rows):
            panels.append((key, label))
    eval_keys = sorted({k for rows in runs.values() for r in rows for k in r if k.startswith("eval/")})
    eval_success = [k for k in eval_keys if k.endswith("/success")]
    n_axes = len(panels) + bool(eval_success)
    fig, axes = plt.subplots(1, n_axes, figsize=(4.2 * n_axes, 3.2), dpi=80)
    for ax, (key, label) in zip(axes, panels, strict=False):
        _plot_key(ax, runs, key)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
    if eval_success:
        ax = axes[-1]
        for key in eval_success:
            _plot_key(ax, runs, key, label=key.split("/")[1], per_seed=False)
        ax.set_title("eval success per subset", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_figure(fig, path)


def _plot_key(
    ax: Any,
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    key: str,
    *,
    label: str | None = None,
    per_seed: bool = True,
) -> None:
    by_step: dict[int, list[float]] = {}
    for _name, rows in runs.items():
        pts = [(int(r["step"]), float(r[key])) for r in rows if isinstance(r.get(key), (int, float))]
        if not pts:
            continue
        for s, v in pts:
            by_step.setdefault(s, []).append(v)
        if per_seed and len(runs) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8, alpha=0.4, marker=".", label=None)
    if by_step:
        steps = sorted(by_step)
        ax.plot(steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], lw=2, marker="o", label=label)
    ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# =========================================================================== the recipe's report (issue 16)
def stage_table(stages: Mapping[str, Mapping[str, Mapping[str, Any]]], metric: str) -> str:
    """Markdown table: a row per subset (``avg`` last), one column per stage (e.g. *before training*, *after training*).

    Args:
        stages: ``{stage label: {subset: aggregate row}}`` (one split of :func:`aggregate` per stage).
        metric: Headline metric name for the header.
    """
    labels = list(stages)
    subsets = list(dict.fromkeys(k for lab in labels for k in stages[lab] if k != AVG))
    subsets += [AVG] if len(subsets) != 1 else []
    seeds = max((r["seeds"] for lab in labels for r in stages[lab].values()), default=0)
    spread = seeds > 1
    head = ["subset", *(f"{lab} {metric} %" + (" (mean ± std)" if spread else "") for lab in labels), "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sub in subsets:
        row = [f"**{sub}**" if sub == AVG else sub]
        n = "-"
        for lab in labels:
            r = stages[lab].get(sub)
            if r is None:
                row.append("-")
                continue
            row.append(f"{_pct(r['mean'])} ± {_pct(r['std'])}" if spread else _pct(r["mean"]))
            n = str(r["n"])
        lines.append("| " + " | ".join([*row, n]) + " |")
    return "\n".join(lines) + "\n"


def render_episode(traj: Any, metric: str = "success") -> str:
    """One episode as Markdown: what the agent saw, what it wrote, what the env answered, the outcome.

    Each step shows the observation before the action (the first one is the task) and the model's raw
    text, marked when the env found no valid action in it -- the first thing to read when a run fails.
    """
    lines = [
        f"### {traj.task_id} -- {metric} {traj.outcome:g} ({'success' if traj.success else 'failure'}"
        f"{', truncated' if traj.truncated else ''}), {traj.num_steps} step(s)",
        "",
    ]
    for st in traj.steps:
        lines += [f"**observation {st.index}**", "", "```text", st.observation.strip(), "```", ""]
        flag = "" if st.valid else " -- INVALID (no parsable action)"
        lines += [f"**model, step {st.index}**{flag}", "", "```text", st.action_text, "```", ""]
    return "\n".join(lines)


def write_samples(folder: str | Path, trajectories: Sequence[Any], *, per_subset: int, metric: str) -> list[Path]:
    """``folder/<subset>.md`` with the first ``per_subset`` episodes of each subset (in the given order)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    by: dict[str, list[Any]] = {}
    for t in trajectories:
        by.setdefault(str(t.subset or "all"), []).append(t)
    paths = []
    for subset, trajs in by.items():
        chosen = trajs[:per_subset]
        won = sum(t.success for t in trajs)
        text = [f"# {subset}: {len(chosen)} of {len(trajs)} evaluated episodes ({won} successful)", ""]
        text += [render_episode(t, metric) for t in chosen]
        path = folder / f"{subset.replace('/', '_')}.md"
        path.write_text("\n".join(text))
        paths.append(path)
    return paths


def plot_stage_curve(
    points: Sequence[tuple[int, str, Mapping[str, float]]], path: str | Path, *, metric: str, title: str = ""
) -> Path | None:
    """Held-out evaluation through the recipe: x = 0 base model, 1 after SFT, 1 + t after RL step t.

    Args:
        points: ``(x, series, {subset: value})`` per evaluation, values as fractions (means over seeds);
            ``series`` groups points into lines (``"greedy"``, ``"periodic"``...). The ``avg`` key is drawn thick.
        path: Output PNG.
        metric: Headline metric name (y label).
        title: Figure title.

    Returns:
        The PNG path, or ``None`` when there is no point.
    """
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    for series in dict.fromkeys(p[1] for p in points):
        pts = sorted((p for p in points if p[1] == series), key=lambda p: p[0])
        style = "-" if series == "greedy" else ":"
        subsets = list(dict.fromkeys(k for p in pts for k in p[2]))
        for sub in subsets:
            xy = [(x, 100 * v[sub]) for x, _, v in pts if sub in v]
            thick = sub == AVG
            label = sub if series == "greedy" else f"{sub} ({series})"
            xs, ys = [a for a, _ in xy], [b for _, b in xy]
            ax.plot(xs, ys, style, marker="o", lw=2.4 if thick else 0.9, alpha=1.0 if thick else 0.6, label=label)
    ax.axvline(1, color="grey", lw=0.8, ls="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: {0: "base", 1: "SFT"}.get(int(x), f"RL {int(x) - 1}")))
    ax.set_xlabel("stage (base model, after SFT, after RL step t)")
    ax.set_ylabel(f"held-out {metric} %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(fig, path)


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], *, n_boot: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired items and its percentile bootstrap CI (Efron & Tibshirani 1993, ch. 13).

    Pairs (e.g. the same question and seed, evaluated after RL and after SFT) are resampled with
    replacement ``n_boot`` times; the CI is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
    the resampled means.

    Raises:
        ValueError: ``a`` and ``b`` differ in length or are empty.
    """
    import numpy as np

    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need equal, non-zero lengths; got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # [N]
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)  # [n_boot]
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


def _save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close ``fig``; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
