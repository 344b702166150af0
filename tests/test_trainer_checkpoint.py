"""Checkpoints resume exactly; writes are atomic; metrics are namespaced JSONL."""

import json
import random

import numpy as np
import pytest
import torch
from stepgym.trainers.batch import collate
from stepgym.trainers.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
    verify_checkpoint,
)
from stepgym.trainers.config import LossConfig, TrainConfig, load_config, save_config
from stepgym.trainers.credit import get_credit
from stepgym.trainers.metrics import JsonlSink, check_keys, make_sinks, namespaced
from stepgym.trainers.update import UpdateInputs, compute_logprobs, ppo_update
from trainer_helpers import random_trajectories, tiny_model


def _setup(seed=0):
    model = tiny_model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 3))  # warm-up
    gen = torch.Generator().manual_seed(123)
    return model, opt, sched, gen


def _train_step(model, opt, sched, gen, step):
    # the data depends on the global torch RNG, the shuffle on `gen`: both must be restored exactly
    batch = collate(random_trajectories(2, 4, seed=int(torch.randint(0, 10_000, (1,)))))
    adv = get_credit("grpo")(batch.credit).advantages
    logp_old = compute_logprobs(model, batch.input_ids, batch.attention_mask, micro_batch_size=4) * batch.mask
    inputs = UpdateInputs(batch.input_ids, batch.attention_mask, batch.mask, logp_old, adv)
    return ppo_update(
        model,
        opt,
        inputs,
        loss_config=LossConfig(),
        ppo_epochs=2,
        mini_batches=2,
        micro_batch_size=2,
        scheduler=sched,
        generator=gen,
    )


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    cfg = TrainConfig(model="tiny", env_id="test/Fake-v0")
    torch.manual_seed(0)
    model, opt, sched, gen = _setup()
    metrics_a = []
    for step in range(1, 4):
        metrics_a.append(_train_step(model, opt, sched, gen, step))
        if step == 1:
            save_checkpoint(
                tmp_path,
                step,
                model=model,
                optimizer=opt,
                scheduler=sched,
                config=cfg,
                generators={"shuffle": gen},
                extra={"note": "x"},
            )
    final_a = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(999)  # scramble every RNG before resuming
    random.seed(5)
    np.random.seed(5)
    model, opt, sched, gen = _setup(seed=42)  # different init: everything must come from the checkpoint
    state = load_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched, generators={"shuffle": gen})
    assert state.step == 1 and state.extra == {"note": "x"}
    metrics_b = [_train_step(model, opt, sched, gen, step) for step in (2, 3)]
    assert metrics_b == metrics_a[1:]  # bit-identical floats
    for k, v in model.state_dict().items():
        assert torch.equal(v, final_a[k]), k
    assert load_config(state.path) == cfg


def test_rng_states_round_trip(tmp_path):
    model, opt, _, _ = _setup()
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    save_checkpoint(tmp_path, 7, model=model, optimizer=opt)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    load_checkpoint(tmp_path / "step-00000007", model=model)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_keep_last_and_partial_writes_are_ignored(tmp_path):
    model, opt, _, _ = _setup()
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model=model, optimizer=opt, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000004"]
    # a save killed half-way leaves only a temporary folder, never a visible checkpoint
    (tmp_path / "step-00000005.tmp-999").mkdir()
    (tmp_path / "step-00000005.tmp-999" / "model.safetensors").write_bytes(b"trunc")
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    assert load_checkpoint(tmp_path, model=model).step == 4


def test_non_finite_weights_are_never_written(tmp_path):
    model, opt, _, _ = _setup()
    save_checkpoint(tmp_path, 1, model=model, optimizer=opt)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="refusing to checkpoint step 2: non-finite weights in"):
        save_checkpoint(tmp_path, 2, model=model, optimizer=opt)
    assert [p.name for p in tmp_path.iterdir()] == ["step-00000001"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path, model=tiny_model())


def test_config_save_load_and_validation(tmp_path):
    cfg = TrainConfig(model="m", env_id="e", credit="grpo", credit_kwargs={"cross_steps": True}, group_size=4)
    path = save_config(cfg, tmp_path)
    data = json.loads(path.read_text())
    assert data["group_size"] == 4 and data["loss"]["clip_eps_low"] == 0.2  # defaults are written out
    assert load_config(tmp_path) == cfg
    with pytest.raises(TypeError, match="has no option 'cross_step'. Did you mean 'cross_steps'"):
        TrainConfig(model="m", env_id="e", credit_kwargs={"cross_step": True})
    with pytest.raises(KeyError, match="Did you mean 'grpo'"):
        TrainConfig(model="m", env_id="e", credit="grpoo")
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        TrainConfig(model="m", env_id="e", group_sise=4)
    with pytest.raises(ValueError, match="kl_coef is 0.1 but reference is 'none'"):
        LossConfig(kl_coef=0.1)
    with pytest.raises(ValueError, match="uses no teacher"):
        TrainConfig(model="m", env_id="e", loss=LossConfig(kl_coef=0.1, reference="teacher"))
    with pytest.raises(ValueError, match="frozen"):
        cfg.group_size = 3
    # every field has a one-line attribute docstring
    for model_cls in (TrainConfig, LossConfig):
        undocumented = [n for n, f in model_cls.model_fields.items() if not f.description]
        assert not undocumented


