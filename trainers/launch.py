"""Train from a config file, in one process or several: ``python -m stepgym.trainers.launch CONFIG.json``.

Several processes on one node (FSDP2; gloo on CPU, NCCL on GPU)::

    torchrun --nproc_per_node 2 -m stepgym.trainers.launch CONFIG.json

Every process builds the same model from the config; rank 0 steps the envs, generates the rollouts
and writes ``config.json``, ``metrics.jsonl`` and checkpoints; every rank updates its share of the
step's rows (``stepgym.trainers.grpo.train``). ``CONFIG.json`` is a ``TrainConfig`` as JSON (the
``config.json`` of an earlier run works; re-running resumes from its newest checkpoint).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from stepgym.trainers.config import load_config
from stepgym.trainers.distributed import cleanup, init_distributed
from stepgym.trainers.runner import RunResult, run_training

__all__ = ["main"]

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> RunResult:
    """Parse ``CONFIG.json [--backend gloo|nccl]``, join the process group if launched by torchrun, train."""
    parser = argparse.ArgumentParser(prog="python -m stepgym.trainers.launch", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="a TrainConfig as JSON (e.g. an earlier run's config.json)")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default=None, help="default: nccl with CUDA, else gloo")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    info = init_distributed(args.backend)
    logging.basicConfig(level=logging.INFO if info.rank == 0 else logging.WARNING)
    try:
        result = run_training(config)
    finally:
        cleanup()
    if info.rank == 0:
        logger.info("finished at step %d; checkpoint %s", result.final_step, result.checkpoint)
    return result


if __name__ == "__main__":
    main()
