"""GPU training throughput: tokens/s and MFU of the trainer's update on a random-init Qwen3-0.6B-shaped model.

One measured step = what ``trainers/grpo.py`` does after the rollout: the no-grad ``logp_old``
forward over every row (``compute_logprobs``), then ``ppo_update`` (1 epoch, 1 mini-batch,
micro-batches with gradient accumulation, clipped surrogate, AdamW step) -- on synthetic rows of
``--prompt`` observation tokens + ``--completion`` trainable tokens (right-padded, lengths drawn
in [C/2, C]). Weights are bfloat16, as ``TrainConfig(dtype="bfloat16")`` builds them.

Tokens/s counts every real (non-pad) token of the rows. MFU = model FLOPs / time / peak: per real
token, the linear layers cost 2 x (non-embedding linear parameters) FLOPs forward, attention
2 x 2 x layers x (q heads x head_dim) x (mean causal context), the LM head 2 x hidden x vocab on
trainable tokens only (the trainer scores only those); backward = 2 x forward, and the ``logp_old``
pass adds one forward. Peak: bf16 dense tensor-core FLOP/s of the GPU (H100/H200 SXM 989e12,
A100 312e12; ``--peak-tflops`` to override).

    python benchmarks/bench_gpu_train.py                      # CUDA only; Qwen3-0.6B shape, 5 steps
    python benchmarks/bench_gpu_train.py --batch 32 --micro 8 --prompt 1024 --completion 512
    python benchmarks/bench_gpu_train.py --allow-cpu --tiny --peak-tflops 1   # smoke test of the script

Without CUDA it exits with an error (unless ``--allow-cpu``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from stepgym.trainers.config import LossConfig, OptimConfig
from stepgym.trainers.optim import build_optimizer
from stepgym.trainers.update import UpdateInputs, compute_logprobs, ppo_update
from transformers import Qwen3Config, Qwen3ForCausalLM

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "A800": 312e12, "L40S": 362e12}


def qwen3_config(tiny: bool) -> Qwen3Config:
    if tiny:
        return Qwen3Config(
            vocab_size=512,
            hidden_size=64,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
        )
    # Qwen3-0.6B's shape (config.json of Qwen/Qwen3-0.6B), random init: ~0.6B parameters, 0.44B non-embedding
    return Qwen3Config(
        vocab_size=151936,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
    )


def make_rows(args: argparse.Namespace, vocab: int, device: torch.device) -> UpdateInputs:
    g = torch.Generator().manual_seed(0)
    B, P, C = args.batch, args.prompt, args.completion
    lengths = torch.randint(C // 2, C + 1, (B,), generator=g)
    comp = (torch.arange(C)[None] < lengths[:, None]).float()  # [B, C]
    ids = torch.randint(1, vocab, (B, P + C), generator=g)
    attn = torch.cat([torch.ones(B, P), comp], dim=1).long()  # [B, L]
    ids = ids * attn
    mask = torch.cat([torch.zeros(B, P), comp], dim=1)  # [B, L] trainable = completion tokens
    adv = torch.randn(B, 1, generator=g) * mask  # one advantage per row (GRPO)
    zeros = torch.zeros_like(mask)
    return UpdateInputs(ids.to(device), attn.to(device), mask.to(device), zeros.to(device), adv.to(device))


def step_flops(cfg: Qwen3Config, rows: UpdateInputs) -> float:
    """Model FLOPs of one measured step (logp_old forward + forward/backward), see the module docstring."""
    h, inter, n_layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q_dim, kv_dim = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    linear = n_layers * (h * q_dim + 2 * h * kv_dim + q_dim * h + 3 * h * inter)  # q, k, v, o, gate, up, down
    lengths = rows.attention_mask.sum(1).double()  # [B]
    tokens = float(lengths.sum())
    context = float((lengths * (lengths + 1) / 2).sum())  # sum over tokens of their causal context
    scored = float(rows.mask.sum())
    forward = 2 * linear * tokens + 4 * n_layers * q_dim * context + 2 * h * cfg.vocab_size * scored
    return 4 * forward  # logp_old forward + forward + 2x-forward backward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=5, help="measured steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="rows per step")
    p.add_argument("--micro", type=int, default=4, help="rows per forward/backward")
    p.add_argument("--prompt", type=int, default=512, help="observation tokens per row")
    p.add_argument("--completion", type=int, default=512, help="most trainable tokens per row")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak bf16 TFLOP/s (default: by GPU name)")
    p.add_argument("--allow-cpu", action="store_true", help="run without CUDA (script smoke test only)")
    p.add_argument("--tiny", action="store_true", help="a tiny Qwen3 instead of the 0.6B shape")
    args = p.parse_args()

    if torch.cuda.is_available():
        device = torch.device("cuda")
        name = torch.cuda.get_device_name(device)
    elif args.allow_cpu:
        device, name = torch.device("cpu"), "cpu"
    else:
        sys.exit(
            "bench_gpu_train.py needs a CUDA GPU (torch.cuda.is_available() is False); "
            "run it on a GPU machine, or pass --allow-cpu --tiny to smoke-test the script"
        )
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak is None:
        sys.exit(f"unknown peak bf16 FLOP/s for {name!r}; pass --peak-tflops")

    cfg = qwen3_config(args.tiny)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(cfg).to(device=device, dtype=torch.bfloat16)
    model.config.use_cache = False
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model.parameters(), OptimConfig(lr=1e-6))
    rows = make_rows(args, cfg.vocab_size, device)
    flops = step_flops(cfg, rows)
    tokens = float(rows.attention_mask.sum())
    loss = LossConfig(aggregation="seq-mean-token-mean")

    def one_step() -> dict[str, float]:
        logp_old = compute_logprobs(
            model, rows.input_ids, rows.attention_mask, micro_batch_size=args.micro, score_mask=rows.mask
        )
        inputs = UpdateInputs(rows.input_ids, rows.attention_mask, rows.mask, logp_old, rows.advantages)
        return ppo_update(model, optimizer, inputs, loss_config=loss, micro_batch_size=args.micro)

    times = []
    for i in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        metrics = one_step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    print(f"device: {name}; torch {torch.__version__}")
    print(
        f"model: Qwen3 {'tiny' if args.tiny else '0.6B shape'}, {n_params / 1e6:.1f}M parameters, bfloat16 weights; "
        f"batch {args.batch} rows x ({args.prompt} + <= {args.completion}) tokens, micro-batch {args.micro}"
    )
    print(f"step time (median of {len(times)}): {t:.3f} s; loss/total {metrics['loss/total']:.4g}")
    print(f"tokens/s: {tokens / t:,.0f}  ({tokens:,.0f} real tokens per step)")
    print(f"MFU: {flops / t / peak:.1%}  ({flops / t / 1e12:.1f} TFLOP/s of {peak / 1e12:.0f} peak bf16)")
    print(f"peak GPU memory: {mem:.1f} GiB")


if __name__ == "__main__":
    main()
