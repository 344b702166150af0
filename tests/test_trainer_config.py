"""TrainConfig edges: numbers that are not numbers, nonsense bounds, per-method defaults, Dr.GRPO's constant."""

import pytest
import torch
from pydantic import ValidationError
from stepgym.trainers.config import LossConfig, OptimConfig, TrainConfig, load_config, save_config
from stepgym.trainers.credit import get_credit
from stepgym.trainers.losses import aggregate, aggregation_normalizer


def _cfg(**kw):
    return TrainConfig(model="m", env_id="e", **kw)


# =========================================================================== item 10: edges
@pytest.mark.parametrize(
    "kw, match",
    [
        ({"group_size": True}, "group_size must be a number, got the bool True"),
        ({"total_steps": False}, "total_steps must be a number, got the bool False"),
        ({"optim": {"lr": True}}, "lr must be a number, got the bool True"),
        ({"loss": {"norm_length": True}}, "norm_length must be a number"),
        ({"optim": {"lr": 1e9}}, "less than or equal to 1"),
        ({"optim": {"betas": (0.9, 1.5)}}, r"betas must each be in \[0, 1\)"),
        ({"loss": {"clip_eps_low": 1.0}}, "less than 1"),
        ({"invalid_action_penalty": 0.1}, "the env owns the penalty"),
    ],
)
def test_nonsense_is_rejected_with_the_field_named(kw, match):
    with pytest.raises(ValidationError, match=match):
        _cfg(**kw)


def test_numbers_still_parse_from_json_and_strings():
    cfg = TrainConfig.model_validate_json('{"model": "m", "env_id": "e", "group_size": 4, "optim": {"lr": 0.001}}')
    assert cfg.group_size == 4 and cfg.optim.lr == 1e-3
    assert _cfg(group_size="4").group_size == 4  # a CLI string is a number; a bool is not
    assert _cfg(teacher={"hindsight": ["outcome"]}).teacher.hindsight == ("outcome",)  # bools elsewhere untouched
    assert _cfg(lora={"enabled": True}).lora.enabled is True


def test_credit_name_suggestion_ignores_case():
    with pytest.raises(KeyError, match="Did you mean 'stepopsd'"):
        get_credit("StepOPSD")
    with pytest.raises(KeyError, match="Did you mean 'grpo'"):
        get_credit("GRPO")


# =========================================================================== items 2, 3: the method's defaults
def test_steppo_uses_the_sequence_ratio_unless_told_otherwise(tmp_path):
    # ALGORITHMS.md §8: StepPO's policy loss is sequence-level (GSPO)
    assert _cfg(credit="steppo").loss.ratio_level == "sequence"
    assert _cfg(credit="steppo", loss={"clip_eps_low": 0.1}).loss.ratio_level == "sequence"
    assert _cfg(credit="steppo", loss={"ratio_level": "token"}).loss.ratio_level == "token"  # overridable
    assert _cfg(credit="grpo").loss.ratio_level == "token"
    from stepgym.trainers.credit_probe import probed

    assert _cfg(credit=probed("steppo")).loss.ratio_level == "sequence"  # a wrapped method keeps its defaults
    # the resolved value is what gets saved, and it survives the round trip
    save_config(_cfg(credit="steppo", loss={"clip_eps_low": 0.1}), tmp_path)
    back = load_config(tmp_path)
    assert back.loss.ratio_level == "sequence" and back.loss.clip_eps_low == 0.1


def test_sdar_teacher_is_the_live_policy_with_hindsight_in_the_prompt():
    # ALGORITHMS.md §6: the same policy's pre-update weights, privileged context prepended to the prompt
    for method in ("sdar", "grpo+opsd", "opsd"):
        t = _cfg(credit=method).teacher
        assert (t.mode, t.placement) == ("live", "prompt"), method
    t = _cfg(credit="sdar", teacher={"mode": "snapshot", "snapshot_interval": 5}).teacher
    assert (t.mode, t.placement, t.snapshot_interval) == ("snapshot", "prompt", 5)  # overridable field by field
    t = _cfg(credit="stepopsd").teacher
    assert (t.mode, t.placement) == ("snapshot", "inline")  # §4.3: StepOPSD keeps its stale snapshot


