"""Several trainer processes with ``torch.distributed`` and FSDP2 (``torch.distributed.fsdp.fully_shard``).

The recipe (single node; ``torchrun --nproc-per-node N`` sets the environment):

1. :func:`init_distributed` -- NCCL on GPU, gloo on CPU; returns rank, world size and device.
2. Every rank builds the same model (same seed), then :func:`shard_model` applies ``fully_shard``
   to each decoder layer and to the root, so parameters, gradients and optimizer state are sharded
   and each layer's weights are gathered only around its own forward/backward.
3. The optimizer is built *after* sharding (over the sharded DTensor parameters).
4. Each rank takes its slice of the step's rows (:func:`shard_rows`); ``trainers.update.ppo_update``
   sums its loss normalisers over ranks, so N processes x B/N rows give the update of one process
   with B rows.
5. Checkpoints gather the full state on every rank and rank 0 writes (``trainers/checkpoint.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "cleanup",
    "full_state_dict",
    "global_rank",
    "init_distributed",
    "is_distributed",
    "is_main",
    "shard_model",
    "shard_rows",
    "world_size",
]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int
    """Global rank (0 = the process that writes files)."""
    world_size: int
    """Number of processes."""
    local_rank: int
    """Rank on this node (selects the GPU)."""
    device: torch.device
    """Where this rank's model lives."""


def init_distributed(backend: str | None = None, *, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group described by ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``.

    Without those variables (a plain ``python`` run) returns a world of one and starts nothing.
    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        for var in ("MASTER_ADDR", "MASTER_PORT"):
            if var not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun or set it")
        dist.init_process_group(
            backend or ("nccl" if cuda else "gloo"), rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is running (several trainer processes)."""
    return dist.is_available() and dist.is_initialized()


def global_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """How many trainer processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and when not distributed)."""
    return global_rank() == 0


def cleanup() -> None:
    """Leave the process group (no-op when not distributed)."""
    if is_distributed():
        dist.destroy_process_group()


def shard_model(
    model: torch.nn.Module,
    *,
    device_type: str | None = None,
    reshard_after_forward: bool = True,
    param_dtype: torch.dtype | None = None,
) -> torch.nn.Module:
    """Apply FSDP2 ``fully_shard`` to each decoder layer, then to the whole model (in place).

    Args:
        model: A causal LM whose decoder layers are ``model.model.layers`` (Qwen, Llama, ...); other
            models are sharded as one unit.
        device_type: ``"cuda"`` or ``"cpu"``; defaults to CUDA when available.
        reshard_after_forward: Free gathered layer weights after forward (ZeRO-3); ``False`` keeps
            them until backward (ZeRO-2-like, faster, more memory).
        param_dtype: Mixed-precision compute dtype (e.g. ``torch.bfloat16``); gradients are reduced in float32.

    Raises:
        RuntimeError: ``torch.distributed`` is not initialised.
    """
    if not is_distributed():
        raise RuntimeError("shard_model needs an initialised process group; call init_distributed() first")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    kwargs: dict = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in _decoder_layers(model):
        fully_shard(layer, **kwargs)
    head = model._modules.get("value_head")  # trainers.value.attach_value_head: runs outside the root forward
    if head is not None:
        fully_shard(head, **kwargs)
    fully_shard(model, **kwargs)
    return model


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """``model.model.layers`` of a causal LM, also under a peft wrapper (``base_model.model.model.layers``)."""
    for path in ("model.layers", "base_model.model.model.layers"):
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, torch.nn.ModuleList):
            return list(obj)
    return []


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) weights on CPU.

    A collective under ``torch.distributed`` (every rank must call it): rank 0 gets every tensor,
    other ranks an empty dict. Without a process group: ``model.state_dict()``.
    """
    if not is_distributed():
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def shard_rows(num_rows: int, rank: int, world_size: int) -> torch.Tensor:
    """Row indices of ``rank``'s contiguous share of ``num_rows`` (sizes differ by at most one).

    Raises:
        ValueError: Fewer rows than processes (a rank would have nothing to train on).
    """
    if num_rows < world_size:
        raise ValueError(
            f"{num_rows} rows cannot be split over {world_size} processes; raise tasks_per_step x group_size"
        )
    return torch.tensor_split(torch.arange(num_rows), world_size)[rank]
