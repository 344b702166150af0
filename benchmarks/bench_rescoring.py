"""Teacher-rescoring cost: efficient inline / prefix vs the floor and vs per-step re-encoding.

Run: ``python benchmarks/bench_rescoring.py [--repeats 5] [--device cpu]``.

Trajectories in the concat layout: a prompt of ``--prompt`` tokens, then per step ``--step`` generated
tokens and ``--obs`` observation tokens; a hindsight block of ``--hindsight`` tokens; ``--rows`` rows
per batch; 4, 8 and 16 steps; a tiny and a ~10M-parameter random Qwen3 (sdpa attention).

Columns (times are the minimum over repeats, ratios of those):

* ``floor``: one decoder forward over ``L + sum_k (|H| + |step_k|)`` tokens per row plus the LM head
  on the target tokens -- the least work the inline teacher context needs;
* ``inline``: :func:`stepgym.distill.rescore.teacher_logprobs` (shared forward + one packed pass);
* ``naive``: :func:`~stepgym.distill.rescore.teacher_logprobs_naive` (one forward per step);
* ``prefix`` vs ``floor_prefix`` (one forward over ``L + |H|`` plus the head on the targets).

Targets (issue 6): inline <= 1.3x floor and >= 3x faster than naive at >= 8 steps; prefix <= 1.1x.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from stepgym.distill.rescore import teacher_logprobs, teacher_logprobs_naive
from stepgym.envs.records import TokenSequence
from transformers import Qwen3Config, Qwen3ForCausalLM

MODELS = {
    "tiny": dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16),
    "10M": dict(vocab_size=8192, hidden_size=256, intermediate_size=704, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, head_dim=32, tie_word_embeddings=False),
}  # fmt: skip


def make_row(g: torch.Generator, vocab: int, n_steps: int, prompt: int, step: int, obs: int) -> TokenSequence:
    ids, lm, si = [], [], []
    ids += torch.randint(0, vocab, (prompt,), generator=g).tolist()
    lm += [0] * prompt
    si += [-1] * prompt
    for k in range(n_steps):
        ids += torch.randint(0, vocab, (step + obs,), generator=g).tolist()
        lm += [1] * step + [0] * obs
        si += [k] * step + [-1] * obs
    n = len(ids)
    return TokenSequence(ids=ids, loss_mask=lm, logprobs=[0.0] * n, step_index=si, action_mask=[0] * n)


def best(repeats: int, device: str, fn, *a, **kw) -> float:
    fn(*a, **kw)  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(*a, **kw)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


@torch.no_grad()
def floor_forward(model, rows: int, n_tokens: int, n_targets: int, vocab: int, device: str) -> None:
    ids = torch.randint(0, vocab, (rows, n_tokens), device=device)
    hidden = model.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state  # [B, N, H]
    logits = model.get_output_embeddings()(hidden[:, :n_targets]).float()  # [B, n_targets, V]
    torch.log_softmax(logits, -1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--step", type=int, default=32)
    ap.add_argument("--obs", type=int, default=16)
    ap.add_argument("--hindsight", type=int, default=32)
    ap.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    dev = args.device
    cpu = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    hw = torch.cuda.get_device_name() if dev == "cuda" else cpu
    print(f"# rescoring benchmark on {hw}; torch {torch.__version__}; seed {args.seed}; rows {args.rows}; ")
    print(f"# prompt {args.prompt}, step {args.step}, obs {args.obs}, |H| {args.hindsight}; min of {args.repeats}")
    print(
        "| model | params | steps | L | floor ms | inline ms | inline/floor | naive ms | naive/inline "
        "| prefix ms | floor_prefix ms | prefix/floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(args.seed)
        model = Qwen3ForCausalLM(Qwen3Config(**MODELS[name], attn_implementation="sdpa")).to(dev).eval()
        params = sum(p.numel() for p in model.parameters())
        vocab = MODELS[name]["vocab_size"]
        for n in args.steps:
            g = torch.Generator().manual_seed(args.seed + n)
            rows = [make_row(g, vocab, n, args.prompt, args.step, args.obs) for _ in range(args.rows)]
            H = [torch.randint(0, vocab, (args.hindsight,), generator=g).tolist() for _ in rows]
            L = len(rows[0])
            n_tgt = n * args.step
            r, d = args.repeats, dev
            floor = best(r, d, floor_forward, model, args.rows, L + n * (args.hindsight + args.step), n_tgt, vocab, d)
            inline = best(r, d, teacher_logprobs, model, rows, H)
            naive = best(max(1, r // 2), d, teacher_logprobs_naive, model, rows, H)
            prefix = best(r, d, teacher_logprobs, model, rows, H, placement="prefix")
            floor_p = best(r, d, floor_forward, model, args.rows, L + args.hindsight, n_tgt, vocab, d)
            print(
                f"| {name} | {params / 1e6:.2f}M | {n} | {L} | {floor * 1e3:.1f} | {inline * 1e3:.1f} | "
                f"{inline / floor:.2f}x | {naive * 1e3:.1f} | {naive / inline:.2f}x | {prefix * 1e3:.1f} | "
                f"{floor_p * 1e3:.1f} | {prefix / floor_p:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
