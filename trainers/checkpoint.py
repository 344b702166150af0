"""Checkpoints that resume exactly and load as Hugging Face models.

One checkpoint is a folder ``<root>/step-00000010/`` that is a Hugging Face model folder at its top,
so ``AutoModelForCausalLM.from_pretrained(step_dir)`` and ``AutoTokenizer.from_pretrained(step_dir)``
load it with nothing else (``vllm serve step_dir`` too):

* ``config.json``, ``generation_config.json`` -- the causal LM's own configs;
* ``model.safetensors`` -- its weights under Hugging Face names, LoRA adapters folded in
  (:func:`rollout_state_dict`), StepPO's value head left out;
* tokenizer files, when the trainer was given the tokenizer;
* ``training_state/`` -- everything else a resume needs:

  * ``state.json`` -- step, Python/NumPy RNG states, caller extras (training wall time, teacher
    step), and a manifest of every other file with its size (written last: it seals the folder);
  * ``config.json`` -- the resolved ``TrainConfig``;
  * ``optimizer.pt`` -- optimizer and scheduler ``state_dict`` s (``torch.save``, loaded with ``weights_only``);
  * ``rng.safetensors`` -- torch CPU/CUDA RNG states and any named ``torch.Generator`` s;
  * ``policy.safetensors`` -- the trained module's tensors that ``model.safetensors`` does not hold
    as they are: the value head and, under LoRA, the unmerged adapters (the frozen base comes from
    ``TrainConfig.model`` again);
  * ``<name>.safetensors`` -- further frozen modules the loop keeps (the teacher snapshot, the KL
    reference): all their weights, or only adapters and value head under LoRA.

Writes are atomic: everything goes to ``step-XXXXXXXX.tmp-<pid>`` and the folder is renamed when
complete, so a run killed mid-save leaves the previous checkpoint as the latest one. Loading verifies
the manifest and every safetensors header first; :func:`load_checkpoint` on a folder of checkpoints
falls back to the newest intact one with a warning naming each bad folder. Weights that are not
finite are refused (a NaN never reaches disk). Under ``torch.distributed`` the full state is gathered
on every rank and rank 0 writes. Checkpoints of the older layout (``state.json`` and the full weights
at the top of the step folder) still load.
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
from typing import Any

import numpy as np
import torch
from stepgym.trainers.config import CONFIG_FILENAME, TRAINING_STATE_DIR, TrainConfig, save_config
from stepgym.trainers.distributed import global_rank, is_distributed
from stepgym.trainers.value import VALUE_HEAD_NAME

__all__ = [
    "TRAINING_STATE_DIR",
    "CheckpointError",
    "CheckpointMismatchError",
    "CheckpointState",
    "capture_rng",
    "is_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_checkpoint_state",
    "restore_rng",
    "rollout_state_dict",
    "save_checkpoint",
    "train_config_path",
    "verify_checkpoint",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_POLICY_FILE = "policy.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint folder is incomplete or corrupt (the message names the folder and the file)."""


class CheckpointMismatchError(RuntimeError):
    """An intact checkpoint does not fit the model it is loaded into (no fallback: older ones would not fit either)."""


@dataclass(frozen=True)
class CheckpointState:
    """What :func:`load_checkpoint` returns besides the restored objects."""

    step: int
    """Training steps completed when the checkpoint was written."""
    path: Path
    """The checkpoint folder."""
    extra: dict[str, object] = field(default_factory=dict)
    """JSON values the caller stored with ``save_checkpoint(extra=...)``."""
    modules: tuple[str, ...] = ()
    """Names of the extra modules (``save_checkpoint(modules=...)``) that were restored."""
    skipped: tuple[Path, ...] = ()
    """Newer checkpoint folders that failed verification and were passed over (newest first)."""


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
def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "get_base_model")


def _cpu(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied embeddings)
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in sd.items()}


def _model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = model.state_dict()
    return _cpu(sd)


def _own_tensors(sd: dict[str, torch.Tensor], peft: bool) -> dict[str, torch.Tensor]:
    """The tensors a checkpoint must hold for a module besides its HF weights: value head, LoRA adapters."""
    return {k: v for k, v in sd.items() if k.startswith(f"{VALUE_HEAD_NAME}.") or (peft and ".lora_" in k)}