# =========================================================================== item 5: Dr.GRPO's constant
def test_drgrpo_normaliser_is_a_constant_from_the_generation_budget():
    agg = {"aggregation": "seq-mean-token-sum-norm"}
    assert _cfg(loss=agg, layout="per-step", sampling={"max_new_tokens": 64}).loss.norm_length == 64
    assert _cfg(loss=agg, layout="concat", max_turns=4, sampling={"max_new_tokens": 64}).loss.norm_length == 256
    assert _cfg(loss=agg, layout="concat", max_turns=4, max_total_tokens=100).loss.norm_length == 100
    assert _cfg(loss={**agg, "norm_length": 7}).loss.norm_length == 7
    assert _cfg().loss.norm_length is None  # token-mean needs none


def test_drgrpo_loss_of_the_same_tokens_does_not_depend_on_padding():
    # two rows with 2 and 1 trainable tokens (per-token loss 1.2, 0.8 | 0.4), padded to L = 10 or L = 30:
    # with the constant 4: (1.2 + 0.8 + 0.4) / (2 rows * 4) = 0.3 for both; the old padded-length
    # normaliser gave 2.4 / 20 = 0.12 and 2.4 / 60 = 0.04
    norm = LossConfig(aggregation="seq-mean-token-sum-norm", norm_length=4).norm_length
    losses = []
    for L in (10, 30):
        per_token, mask = torch.zeros(2, L), torch.zeros(2, L)
        per_token[0, 3:5], per_token[1, 6] = torch.tensor([1.2, 0.8]), 0.4
        mask[0, 3:5], mask[1, 6] = 1.0, 1.0
        losses.append(aggregate(per_token, mask, "seq-mean-token-sum-norm", norm_length=norm).item())
    assert losses == pytest.approx([0.3, 0.3])
    with pytest.raises(ValueError, match="divides by a constant norm_length"):
        aggregation_normalizer(torch.ones(2, 10), "seq-mean-token-sum-norm")


def test_drgrpo_update_loss_does_not_depend_on_padding():
    from stepgym.trainers.update import UpdateInputs, compute_logprobs, ppo_update
    from trainer_helpers import tiny_model

    cfg = _cfg(loss={"aggregation": "seq-mean-token-sum-norm"}, layout="per-step", sampling={"max_new_tokens": 8})
    ids = torch.tensor([[3, 9, 4, 7, 5, 0], [5, 6, 1, 2, 0, 0]])
    att = (torch.arange(6) < torch.tensor([[5], [4]])).long()
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.float32)
    adv = mask * torch.tensor([[1.0], [-0.5]])
    losses = []
    for L in (10, 30):

        def pad(x, n=L - 6):
            return torch.nn.functional.pad(x, (0, n))

        model = tiny_model(0)
        logp_old = compute_logprobs(model, pad(ids), pad(att), micro_batch_size=2) * pad(mask)
        inputs = UpdateInputs(pad(ids), pad(att), pad(mask), logp_old, pad(adv))
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        losses.append(ppo_update(model, opt, inputs, loss_config=cfg.loss, micro_batch_size=2)["loss/policy"])
    # on-policy, so r = 1 and the per-token loss is -A: 3 x -1 + 2 x 0.5 = -2, over 2 rows x norm_length 8
    # = -0.125 at both lengths (the padded-length normaliser gave -2/20 = -0.1 and -2/60 = -0.033)
    assert losses == pytest.approx([-0.125, -0.125], abs=1e-6)


def test_optim_config_alone_validates_too():
    with pytest.raises(ValidationError, match="lr must be a number"):
        OptimConfig(lr=True)


def test_a_misspelt_env_id_fails_before_the_model_loads(tmp_path, monkeypatch):
    from stepgym.trainers import runner

    def no_model(config):  # the env check must come first
        raise AssertionError("build_model was called before the env id was checked")

    monkeypatch.setattr(runner, "build_model", no_model)
    cfg = TrainConfig(model="tiny", env_id="stepgym/SearchQa-v0", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown env 'stepgym/SearchQa-v0'; did you mean 'stepgym/SearchQA-v0'"):
        runner.run_training(cfg)
    cfg = TrainConfig(model="tiny", env_id="no_such_module_xyz:Foo-v0", output_dir=str(tmp_path))
    with pytest.raises(ValueError, match="could not import module 'no_such_module_xyz'"):
        runner.run_training(cfg)
