"""The bf16 path on CPU: a StepPO step through run_training with bfloat16 weights."""

import pytest
import torch
from stepgym.trainers.config import TrainConfig
from stepgym.trainers.runner import build_model, load_checkpoint_model, run_training


def _cpu_bf16_matmul() -> str | None:
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16)
        assert float((a @ a)[0, 0]) == 2.0
    except Exception as e:  # noqa: BLE001 - any failure means unsupported here
        return f"bfloat16 matmul unsupported on this CPU build: {e}"
    return None


@pytest.mark.skipif(_cpu_bf16_matmul() is not None, reason=str(_cpu_bf16_matmul()))
def test_bf16_step_trains_and_checkpoints_bf16_weights(tmp_path, caplog):
    cfg = TrainConfig.model_validate(
        dict(
            model="tiny",
            device="cpu",
            dtype="bfloat16",
            env_id="thirdparty_env:thirdparty/GuessDigit-v0",
            env_kwargs={"max_turns": 2},
            credit="steppo",
            layout="per-step",
            group_size=2,
            tasks_per_step=2,
            num_envs=4,
            total_steps=1,
            max_turns=2,
            micro_batch_size=4,
            optim={"lr": 1e-2},  # bf16 keeps ~3 significant digits: small lrs vanish in pure-bf16 AdamW
            sampling={"max_new_tokens": 8},
            eval={"every": 0},
            output_dir=str(tmp_path / "run"),
        )
    )
    before = {n: p.detach().clone() for n, p in build_model(cfg)[0].named_parameters()}
    assert all(p.dtype == torch.bfloat16 for p in before.values())
    result = run_training(cfg)
    assert not any("half-precision" in r.message for r in caplog.records)  # lr 1e-2: no rounding warning
    m = result.history[0]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in m.items() if k.startswith("loss/"))
    model, _, _ = load_checkpoint_model(result.output_dir)
    params = dict(model.named_parameters())
    assert params["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert params["value_head.proj.weight"].dtype == torch.float32  # the critic head stays float32
    moved = [n for n in before if not torch.equal(params[n], before[n])]
    assert len(moved) > len(before) // 2, f"only {len(moved)} of {len(before)} bf16 tensors moved"


def test_bf16_with_a_small_lr_warns_that_updates_round_away(tmp_path, caplog):
    # bfloat16 spacing near a weight w is |w| * 2^-8 .. 2^-7; AdamW's first step moves each weight by
    # ~lr = 1e-6, far below half that spacing for |w| ~ 0.02 (~4e-5): the run must say so
    cfg = TrainConfig.model_validate(
        dict(
            model="tiny",
            device="cpu",
            dtype="bfloat16",
            env_id="thirdparty_env:thirdparty/GuessDigit-v0",
            credit="rloo",
            group_size=2,
            tasks_per_step=1,
            num_envs=2,
            total_steps=1,
            max_turns=1,
            sampling={"max_new_tokens": 4},
            eval={"every": 0},
            output_dir=str(tmp_path / "run"),
        )
    )
    with caplog.at_level("WARNING", logger="stepgym.trainers.grpo"):
        run_training(cfg)
    assert any("half-precision tensors in place at lr=1e-06" in r.message for r in caplog.records)
