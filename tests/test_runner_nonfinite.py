"""NaN inside run_training: the step stops with a clear message and the newest checkpoint stays intact."""

import pytest
import torch
from safetensors.torch import load_file
from stepgym.trainers.config import TrainConfig
from stepgym.trainers.credit import AuxLoss, CreditBatch, CreditOutput, get_credit, register_credit
from stepgym.trainers.metrics import JsonlSink
from stepgym.trainers.runner import load_checkpoint_model, run_training
from stepgym.trainers.update import NonFiniteError


@register_credit("_test_nan_advantages_at_step_2")
def nan_advantages(batch: CreditBatch) -> CreditOutput:
    adv = get_credit("rloo")(batch).advantages + batch.mask  # non-zero, so step 1 really updates
    return CreditOutput(adv * float("nan") if batch.training_step >= 1 else adv)


def _nan_aux(logp, logp_teacher, target):  # [b, L]
    return (logp - logp_teacher) * float("nan")


@register_credit("_test_nan_aux_loss_at_step_2")
def nan_aux(batch: CreditBatch) -> CreditOutput:
    adv = batch.mask * 1.0
    if batch.training_step < 1:
        return CreditOutput(adv)
    return CreditOutput(adv, aux=AuxLoss(_nan_aux, 0.1, batch.mask, torch.zeros_like(batch.mask)))


@pytest.mark.parametrize(
    ("credit", "message"),
    [
        (
            "_test_nan_advantages_at_step_2",
            r"training step 2: credit method '_test_nan_advantages_at_step_2' returned non-finite advantages "
            r"on \d+ of \d+ trainable tokens, so no update was made\. Nothing was saved for this step: "
            r"the newest checkpoint .*step-00000001 is intact; resume from it",
        ),
        (
            "_test_nan_aux_loss_at_step_2",
            r"training step 2: non-finite loss at epoch 0, mini-batch 0, micro-batch 0 \(.*aux=nan.*\); "
            r"the optimizer step was not taken.* the newest checkpoint .*step-00000001 is intact",
        ),
    ],
    ids=["nan-advantages", "nan-aux-loss"],
)
def test_non_finite_stops_the_step_and_keeps_the_checkpoint(tmp_path, credit, message):
    cfg = TrainConfig.model_validate(
        dict(
            model="tiny",
            device="cpu",
            env_id="thirdparty_env:thirdparty/GuessDigit-v0",
            env_kwargs={"max_turns": 2},
            credit=credit,
            layout="per-step",
            group_size=2,
            tasks_per_step=2,
            num_envs=4,
            total_steps=3,
            max_turns=2,
            micro_batch_size=16,
            checkpoint_every=1,
            optim={"lr": 1e-2},
            sampling={"max_new_tokens": 8},
            eval={"every": 0},
            output_dir=str(tmp_path / "run"),
        )
    )
    with pytest.raises(NonFiniteError, match=message):
        run_training(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckpts.iterdir()] == ["step-00000001"]  # no step 2, no leftover temp folder
    weights = load_file(str(ckpts / "step-00000001" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert [r["step"] for r in JsonlSink.read(tmp_path / "run" / "metrics.jsonl")] == [1]
    model, _, _ = load_checkpoint_model(tmp_path / "run")  # still loads and runs
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
