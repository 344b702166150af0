"""One metrics interface: ``sink.log(metrics, step)``; JSONL always, TensorBoard and W&B optional.

Keys are namespaced ``<namespace>/<name>`` (``rollout/``, ``credit/``, ``loss/``, ``optim/``,
``eval/<subset>/``, ``time/``); :func:`namespaced` prefixes a dict and :func:`check_keys` rejects
bare keys. The JSONL file is the record of a run: one object per step,
``{"step": 3, "loss/policy": ..., ...}``. Opened with ``resume_step=n`` it drops lines after step
``n`` first, so a run resumed from checkpoint ``n`` writes the same file as an uninterrupted one.
TensorBoard and W&B are imported only when their sink is built.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from gymnasium.error import DependencyNotInstalled

__all__ = [
    "NAMESPACES",
    "JsonlSink",
    "MetricsSink",
    "MultiSink",
    "TensorBoardSink",
    "WandbSink",
    "check_keys",
    "make_sinks",
    "namespaced",
]

NAMESPACES = ("rollout", "credit", "loss", "optim", "eval", "time", "teacher", "system")
"""Allowed first components of a metric key."""
_KEY = re.compile(r"^[a-z_]+(/[A-Za-z0-9_.\-]+)+$")


def namespaced(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    """``{"a": 1}`` -> ``{"prefix/a": 1}``."""
    prefix = prefix.rstrip("/")
    return {f"{prefix}/{k}": float(v) for k, v in metrics.items()}


def check_keys(metrics: Mapping[str, float]) -> None:
    """Raise ``ValueError`` for a key that is not ``<namespace>/<name>`` with a known namespace."""
    for key in metrics:
        if not _KEY.match(key) or key.split("/", 1)[0] not in NAMESPACES:
            raise ValueError(
                f"metric key {key!r} is not namespaced; use '<namespace>/<name>' with namespace in {NAMESPACES} "
                "(namespaced('loss', {...}) builds such keys)"
            )


@runtime_checkable
class MetricsSink(Protocol):
    """Where scalar metrics go."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` for training step ``step``."""

    def close(self) -> None:
        """Flush and release resources."""


def _json_number(v: float) -> float | str:
    v = float(v)
    return v if math.isfinite(v) else str(v)  # "nan"/"inf" keep the line valid JSON


class JsonlSink:
    """Append one JSON object per ``log`` call to ``path`` (flushed and fsynced each time)."""

    def __init__(self, path: str | Path, *, resume_step: int | None = None) -> None:
        """Open ``path``; with ``resume_step`` first drop every line whose step is greater."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", -1) <= resume_step
            ]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        self._fh = open(self.path, "a")  # noqa: SIM115 -- held for the run

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Write ``{"step": step, **metrics}``."""
        check_keys(metrics)
        row = {"step": int(step), **{k: _json_number(v) for k, v in sorted(metrics.items())}}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    @staticmethod
    def read(path: str | Path) -> list[dict[str, float]]:
        """All rows of a metrics file."""
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


class TensorBoardSink:
    """Scalars to TensorBoard event files (needs the ``tensorboard`` package)."""

    def __init__(self, log_dir: str | Path) -> None:
        """Create a ``SummaryWriter`` in ``log_dir``."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise DependencyNotInstalled(
                f"the TensorBoard metrics sink needs tensorboard ({e}); `pip install tensorboard` "
                "or drop 'tensorboard' from metric_sinks"
            ) from e
        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Add every scalar."""
        check_keys(metrics)
        for k, v in metrics.items():
            self._writer.add_scalar(k, float(v), global_step=step)

    def close(self) -> None:
        """Flush and close."""
        self._writer.close()


class WandbSink:
    """Scalars to Weights & Biases (needs ``wandb``; honours ``WANDB_MODE=offline``)."""

    def __init__(self, *, project: str, name: str | None = None, config: Mapping[str, object] | None = None) -> None:
        """Start a W&B run."""
        try:
            import wandb
        except ImportError as e:
            raise DependencyNotInstalled(
                f"the W&B metrics sink needs wandb ({e}); `pip install wandb` or drop 'wandb' from metric_sinks"
            ) from e
        self._run = wandb.init(project=project, name=name, config=dict(config or {}))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Log every scalar at ``step``."""
        check_keys(metrics)
        self._run.log(dict(metrics), step=step)

    def close(self) -> None:
        """Finish the run."""
        self._run.finish()


class MultiSink:
    """Fan one ``log`` out to several sinks."""

    def __init__(self, sinks: Sequence[MetricsSink]) -> None:
        """Wrap ``sinks``."""
        self.sinks = list(sinks)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Log to every sink."""
        for s in self.sinks:
            s.log(metrics, step)

    def close(self) -> None:
        """Close every sink."""
        for s in self.sinks:
            s.close()


def make_sinks(
    output_dir: str | Path,
    kinds: Sequence[str] = ("jsonl",),
    *,
    resume_step: int | None = None,
    run_name: str | None = None,
    config: Mapping[str, object] | None = None,
) -> MultiSink:
    """The sinks of a run: ``metrics.jsonl`` always, plus ``tensorboard`` / ``wandb`` when asked."""
    out = Path(output_dir)
    sinks: list[MetricsSink] = [JsonlSink(out / "metrics.jsonl", resume_step=resume_step)]
    for kind in kinds:
        if kind == "jsonl":
            continue
        if kind == "tensorboard":
            sinks.append(TensorBoardSink(out / "tensorboard"))
        elif kind == "wandb":
            sinks.append(WandbSink(project="stepgym", name=run_name or out.name, config=config))
        else:
            raise ValueError(f"unknown metrics sink {kind!r}; use 'jsonl', 'tensorboard' or 'wandb'")
    return MultiSink(sinks)