def _base_fingerprint(full: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> list[float]:
    """Per-tensor float64 sums of the frozen base weights (LoRA): cheap, and enough to tell two bases apart."""
    return [float(full[k].double().sum()) for k in sorted(full) if k not in own]


def _optim_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def rollout_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The causal LM's weights under Hugging Face names, as ``from_pretrained`` or a rollout engine loads them.

    LoRA adapters (peft) are folded into their base weights without touching the model
    (``W + scale * B @ A`` per active adapter, peft's ``get_delta_weight``), and StepPO's critic head is
    left out. Tensors are returned as they are (same device and dtype; merged ones are new tensors).
    """
    base = model.get_base_model() if _is_peft(model) else model
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, tensor in base.state_dict().items():
            if name.startswith(f"{VALUE_HEAD_NAME}.") or ".lora_" in name:
                continue
            out[name.replace(".base_layer.", ".")] = tensor
        for name, module in base.named_modules():
            if not (hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")):
                continue
            if getattr(module, "merged", False):  # already folded into base_layer.weight
                continue
            weight = module.base_layer.weight
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            out[f"{name}.weight"] = weight
    return out


def _untie(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop every tensor that is a view of an earlier one (tied embeddings); returns ``(kept, {dropped: kept_name})``.

    As ``save_pretrained`` does: the file holds ``model.embed_tokens.weight`` once and
    ``from_pretrained`` re-ties ``lm_head.weight`` from the model config.
    """
    first: dict[tuple, str] = {}
    kept: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}
    for k, v in sd.items():
        where = (v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()))
        if v.numel() and where in first:
            tied[k] = first[where]
            continue
        first.setdefault(where, k)
        kept[k] = v
    return kept, tied


def _check_finite(tensors: dict[str, torch.Tensor], step: int) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise FloatingPointError(
            f"refusing to checkpoint step {step}: non-finite weights in {bad[:3]} ({len(bad)} tensors); "
            "the previous checkpoint is intact -- resume from it with a lower learning rate"
        )


# =========================================================================== listing
def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (not verified; :func:`load_checkpoint` verifies), or ``None``."""
    found = list_checkpoints(root)
    return found[-1] if found else None


def _state_file(path: Path) -> Path | None:
    for f in (path / TRAINING_STATE_DIR / "state.json", path / "state.json"):  # this layout, then the older one
        if f.is_file():
            return f
    return None


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is one checkpoint's step folder (this layout or the older one)."""
    return _state_file(Path(path)) is not None


def train_config_path(path: str | Path) -> Path:
    """The ``TrainConfig`` file of a step folder (``training_state/config.json``; older layout: ``config.json``)."""
    path = Path(path)
    new = path / TRAINING_STATE_DIR / CONFIG_FILENAME
    return new if new.is_file() or not (path / "state.json").is_file() else path / CONFIG_FILENAME


# =========================================================================== save
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
    keep_last: int = 2,
    tokenizer: Any = None,
    modules: dict[str, torch.nn.Module] | None = None,
    export_model: torch.nn.Module | None = None,
) -> Path | None:
    """Atomically write checkpoint ``step`` under ``root`` and delete all but the newest ``keep_last``.

    Args:
        root: The run's ``checkpoints/`` folder.
        step: Training steps completed.
        model: The trained module (a causal LM, maybe peft-wrapped, maybe with a value head, maybe sharded).
        optimizer: Its optimizer.
        scheduler: Its learning-rate scheduler.
        config: The run config (``training_state/config.json``).
        generators: Named ``torch.Generator`` s whose states come back on load.
        extra: JSON values returned by :func:`load_checkpoint` as ``CheckpointState.extra``.
        keep_last: Checkpoints kept under ``root``.
        tokenizer: Saved at the top of the folder (``save_pretrained``) so it loads with ``AutoTokenizer``.
        modules: Further modules to restore exactly on load (teacher snapshot, KL reference).
        export_model: An unsharded module with the same weights as ``model`` to take the Hugging Face
            weights from (the loop's rollout replica on rank 0); needed for a sharded LoRA model.

    Returns:
        The checkpoint folder (``None`` on ranks other than 0).

    Raises:
        FloatingPointError: Some weight is NaN/inf; nothing is written.
    """
    from safetensors.torch import save_file

    # collectives under FSDP: every rank gathers the full states
    full = _model_state(model)
    own = _own_tensors(full, _is_peft(model))
    optim = _optim_state(model, optimizer)
    saved_modules = {}
    for name, module in (modules or {}).items():
        sd = _model_state(module)
        saved_modules[name] = (_own_tensors(sd, True) if _is_peft(module) else sd, _is_peft(module))
    if global_rank() != 0:
        return None
    if export_model is None and not is_distributed():
        export_model = model
    tied: dict[str, str] = {}
    if export_model is not None:
        hf, tied = _untie(rollout_state_dict(export_model))
        hf = _cpu(hf)
    elif not _is_peft(model):  # sharded, no LoRA: the gathered weights already have the HF names
        hf = {k: v for k, v in full.items() if k not in own}
        export_model = model
    else:
        raise ValueError(
            "save_checkpoint of a sharded LoRA model needs export_model= (rank 0's unsharded replica) to fold "
            "the adapters into the Hugging Face weights"
        )
    _check_finite({**hf, **own}, step)

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    state_dir = tmp / TRAINING_STATE_DIR
    state_dir.mkdir(parents=True)
    # ---- the Hugging Face model folder
    base = export_model.get_base_model() if _is_peft(export_model) else export_model
    base.config.save_pretrained(tmp)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    save_file(hf, str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(step)})
    # ---- the training state
    save_file(own, str(state_dir / _POLICY_FILE), metadata={"format": "pt"})
    for name, (tensors, _) in saved_modules.items():
        save_file(tensors, str(state_dir / f"{name}.safetensors"), metadata={"format": "pt"})
    torch.save(
        {"optimizer": optim, "scheduler": scheduler.state_dict() if scheduler is not None else None},
        state_dir / "optimizer.pt",
    )
    rng_json, rng_tensors = capture_rng(generators)
    save_file({k: v.contiguous() for k, v in rng_tensors.items()}, str(state_dir / "rng.safetensors"))
    if config is not None:
        save_config(config, state_dir)
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    state = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "rng": rng_json,
        "extra": extra or {},
        # LoRA: policy.safetensors holds only the adapters, the frozen base is TrainConfig.model's
        "policy_partial": _is_peft(model),
        "tied": tied,  # left out of model.safetensors: dropped name -> the name it shares storage with
        "base_fingerprint": _base_fingerprint(full, own) if _is_peft(model) else None,
        "modules": {name: {"partial": partial} for name, (_, partial) in saved_modules.items()},
        "files": {str(p.relative_to(tmp)): p.stat().st_size for p in files},
    }
    (state_dir / "state.json").write_text(json.dumps(state))
    for f in [*files, state_dir / "state.json"]:  # data on disk before the rename makes the checkpoint visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-saving a step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    logger.info("saved checkpoint %s", final)
    return final


