"""Export a trained checkpoint as a plain Hugging Face model folder (and optionally push it to the Hub).

Every checkpoint step folder is already a Hugging Face model folder at its top (``trainers/checkpoint.py``:
LoRA folded in, value head left out); :func:`export_pretrained` copies that model (config,
generation config, tokenizer, ``model.safetensors``) without the ``training_state/`` subfolder, so
the result can be served (``vllm serve OUT``), evaluated by another harness or uploaded. A
checkpoint of the older layout (full weights with peft names) is rebuilt with
:func:`~stepgym.trainers.runner.load_checkpoint_model` and written with ``save_pretrained``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from stepgym.trainers.checkpoint import (
    TRAINING_STATE_DIR,
    CheckpointError,
    is_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    rollout_state_dict,
    verify_checkpoint,
)

__all__ = ["export_pretrained"]

logger = logging.getLogger(__name__)


def _step_folder(src: Path) -> Path:
    """``src`` itself if it is a step folder, else the newest intact checkpoint of a run or ``checkpoints/`` folder."""
    if is_checkpoint(src):
        return src
    root = src if latest_checkpoint(src) is not None else src / "checkpoints"
    candidates = list_checkpoints(root)[::-1]
    if not candidates:
        raise FileNotFoundError(
            f"no checkpoint at {src}: pass a run folder (runs/NAME), its checkpoints/ folder, or a step-* folder"
        )
    for step in candidates:
        try:
            verify_checkpoint(step)
        except CheckpointError as e:
            logger.warning("skipping checkpoint %s: %s", step, e)
            continue
        return step
    raise CheckpointError(f"no intact checkpoint under {root}")


def export_pretrained(
    src: str | Path, out: str | Path, *, push_to_hub: str | None = None, private: bool = True
) -> Path:
    """Write a merged Hugging Face model folder (LoRA folded in, value head dropped) from a checkpoint.

    Args:
        src: A run folder, its ``checkpoints/`` folder, or one ``step-*`` folder; for the first two
            the newest intact checkpoint is used.
        out: The folder to write (created; it must not hold files yet).
        push_to_hub: A Hub repository id (``user/name``) to upload ``out`` to with ``huggingface_hub``
            (needs the network and a token; created if missing).
        private: Create the Hub repository as private (only with ``push_to_hub``).

    Returns:
        ``out``, loadable with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer.from_pretrained``.

    Raises:
        FileNotFoundError: No checkpoint at ``src``.
        FileExistsError: ``out`` exists and is not empty.
    """
    src, out = Path(src), Path(out)
    step = _step_folder(src)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"export folder {out} is not empty; choose a new folder or empty it first")
    out.mkdir(parents=True, exist_ok=True)
    if (step / TRAINING_STATE_DIR).is_dir():  # the top of the step folder is the merged model already
        for f in sorted(step.iterdir()):
            if f.is_file():
                shutil.copy2(f, out / f.name)
    else:  # older layout: rebuild the trained module, fold LoRA in, drop the value head
        from stepgym.trainers.runner import load_checkpoint_model

        model, tokenizer, _ = load_checkpoint_model(step)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        weights = {k: v.detach().clone().contiguous() for k, v in rollout_state_dict(model).items()}
        base.save_pretrained(out, state_dict=weights)
        tokenizer.save_pretrained(out)
    logger.info("exported %s to %s", step, out)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(push_to_hub, private=private, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=str(out), commit_message=f"stepgym export of {step.name}")
        logger.info("pushed %s to the Hub as %s", out, push_to_hub)
    return out
