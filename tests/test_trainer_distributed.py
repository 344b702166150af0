"""FSDP2 on CPU with gloo: 2 processes x 4 rows give the update of 1 process x 8 rows."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from stepgym.trainers.batch import collate
from stepgym.trainers.config import LossConfig
from stepgym.trainers.credit import get_credit
from stepgym.trainers.update import UpdateInputs, compute_logprobs, ppo_update
from trainer_helpers import random_trajectories, tiny_model

LOSS = LossConfig(aggregation="seq-mean-token-mean", kl_coef=0.05, reference="initial", entropy_coef=0.01)
# Tolerance: SGD with lr=1 makes the parameter change equal the gradient (|delta| up to ~0.1);
# the 2-process gradient is a sum of two partial sums reduced by gloo, so it differs from the
# 1-process one only by float32 summation order: atol 2e-6, rtol 1e-4.
ATOL, RTOL = 2e-6, 1e-4


def _inputs():
    model = tiny_model(0)
    batch = collate(random_trajectories(2, 4, seed=3))  # 8 rows
    adv = get_credit("grpo")(batch.credit).advantages
    logp = compute_logprobs(model, batch.input_ids, batch.attention_mask, micro_batch_size=8)
    g = torch.Generator().manual_seed(0)
    logp_old = (logp + 0.3 * torch.randn(logp.shape, generator=g)) * batch.mask
    logp_ref = (logp + 0.2 * torch.randn(logp.shape, generator=g)) * batch.mask
    return UpdateInputs(batch.input_ids, batch.attention_mask, batch.mask, logp_old, adv, logp_ref=logp_ref)


def _update(model, inputs, micro):
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    return opt, ppo_update(model, opt, inputs, loss_config=LOSS, micro_batch_size=micro, max_grad_norm=1e9)


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from stepgym.trainers.checkpoint import save_checkpoint
    from stepgym.trainers.distributed import cleanup, init_distributed, shard_model, shard_rows

    info = init_distributed("gloo")
    inputs = _inputs()
    model = shard_model(tiny_model(0))
    # micro-batch 3 over 4 local rows: 2 micro-batches per rank (3 + 1), exercising accumulation too
    opt, metrics = _update(model, inputs.rows(shard_rows(inputs.num_rows, info.rank, world)), micro=3)
    save_checkpoint(out_dir, 1, model=model, optimizer=opt)  # gathers on all ranks, rank 0 writes
    if info.rank == 0:
        torch.save(metrics, os.path.join(out_dir, "metrics.pt"))
    cleanup()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_two_processes_equal_one_process(tmp_path):
    pytest.importorskip("torch.distributed.fsdp")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    from safetensors.torch import load_file

    inputs = _inputs()
    base = tiny_model(0)
    start = {k: v.clone() for k, v in base.state_dict().items()}
    _, metrics = _update(base, inputs, micro=8)
    fsdp = load_file(str(tmp_path / "step-00000001" / "model.safetensors"))
    assert set(fsdp) == set(start)
    moved = 0.0
    for k, v in base.state_dict().items():
        assert torch.allclose(fsdp[k] - start[k], v - start[k], atol=ATOL, rtol=RTOL), k
        moved = max(moved, float((v - start[k]).abs().max()))
    assert moved > 1e-3
    dist_metrics = torch.load(tmp_path / "metrics.pt")
    for key in ("loss/policy", "loss/kl", "loss/entropy", "loss/total"):
        assert dist_metrics[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-7), key


def test_process_group_helpers_with_and_without_a_group(tmp_path):
    import torch.distributed as dist
    from stepgym.trainers.distributed import cleanup, global_rank, is_distributed, is_main, world_size

    assert (is_distributed(), global_rank(), world_size(), is_main()) == (False, 0, 1, True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert (is_distributed(), global_rank(), world_size(), is_main()) == (True, 0, 1, True)
    finally:
        cleanup()
    assert not is_distributed()