# =========================================================================== verify / load
def _read_state(path: Path) -> dict:
    state_file = _state_file(path)
    if state_file is None:
        raise CheckpointError(
            f"{path} is not a checkpoint: it has no {TRAINING_STATE_DIR}/state.json (written last, so a save "
            "that was cut short leaves none)"
        )
    try:
        return json.loads(state_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path}: {state_file.name} is unreadable ({e})") from e


def read_checkpoint_state(path: str | Path) -> CheckpointState:
    """Step and extras of the checkpoint folder ``path`` without loading anything else."""
    path = Path(path)
    state = _read_state(path)
    return CheckpointState(step=int(state["step"]), path=path, extra=state.get("extra", {}))


def verify_checkpoint(path: str | Path) -> None:
    """Check that every file of checkpoint ``path`` is present with its recorded size and parses.

    JSON files must parse (whatever their size: the ``TrainConfig`` may be edited by hand). Cheap:
    safetensors headers are parsed but no tensor is read, so a bit flip inside a tensor is not detected.

    Raises:
        CheckpointError: What is wrong, naming the folder and the file.
    """
    from safetensors import safe_open

    path = Path(path)
    state = _read_state(path)
    if "files" in state:
        expected = state["files"]
    else:  # older layout: no manifest
        expected = {name: None for name in ("model.safetensors", "optimizer.pt", "rng.safetensors")}
    for rel, size in expected.items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {rel} is missing")
        if rel.endswith(".json"):  # may be edited by hand (the TrainConfig): it must parse, whatever its size
            try:
                json.loads(f.read_text())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"checkpoint {path} is corrupt: {rel} is not valid JSON ({e})") from e
        elif size is not None and f.stat().st_size != size:
            raise CheckpointError(
                f"checkpoint {path} is corrupt: {rel} has {f.stat().st_size} bytes, {size} were written"
            )
        if rel.endswith(".safetensors"):
            try:
                with safe_open(str(f), framework="pt") as fh:
                    fh.keys()
            except Exception as e:  # safetensors raises its own SafetensorError (and OSError)
                raise CheckpointError(f"checkpoint {path} is corrupt: {rel} does not parse ({e})") from e


def _load_tensors(path: Path, rel: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path / rel))
    except Exception as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: {rel} does not load ({e})") from e


def _load_weights(module: torch.nn.Module, tensors: dict[str, torch.Tensor], *, partial: bool, what: str) -> None:
    """Load ``tensors`` into ``module``; ``partial``: the rest (a LoRA model's frozen base) stays as it is."""
    if is_distributed():
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        full = _model_state(module) if partial else {}
        unexpected = sorted(set(tensors) - set(full)) if partial else []
        full.update(tensors)
        if unexpected:
            raise CheckpointMismatchError(f"{what} holds tensors the model does not have: {unexpected[:3]}")
        set_model_state_dict(module, full, options=StateDictOptions(full_state_dict=True))
        return
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    lost = [k for k in missing if not partial or k in trainable]
    if unexpected or lost:
        raise CheckpointMismatchError(
            f"{what} does not match the model: missing {lost[:3]}, unexpected {unexpected[:3]}; was it written "
            "by a run with another model, LoRA setting or credit method (StepPO adds a value head)?"
        )


