"""Checkpoints that resume exactly: weights, optimizer, scheduler, every RNG, step and config.

One checkpoint is a folder ``<root>/step-00000010/`` holding

* ``model.safetensors`` -- the full (unsharded) weights;
* ``optimizer.pt`` -- optimizer and scheduler ``state_dict`` s (``torch.save``, loaded with ``weights_only``);
* ``rng.safetensors`` -- torch CPU/CUDA RNG states and any named ``torch.Generator`` s;
* ``state.json`` -- step, Python and NumPy RNG states, caller extras;
* ``config.json`` -- the resolved run config.

Writes are atomic: everything goes to ``step-XXXXXXXX.tmp-<pid>`` and the folder is renamed when
complete, so a run killed mid-save leaves the previous checkpoint as the latest one. Weights that
are not finite are refused (a NaN never reaches disk). Under ``torch.distributed`` the full state
is gathered on every rank and rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from stepgym.trainers.config import TrainConfig, save_config
from stepgym.trainers.distributed import global_rank, is_distributed

__all__ = [
    "CheckpointState",
    "capture_rng",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d{8})$")


@dataclass(frozen=True)
class CheckpointState:
    """What :func:`load_checkpoint` returns besides the restored objects."""

    step: int
    """Training steps completed when the checkpoint was written."""
    path: Path
    """The checkpoint folder."""
    extra: dict[str, object] = field(default_factory=dict)
    """JSON values the caller stored with ``save_checkpoint(extra=...)``."""


# =========================================================================== RNG
def capture_rng(generators: dict[str, torch.Generator] | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Python/NumPy states (JSON-able) and torch states (tensors) of every RNG a run draws from."""
    version, pystate, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    json_state = {
        "python": [version, list(pystate), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    for name, g in (generators or {}).items():
        tensors[f"generator_{name}"] = g.get_state()
    return json_state, tensors


def restore_rng(
    json_state: dict, tensors: dict[str, torch.Tensor], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Inverse of :func:`capture_rng`."""
    version, pystate, gauss = json_state["python"]
    random.setstate((version, tuple(pystate), gauss))
    kind, keys, pos, has_gauss, cached = json_state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    for name, g in (generators or {}).items():
        key = f"generator_{name}"
        if key not in tensors:
            raise KeyError(f"checkpoint has no state for generator {name!r}; it has {sorted(tensors)}")
        g.set_state(tensors[key])


# =========================================================================== state dicts
def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = model.state_dict()
    # clone: safetensors refuses tensors that share storage (tied embeddings)
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in sd.items()}


def _optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


# =========================================================================== save / load
def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or ``None``."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    config: TrainConfig | None = None,
    generators: dict[str, torch.Generator] | None = None,
    extra: dict[str, object] | None = None,
    keep_last: int = 3,
) -> Path | None:
    """Atomically write checkpoint ``step`` under ``root`` and delete all but the newest ``keep_last``.

    Returns:
        The checkpoint folder (``None`` on ranks other than 0).

    Raises:
        FloatingPointError: Some weight is NaN/inf; nothing is written.
    """
    from safetensors.torch import save_file

    weights = _model_state(model)  # collective under FSDP: every rank calls it
    optim = _optim_state(model, optimizer)
    if global_rank() != 0:
        return None
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(
            f"refusing to checkpoint step {step}: non-finite weights in {bad[:3]} ({len(bad)} tensors); "
            "the previous checkpoint is intact -- resume from it with a lower learning rate"
        )
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(step)})
    torch.save(
        {"optimizer": optim, "scheduler": scheduler.state_dict() if scheduler is not None else None},
        tmp / "optimizer.pt",
    )
    rng_json, rng_tensors = capture_rng(generators)
    save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(tmp / "rng.safetensors"))
    state = {"format_version": FORMAT_VERSION, "step": step, "rng": rng_json, "extra": extra or {}}
    (tmp / "state.json").write_text(json.dumps(state))
    if config is not None:
        save_config(config, tmp)
    for f in tmp.iterdir():  # data on disk before the rename makes the checkpoint visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-saving a step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    generators: dict[str, torch.Generator] | None = None,
    restore_rngs: bool = True,
) -> CheckpointState:
    """Restore a checkpoint written by :func:`save_checkpoint` into the given objects.

    ``path`` is a checkpoint folder, or a run's ``checkpoints/`` root (its newest checkpoint is used).

    Raises:
        FileNotFoundError: No checkpoint at ``path``.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "state.json").is_file():
        newest = latest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(
                f"no checkpoint at {path}: expected a step-XXXXXXXX folder with state.json, or a folder of them"
            )
        path = newest
    state = json.loads((path / "state.json").read_text())
    weights = load_file(str(path / "model.safetensors"))
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(model, weights, options=opts)
    else:
        model.load_state_dict(weights, strict=True)
    if optimizer is not None or scheduler is not None:
        blob = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        if optimizer is not None:
            if is_distributed():
                set_optimizer_state_dict(model, optimizer, blob["optimizer"], options=opts)
            else:
                optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None and blob["scheduler"] is not None:
            scheduler.load_state_dict(blob["scheduler"])
    if restore_rngs:
        restore_rng(state["rng"], load_file(str(path / "rng.safetensors")), generators)
    return CheckpointState(step=int(state["step"]), path=path, extra=state.get("extra", {}))
