"""LoRA end to end through run_training: only adapters (and the StepPO value head) train; the checkpoint reloads."""

import torch
from stepgym.trainers.config import TrainConfig
from stepgym.trainers.runner import build_model, eval_task_ids, evaluate_model, load_checkpoint_model, run_training


def test_lora_steppo_trains_only_adapters_and_head_then_reloads_and_evaluates(tmp_path):
    cfg = TrainConfig.model_validate(
        dict(
            model="tiny",
            device="cpu",
            env_id="thirdparty_env:thirdparty/GuessDigit-v0",
            env_kwargs={"max_turns": 2},
            credit="steppo",
            layout="per-step",
            lora={"enabled": True, "rank": 4, "alpha": 8.0},
            group_size=2,
            tasks_per_step=2,
            num_envs=4,
            total_steps=2,
            max_turns=2,
            micro_batch_size=4,
            checkpoint_every=0,
            optim={"lr": 1e-2},
            sampling={"max_new_tokens": 8},
            eval={"every": 0, "tasks_per_subset": 1},
            output_dir=str(tmp_path / "run"),
        )
    )
    base = {n: p.detach().clone() for n, p in build_model(cfg)[0].named_parameters()}
    result = run_training(cfg)
    assert result.final_step == 2
    model, tok, _ = load_checkpoint_model(result.output_dir)
    adapters, head, frozen = {}, {}, {}
    for n, p in model.named_parameters():
        if "lora_" in n:
            adapters[n] = p
        elif n.startswith("value_head."):
            head[n] = p
        else:  # base_model.model.<name> with .base_layer for wrapped linears
            frozen[n.removeprefix("base_model.model.").replace(".base_layer", "")] = p
    assert set(frozen) == set(base)
    moved = [n for n, p in frozen.items() if not torch.equal(p, base[n])]
    assert moved == [], f"base weights changed under LoRA: {moved[:5]}"
    # 7 target modules x layers x (A, B); lora_B starts at 0 and gets gradient from step 1 on, so after
    # 2 Adam steps every B is non-zero
    assert len(adapters) == 7 * model.config.num_hidden_layers * 2
    assert all(float(p.detach().abs().max()) > 0 for n, p in adapters.items() if "lora_B" in n)
    assert len(head) == 2 and float(head["value_head.proj.bias"].detach().abs()) > 0
    tasks = eval_task_ids(cfg)
    results, trajs = evaluate_model(cfg, model, tok, tasks, temperature=0.0)
    assert set(results) == {"low", "high"} and all(r.n == 1 for r in results.values()) and len(trajs) == 2
