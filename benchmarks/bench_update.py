"""Update throughput: stepgym's ppo_update vs TRL GRPOTrainer's loss computation, same model, batch and loss.

Both sides run, per iteration, one optimizer step over the same B x (P + C) batch on copies of the
same random Qwen3: forward, per-token log-probs at temperature 1, clipped surrogate (eps 0.2, token
ratio), GRPO aggregation (TRL ``loss_type="grpo"`` = our ``seq-mean-token-mean``), backward, AdamW
step. TRL's side is ``GRPOTrainer._compute_loss`` itself (trl's installed source, its fused LM head
added with ``add_fused_lm_head`` exactly as the trainer's constructor does, entropy output on),
called on a stub trainer object so no dataset, reward function or generation is involved.
Tokens/s counts every token of the batch (prompt + completion), both sides alike.

    python benchmarks/bench_update.py                # CPU defaults
    python benchmarks/bench_update.py --device cuda --dtype bfloat16 --hidden 896 --layers 24 --batch 16
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import time
from collections import defaultdict
from types import SimpleNamespace

import torch
from stepgym.trainers.config import LossConfig
from stepgym.trainers.update import UpdateInputs, ppo_update
from transformers import Qwen3Config, Qwen3ForCausalLM


def build_model(args: argparse.Namespace) -> Qwen3ForCausalLM:
    torch.manual_seed(0)
    heads = max(1, args.hidden // 64)
    cfg = Qwen3Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 3,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=64 if args.hidden >= 64 else args.hidden,
        max_position_embeddings=args.prompt + args.completion + 8,
        tie_word_embeddings=False,
    )
    model = Qwen3ForCausalLM(cfg).to(device=args.device, dtype=getattr(torch, args.dtype))
    model.config.use_cache = False
    return model


def make_batch(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    B, P, C = args.batch, args.prompt, args.completion
    prompt = torch.randint(1, args.vocab, (B, P), generator=g)
    completion = torch.randint(1, args.vocab, (B, C), generator=g)
    lengths = torch.randint(C // 2, C + 1, (B,), generator=g)
    cmask = (torch.arange(C)[None] < lengths[:, None]).long()  # right-padded completions
    completion = completion * cmask
    adv = torch.randn(B, generator=g)
    old = -torch.rand(B, C, generator=g) * 2 * cmask
    return {"prompt": prompt, "completion": completion, "cmask": cmask, "adv": adv, "old": old}


class _Accel:
    num_processes = 1
    sync_gradients = True
    is_main_process = True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x

    def gather_for_metrics(self, x):
        return x

    def autocast(self):
        return contextlib.nullcontext()


def trl_step_fn(model: torch.nn.Module, data: dict, args: argparse.Namespace):
    from trl.trainer.grpo_trainer import GRPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))

    class Stub:
        _compute_loss = GRPOTrainer._compute_loss
        _get_per_token_logps_and_entropies = GRPOTrainer._get_per_token_logps_and_entropies

    s = Stub()
    s.top_entropy_quantile = 1.0
    s.off_policy_mask_threshold = None
    s.importance_sampling_level = "token"
    s.beta = 0.0
    s.args = SimpleNamespace(use_bias_correction_kl=False, delta=None)
    s.loss_type = "grpo"
    s.epsilon_low = s.epsilon_high = 0.2
    s.use_vllm = False
    s.model = model
    s.current_gradient_accumulation_steps = 1
    s.max_completion_length = args.completion
    s.accelerator = _Accel()
    s._entropy_bonus_enabled = False
    s.use_adaptive_entropy = False
    s.entropy_coef = 0.0
    s.aux_loss_enabled = False
    s._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    dev = args.device
    inputs = {
        "prompt_ids": data["prompt"].to(dev),
        "prompt_mask": torch.ones_like(data["prompt"]).to(dev),
        "completion_ids": data["completion"].to(dev),
        "completion_mask": data["cmask"].to(dev),
        "advantages": data["adv"].to(dev),
        "old_per_token_logps": data["old"].to(dev),
    }
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def step() -> float:
        loss = s._compute_loss(model, inputs)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def ours_step_fn(model: torch.nn.Module, data: dict, args: argparse.Namespace):
    B, P = args.batch, args.prompt
    dev = args.device
    ids = torch.cat([data["prompt"], data["completion"]], 1)
    attention = torch.cat([torch.ones_like(data["prompt"]), data["cmask"]], 1)
    mask = torch.cat([torch.zeros(B, P), data["cmask"].float()], 1)
    logp_old = torch.cat([torch.zeros(B, P), data["old"]], 1)
    adv = data["adv"][:, None] * mask
    inputs = UpdateInputs(ids.to(dev), attention.to(dev), mask.to(dev), logp_old.to(dev), adv.to(dev))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    loss_cfg = LossConfig(aggregation="seq-mean-token-mean", entropy_coef=args.ours_entropy)

    def step() -> float:
        m = ppo_update(model, opt, inputs, loss_config=loss_cfg, micro_batch_size=B, max_grad_norm=1.0)
        return m["loss/total"]

    return step


def interleaved(steps: dict, iters: int, warmup: int, device: str) -> dict[str, float]:
    """Median seconds per update of each side, alternating sides every iteration (fair under CPU noise)."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(iters):
        for name, fn in steps.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--completion", type=int, default=192)
    p.add_argument("--iters", type=int, default=10, help="timed updates per side (interleaved; median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--ours-entropy", type=float, default=0.0, help="entropy_coef for our side (TRL always computes it)")
    args = p.parse_args()

    import trl

    base = build_model(args)
    data = make_batch(args)
    ours = ours_step_fn(copy.deepcopy(base), data, args)
    theirs = trl_step_fn(copy.deepcopy(base), data, args)
    # same loss value on the first step (same weights, same batch): a check that both compute the same thing
    l_ours, l_trl = ours(), theirs()
    best = interleaved({"stepgym": ours, "trl": theirs}, args.iters, args.warmup, args.device)
    tokens = args.batch * (args.prompt + args.completion)
    n_params = sum(p.numel() for p in base.parameters())
    print(
        f"torch {torch.__version__}, trl {trl.__version__}, {platform.processor() or platform.machine()}, "
        f"threads {torch.get_num_threads()}, device {args.device}, dtype {args.dtype}"
    )
    print(f"model: Qwen3 hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}, {n_params / 1e6:.2f}M params")
    print(f"batch: {args.batch} x ({args.prompt} prompt + {args.completion} completion) = {tokens} tokens")
    print(f"first-step loss: stepgym {l_ours:.6f}  trl {l_trl:.6f}")
    for name, sec in best.items():
        print(f"{name:8s} {sec * 1e3:8.1f} ms/update (median)  {tokens / sec:10.0f} tokens/s")
    print(f"ratio stepgym/trl tokens/s: {best['trl'] / best['stepgym']:.2f}x")


if __name__ == "__main__":
    main()