def _load_one(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    generators: dict[str, torch.Generator] | None,
    modules: dict[str, torch.nn.Module],
    restore_rngs: bool,
) -> CheckpointState:
    verify_checkpoint(path)
    state = _read_state(path)
    new = "files" in state
    sdir = path / TRAINING_STATE_DIR if new else path
    restored: list[str] = []
    if new:
        own = _load_tensors(path, f"{TRAINING_STATE_DIR}/{_POLICY_FILE}")
        partial = bool(state["policy_partial"])
        if partial:
            weights = own
        else:
            weights = {**_load_tensors(path, "model.safetensors"), **own}
            for dropped, kept in state.get("tied", {}).items():
                weights[dropped] = weights[kept]
        if partial and state.get("base_fingerprint") != _base_fingerprint(_model_state(model), own):
            raise CheckpointMismatchError(
                f"checkpoint {path} holds LoRA adapters trained on another base model than the one given; "
                "load it into the model named by its TrainConfig (training_state/config.json)"
            )
        _load_weights(model, weights, partial=partial, what=f"checkpoint {path}")
        for name, module in modules.items():
            if name in state["modules"]:
                tensors = _load_tensors(path, f"{TRAINING_STATE_DIR}/{name}.safetensors")
                partial = bool(state["modules"][name]["partial"])
                _load_weights(module, tensors, partial=partial, what=f"checkpoint {path} ({name})")
                restored.append(name)
    else:  # older layout: the full state dict (peft names, value head included) at the top
        _load_weights(model, _load_tensors(path, "model.safetensors"), partial=False, what=f"checkpoint {path}")
    if optimizer is not None or scheduler is not None:
        try:
            blob = torch.load(sdir / "optimizer.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"checkpoint {path} is corrupt: optimizer.pt does not load ({e})") from e
        if optimizer is not None:
            if is_distributed():
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                opts = StateDictOptions(full_state_dict=True)
                set_optimizer_state_dict(model, optimizer, blob["optimizer"], options=opts)
            else:
                optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None and blob["scheduler"] is not None:
            scheduler.load_state_dict(blob["scheduler"])
    if restore_rngs:
        rel = f"{TRAINING_STATE_DIR}/rng.safetensors" if new else "rng.safetensors"
        restore_rng(state["rng"], _load_tensors(path, rel), generators)
    return CheckpointState(step=int(state["step"]), path=path, extra=state.get("extra", {}), modules=tuple(restored))


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    generators: dict[str, torch.Generator] | None = None,
    restore_rngs: bool = True,
    modules: dict[str, torch.nn.Module] | None = None,
) -> CheckpointState:
    """Verify and restore a checkpoint written by :func:`save_checkpoint` into the given objects.

    ``path`` is a checkpoint folder, or a run's ``checkpoints/`` root: then the newest checkpoint that
    verifies and loads is used, and every newer one that does not is logged as a warning naming the
    folder and listed in ``CheckpointState.skipped``. ``modules`` are restored when the checkpoint has
    them (see ``CheckpointState.modules``).

    Raises:
        FileNotFoundError: No checkpoint at ``path``.
        CheckpointError: The checkpoint folder ``path`` (or, for a root, every checkpoint in it) is
            incomplete or corrupt.
        CheckpointMismatchError: The checkpoint was written for another model, LoRA setting or method.
    """
    path = Path(path)
    modules = modules or {}
    args = (model, optimizer, scheduler, generators, modules, restore_rngs)
    if is_checkpoint(path) or (path.name.startswith("step-") and path.is_dir()):
        return _load_one(path, *args)
    candidates = list_checkpoints(path)[::-1]
    if not candidates:
        raise FileNotFoundError(
            f"no checkpoint at {path}: expected a step-XXXXXXXX folder with {TRAINING_STATE_DIR}/state.json, "
            "or a folder of them"
        )
    skipped: list[Path] = []
    errors: list[str] = []
    for candidate in candidates:
        try:
            state = _load_one(candidate, *args)
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s", candidate, e)
            skipped.append(candidate)
            errors.append(str(e))
            continue
        if skipped:
            logger.warning(
                "resuming from %s, the newest intact checkpoint; passed over %s", candidate, [str(p) for p in skipped]
            )
        return CheckpointState(state.step, state.path, state.extra, state.modules, tuple(skipped))
    raise CheckpointError(f"no intact checkpoint under {path}: " + "; ".join(errors))
