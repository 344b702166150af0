"""The pure loss functions: hand-derived numbers, and TRL GRPOTrainer's own code on the same tensors."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from stepgym.trainers.losses import (
    aggregate,
    clipped_surrogate,
    entropy_from_logits,
    importance_ratio,
    kl_k3,
)


def test_clipped_surrogate_hand_derived():
    # Four tokens, eps 0.2:
    #  r=1.5, A=+1 -> -min(1.5, 1.2) = -1.2 (clipped)
    #  r=0.5, A=+1 -> -min(0.5, 0.8) = -0.5 (not clipped)
    #  r=0.5, A=-1 -> -min(-0.5, -0.8) = 0.8 (clipped)
    #  r=1.5, A=-1 -> -min(-1.5, -1.2) = 1.5 (not clipped)
    ratio = torch.tensor([[1.5, 0.5, 0.5, 1.5]])
    logp_old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, clipped = clipped_surrogate(ratio.log(), logp_old, adv, mask)
    assert torch.allclose(loss, torch.tensor([[-1.2, -0.5, 0.8, 1.5]]), atol=1e-6)
    assert clipped.tolist() == [[1.0, 0.0, 1.0, 0.0]]


def test_dual_clip_bounds_negative_advantage_loss():
    # r=5, A=-1: PPO loss = -min(-5, -1.2) = 5; dual clip c=3 bounds it to 3. A=+1 is untouched.
    logp = torch.tensor([[math.log(5.0), math.log(5.0)]])
    adv = torch.tensor([[-1.0, 1.0]])
    loss, clipped = clipped_surrogate(logp, torch.zeros(1, 2), adv, torch.ones(1, 2), dual_clip=3.0)
    assert torch.allclose(loss, torch.tensor([[3.0, -1.2]]), atol=1e-6)
    assert clipped.tolist() == [[1.0, 1.0]]


def test_asymmetric_clip_and_mask():
    # clip-higher eps_hi=0.28: r=1.5, A=1 -> -1.28; the masked token contributes 0 whatever its values
    logp = torch.tensor([[math.log(1.5), 9.0]])
    loss, _ = clipped_surrogate(
        logp, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1.0, 0.0]]), clip_eps_high=0.28
    )
    assert torch.allclose(loss, torch.tensor([[-1.28, 0.0]]), atol=1e-6)


def test_sequence_ratio_is_gspo_geometric_mean():
    # row 0: log-ratios 0.2 and 0.4 on the two trainable tokens (third is masked, log-ratio 5 ignored)
    # -> s = exp((0.2 + 0.4) / 2) = exp(0.3)
    logp = torch.tensor([[0.2, 0.4, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    s = importance_ratio(logp, torch.zeros(1, 3), mask, "sequence")
    assert s.shape == (1, 1)
    assert s.item() == pytest.approx(math.exp(0.3), rel=1e-6)
    # in the surrogate every token of the row shares it: A=1, s=1.35 > 1.2 -> -1.2 on both trainable tokens
    loss, _ = clipped_surrogate(logp, torch.zeros(1, 3), torch.ones(1, 3), mask, level="sequence")
    assert torch.allclose(loss, torch.tensor([[-1.2, -1.2, 0.0]]), atol=1e-6)


def test_kl_k3_values_and_clamp():
    # d = logp_ref - logp. d=0 -> 0; d=1 -> e - 2; d=-1 -> 1/e; d=20 -> e^20 - 21 clamped to 10
    logp_ref = torch.tensor([[0.0, 1.0, -1.0, 20.0]])
    kl = kl_k3(torch.zeros(1, 4), logp_ref, torch.ones(1, 4))
    expected = [0.0, math.e - 2.0, math.exp(-1.0), 10.0]
    assert kl[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert kl_k3(torch.zeros(1, 4), logp_ref, torch.zeros(1, 4)).abs().sum() == 0


def test_entropy_from_logits():
    # uniform over 4 -> log 4; a one-hot-ish distribution -> ~0
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]])
    h = entropy_from_logits(logits)
    assert h[0, 0].item() == pytest.approx(math.log(4), rel=1e-6)
    assert h[0, 1].item() == pytest.approx(0.0, abs=1e-6)


def test_aggregation_modes_hand_derived():
    # rows: [1, 2, pad] (2 tokens) and [3, pad, pad] (1 token), L = 3
    x = torch.tensor([[1.0, 2.0, 7.0], [3.0, 7.0, 7.0]])
    m = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(x, m, "token-mean").item() == pytest.approx(6 / 3)  # (1+2+3)/3
    assert aggregate(x, m, "seq-mean-token-mean").item() == pytest.approx((1.5 + 3) / 2)
    with pytest.raises(ValueError, match="constant norm_length"):  # Dr.GRPO: never the padded length
        aggregate(x, m, "seq-mean-token-sum-norm")
    assert aggregate(x, m, "seq-mean-token-sum-norm", norm_length=4).item() == pytest.approx(6 / 8)
    # split into rows with the whole batch's normaliser: the parts sum to the whole
    for mode, whole_norm in [("token-mean", 3.0), ("seq-mean-token-mean", 2.0), ("seq-mean-token-sum-norm", 6.0)]:
        parts = sum(aggregate(x[i : i + 1], m[i : i + 1], mode, normalizer=whole_norm) for i in range(2))
        assert parts.item() == pytest.approx(aggregate(x, m, mode, norm_length=3).item())
    with pytest.raises(ValueError, match="unknown aggregation 'mean'"):
        aggregate(x, m, "mean")


# =========================================================================== TRL cross-check
# TRL 1.16.0, trl/trainer/grpo_trainer.py, GRPOTrainer._compute_loss (read from the installed source):
#   coef_1 = exp(logp - old_logp)                          (token level; "sequence": exp(masked mean))
#   coef_2 = clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
#   per_token_loss = -min(coef_1 * A, coef_2 * A)
#   if beta != 0: per_token_loss += beta * (exp(ref - logp) - (ref - logp) - 1)      (k3, not clamped)
#   grpo:    loss = mean_b( sum_l(ptl * mask) / clamp(sum_l mask, 1) )            / grad_accum_steps
#   bnpo:    loss = sum(ptl * mask) / clamp(sum(mask), 1)                          / grad_accum_steps
#   dr_grpo: loss = sum(ptl * mask) / (B * max_completion_length)                  / grad_accum_steps
#   dapo:    loss = sum(ptl * mask) / (num_items_in_batch / num_processes * grad_accum / steps_per_generation)
#   entropy bonus (entropy_coef > 0): loss -= entropy_coef * sum(H * mask) / clamp(sum(mask), 1) / grad_accum
# Our equivalents: grpo = seq-mean-token-mean, bnpo = token-mean (local), dr_grpo =
# seq-mean-token-sum-norm with norm_length = max_completion_length, dapo = token-mean with the global
# token count as normaliser. The test runs TRL's own _compute_loss on a stub trainer whose
# per-token log-prob function returns our tensors, so the comparison is against TRL's code itself.
TRL_CASES = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum-norm",
    "dapo": "token-mean",
}


class _Accel:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    def gather_for_metrics(self, x):
        return x

    def autocast(self):  # pragma: no cover - not reached (log-probs are stubbed)
        raise AssertionError


def _trl_loss(loss_type, logp, old, ref, adv, mask, entropies, *, beta, entropy_coef, max_len, eps_hi):
    # the same floor as pyproject.toml; the loss is TRL's own code, so a newer TRL whose formulas moved fails here
    pytest.importorskip("trl", minversion="1.0")
    from trl.trainer.grpo_trainer import GRPOTrainer

    class Stub:
        _compute_loss = GRPOTrainer._compute_loss

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kw):
            return logp, entropies, None

    s = Stub()
    s.top_entropy_quantile = 1.0
    s.off_policy_mask_threshold = None
    s.importance_sampling_level = "token"
    s.beta = beta
    s.args = SimpleNamespace(use_bias_correction_kl=False, delta=None)
    s.loss_type = loss_type
    s.epsilon_low, s.epsilon_high = 0.2, eps_hi
    s.use_vllm = False
    s.model = SimpleNamespace(training=True)
    s.current_gradient_accumulation_steps = 1
    s.max_completion_length = max_len
    s.accelerator = _Accel()
    s._entropy_bonus_enabled = entropy_coef > 0
    s.use_adaptive_entropy = False
    s.entropy_coef = entropy_coef
    s.aux_loss_enabled = False
    s._metrics = defaultdict(lambda: defaultdict(list))
    B, L = logp.shape
    s.args.steps_per_generation = 1
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long),
        "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, L, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum(),
    }
    return s._compute_loss(None, inputs)


@pytest.mark.parametrize("loss_type", sorted(TRL_CASES))
@pytest.mark.parametrize("beta,entropy_coef", [(0.0, 0.0), (0.04, 0.01)])
def test_matches_trl_grpo_trainer(loss_type, beta, entropy_coef):
    g = torch.Generator().manual_seed(7)
    B, L, max_len = 4, 6, 8
    old = -torch.rand(B, L, generator=g) * 2  # [B, L]
    logp = old + 0.3 * torch.randn(B, L, generator=g)  # ratios spread on both sides of the clip
    ref = old + 0.1 * torch.randn(B, L, generator=g)
    adv = torch.randn(B, generator=g)  # [B] one advantage per completion, as in TRL
    lengths = torch.tensor([6, 3, 1, 4])
    mask = (torch.arange(L)[None, :] < lengths[:, None]).float()  # [B, L] right-padded completions
    entropies = torch.rand(B, L, generator=g) * 3
    eps_hi = 0.28
    expected = _trl_loss(
        loss_type,
        logp,
        old,
        ref,
        adv,
        mask,
        entropies,
        beta=beta,
        entropy_coef=entropy_coef,
        max_len=max_len,
        eps_hi=eps_hi,
    )

    a = adv[:, None].expand(B, L) * mask  # [B, L] broadcast as our credit methods do
    per_token, _ = clipped_surrogate(logp, old, a, mask, clip_eps_low=0.2, clip_eps_high=eps_hi)
    if beta:
        # TRL does not clamp k3; these ratios are far from the clamp, so both agree
        per_token = per_token + beta * kl_k3(logp, ref, mask)
    ours = aggregate(per_token, mask, TRL_CASES[loss_type], norm_length=max_len)
    if entropy_coef:
        ours = ours - entropy_coef * aggregate(entropies, mask, "token-mean")
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6, abs=1e-7)
    assert abs(expected.item()) > 1e-3  # not a vacuous comparison