def test_metrics_jsonl_namespaces_and_resume(tmp_path):
    sink = make_sinks(tmp_path)
    for step in (1, 2, 3):
        sink.log({**namespaced("loss", {"policy": step * 0.5}), "time/step": 1.0, "eval/nq/em": float("nan")}, step)
    sink.close()
    rows = JsonlSink.read(tmp_path / "metrics.jsonl")
    assert [r["loss/policy"] for r in rows] == [0.5, 1.0, 1.5]
    assert rows[0]["eval/nq/em"] == "nan"
    resumed = make_sinks(tmp_path, resume_step=1)  # resumed from checkpoint 1: steps 2, 3 are redone
    resumed.log({"loss/policy": 9.0}, 2)
    resumed.close()
    assert [(r["step"], r["loss/policy"]) for r in JsonlSink.read(tmp_path / "metrics.jsonl")] == [(1, 0.5), (2, 9.0)]
    with pytest.raises(ValueError, match="metric key 'policy' is not namespaced"):
        check_keys({"policy": 1.0})
    with pytest.raises(ValueError, match="not namespaced"):
        check_keys({"foo/x": 1.0})
    with pytest.raises(ValueError, match="unknown metrics sink 'csv'"):
        make_sinks(tmp_path, ("csv",))


def _corrupt_header(path):
    """Overwrite the start of a safetensors file with the same number of garbage bytes (size unchanged)."""
    data = bytearray(path.read_bytes())
    data[:16] = b"\xff" * 16
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "garbage-header", "no-state"])
def test_corrupt_newest_checkpoint_falls_back_to_the_intact_one(tmp_path, caplog, damage):
    model, opt, _, _ = _setup()
    save_checkpoint(tmp_path, 1, model=model, optimizer=opt)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)
    save_checkpoint(tmp_path, 2, model=model, optimizer=opt)
    bad = tmp_path / "step-00000002"
    if damage == "truncated":
        f = bad / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
    elif damage == "garbage-header":  # the raw "SafetensorError ... incomplete metadata" of issue 14.8
        _corrupt_header(bad / "model.safetensors")
    else:
        (bad / "training_state" / "state.json").unlink()
    with pytest.raises(CheckpointError, match="step-00000002"):
        verify_checkpoint(bad)
    fresh = tiny_model(5)
    with caplog.at_level("WARNING", logger="stepgym.trainers.checkpoint"):
        state = load_checkpoint(tmp_path, model=fresh, optimizer=opt)
    assert state.step == 1 and state.skipped == (bad,)
    assert any("step-00000002" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, expected[k]), k
    with pytest.raises(CheckpointError, match="step-00000002"):  # named explicitly: no silent fallback
        load_checkpoint(bad, model=fresh)


def test_keeps_two_checkpoints_by_default(tmp_path):
    model, opt, _, _ = _setup()
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model=model, optimizer=opt)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    assert TrainConfig(model="m", env_id="e").keep_last == 2


def test_step_folder_is_a_hf_model_folder_and_modules_round_trip(tmp_path):
    from stepgym.trainers.value import attach_value_head
    from transformers import AutoModelForCausalLM

    model, opt, _, _ = _setup()
    attach_value_head(model)
    teacher = tiny_model(3)
    path = save_checkpoint(tmp_path, 4, model=model, optimizer=opt, modules={"teacher": teacher}, extra={"a": 1})
    assert {"config.json", "generation_config.json", "model.safetensors", "training_state"} <= {
        p.name for p in path.iterdir()
    }
    assert read_checkpoint_state(path).extra == {"a": 1}
    hf = AutoModelForCausalLM.from_pretrained(path)  # no value head, no stepgym code
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids).logits, atol=1e-6)
    other, twin = tiny_model(8), tiny_model(9)
    attach_value_head(other)
    state = load_checkpoint(path, model=other, modules={"teacher": twin})
    assert state.modules == ("teacher",)
    for a, b in ((other, model), (twin, teacher)):
        for k, v in a.state_dict().items():
            assert torch.equal(v, b.state_dict()[k]), k


def test_checkpoints_of_the_older_layout_still_load(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file
    from stepgym.trainers.value import attach_value_head

    model, opt, _, _ = _setup()
    attach_value_head(model)
    with torch.no_grad():
        model.value_head.proj.bias.fill_(0.5)
    step = save_checkpoint(tmp_path, 3, model=model, optimizer=opt, config=TrainConfig(model="m", env_id="e"))
    # rewrite it as the older layout wrote it: one full state dict, state.json and the rest at the top
    state_dir = step / "training_state"
    full = {**load_file(str(step / "model.safetensors")), **load_file(str(state_dir / "policy.safetensors"))}
    save_file(full, str(step / "model.safetensors"))
    state = json.loads((state_dir / "state.json").read_text())
    for key in ("files", "policy_partial", "modules"):
        del state[key]
    (step / "state.json").write_text(json.dumps({**state, "format_version": 1}))
    for name in ("optimizer.pt", "rng.safetensors", "config.json"):
        shutil.move(state_dir / name, step / name)
    shutil.rmtree(state_dir)
    fresh = tiny_model(4)
    attach_value_head(fresh)
    assert load_checkpoint(tmp_path, model=fresh, optimizer=opt).step == 3
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    assert load_config(step).model == "m"


def test_lora_adapters_refuse_another_base_model(tmp_path):
    from stepgym.trainers.checkpoint import CheckpointMismatchError
    from stepgym.trainers.config import LoRAConfig
    from stepgym.trainers.optim import apply_lora

    lora = LoRAConfig(enabled=True, rank=2, target_modules=("q_proj",))
    model = apply_lora(tiny_model(0), lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    save_checkpoint(tmp_path, 1, model=model, optimizer=opt)
    same = apply_lora(tiny_model(0), lora)
    load_checkpoint(tmp_path, model=same)
    for k, v in same.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    with pytest.raises(CheckpointMismatchError, match="another base model"):
        load_checkpoint(tmp_path, model=apply_lora(tiny_model(1), lora))
