"""Learning-rate schedules by hand; LoRA trains only adapter weights."""

import pytest
import torch
from stepgym.trainers.batch import collate
from stepgym.trainers.config import LoRAConfig, LossConfig, OptimConfig
from stepgym.trainers.credit import get_credit
from stepgym.trainers.optim import apply_lora, build_optimizer, build_scheduler, lr_factor
from stepgym.trainers.update import UpdateInputs, compute_logprobs, ppo_update
from trainer_helpers import random_trajectories, tiny_model


def test_lr_schedules_hand_derived():
    # warm-up 2 of 10 steps: factors 1/2, 2/2; then p = (s - 2) / 8
    lin = OptimConfig(warmup_steps=2, schedule="linear")
    assert [lr_factor(s, lin, 10) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0])
    cos = OptimConfig(warmup_steps=2, schedule="cosine")
    assert lr_factor(6, cos, 10) == pytest.approx(0.5)  # cos(pi/2) = 0 -> 0.5
    assert lr_factor(10, cos, 10) == pytest.approx(0.0)
    assert lr_factor(50, OptimConfig(), 10) == 1.0  # constant, no warm-up
    model = tiny_model()
    opt = build_optimizer(model.parameters(), OptimConfig(lr=1e-3, warmup_steps=4))
    sched = build_scheduler(opt, OptimConfig(lr=1e-3, warmup_steps=4), 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4)  # step 0: 1/4 of the peak
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_lora_trains_only_adapters():
    model = apply_lora(tiny_model(), LoRAConfig(enabled=True, rank=4, target_modules=("q_proj", "v_proj")))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    # 2 layers x (q, v) x (A, B) = 8 adapter matrices
    assert len(trainable) == 8
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = collate(random_trajectories(2, 4, seed=1))
    adv = get_credit("grpo")(batch.credit).advantages
    logp = compute_logprobs(model, batch.input_ids, batch.attention_mask, micro_batch_size=8) * batch.mask
    opt = build_optimizer(model.parameters(), OptimConfig(lr=1e-2))
    for _ in range(2):  # LoRA B starts at 0, so A moves only from the second step
        ppo_update(
            model,
            opt,
            UpdateInputs(batch.input_ids, batch.attention_mask, batch.mask, logp, adv),
            loss_config=LossConfig(),
            micro_batch_size=4,
        )
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


def test_lora_errors():
    with pytest.raises(ValueError, match="none of lora.target_modules"):
        apply_lora(tiny_model(), LoRAConfig(enabled=True, target_modules=("c_attn",)))
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1), requires_grad=False)], OptimConfig())


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedules_are_transformers_get_scheduler_with_the_warmup_one_step_earlier(schedule):
    from transformers import get_scheduler

    names = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}
    for warm in (0, 3):
        cfg = OptimConfig(warmup_steps=warm, schedule=schedule)
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        hf = get_scheduler(names[schedule], opt, num_warmup_steps=warm, num_training_steps=12)
        theirs = []
        for _ in range(13):
            theirs.append(opt.param_groups[0]["lr"])
            opt.step()
            hf.step()
        ours = [lr_factor(s, cfg, 12) for s in range(13)]
        # identical after the warm-up; during it ours is theirs one step later (no update at lr 0)
        assert ours[warm:] == pytest.approx(theirs[warm:], abs=1e-12)
        assert ours[:warm] == pytest.approx(theirs[1 : warm + 1], abs=1e-12)
