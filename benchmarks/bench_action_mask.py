"""Action token mask cost for long actions: the linear mask vs the quadratic prefix decoding it replaced.

An action of N tokens is ``<think>`` reasoning plus one ``<action>...</action>`` holding most of the
text, tokenized with a real byte-level BPE tokenizer (SmolLM2's, 49k vocabulary; ``--tokenizer tiny``
for the test tokenizer). ``linear`` is ``stepgym.agents.render.action_token_mask`` (incremental
detokenization); ``prefix`` is the old rule (decode ``ids[:i+1]`` for every token), timed only up to
``--prefix-max`` tokens because it is quadratic. Sizes run interleaved, median of ``--repeats``.

    python benchmarks/bench_action_mask.py                      # 2k / 8k / 32k tokens
    python benchmarks/bench_action_mask.py --sizes 2000 8000 32000 --prefix-max 2000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Sequence
from typing import Any

from stepgym.agents.models import load_tokenizer
from stepgym.agents.render import action_char_span, action_token_mask

TAGS = ("action", "search", "answer")
WORDS = "go to the desk take the mug 1 from shelf 3 then é ü 日本 and look around carefully".split()


def prefix_mask(tokenizer: Any, ids: Sequence[int], tags: Sequence[str]) -> list[int]:
    """The replaced implementation: one decode of the whole prefix per token (quadratic)."""
    ids = list(ids)
    text = tokenizer.decode(ids, skip_special_tokens=False)
    span = action_char_span(text, tags)
    mask = [0] * len(ids)
    if span is None:
        return mask
    start, end = span
    prev = 0
    for i in range(len(ids)):
        cur = len(tokenizer.decode(ids[: i + 1], skip_special_tokens=False))
        if prev < end and cur > start and cur > prev:
            mask[i] = 1
        prev = max(prev, cur)
        if prev >= end:
            break
    return mask


def action_ids(tokenizer: Any, n_tokens: int) -> list[int]:
    """About ``n_tokens`` ids: 10% reasoning, the rest inside one action tag, closed at the end."""
    body, think = [], []
    i = 0
    while len(tokenizer(" ".join(think), add_special_tokens=False)["input_ids"]) < n_tokens // 10:
        think += WORDS[i % len(WORDS) : i % len(WORDS) + 8]
        i += 8
    per_word = max(1, len(tokenizer(" ".join(WORDS), add_special_tokens=False)["input_ids"]) / len(WORDS))
    body = [WORDS[j % len(WORDS)] for j in range(int(n_tokens * 0.9 / per_word))]
    text = f"<think>{' '.join(think)}</think> <action>{' '.join(body)}</action>"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", default="smollm2-135m")
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    ap.add_argument("--prefix-max", type=int, default=2000, help="time the quadratic rule only up to this size")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tok = load_tokenizer(args.tokenizer)
    cases = {n: action_ids(tok, n) for n in args.sizes}
    times: dict[tuple[str, int], list[float]] = {}
    extra: dict[int, tuple[int, int]] = {}
    for _ in range(args.repeats):
        for n, ids in cases.items():
            t0 = time.perf_counter()
            fast = action_token_mask(tok, ids, TAGS)
            times.setdefault(("linear", n), []).append(time.perf_counter() - t0)
            if n <= args.prefix_max:
                t0 = time.perf_counter()
                slow = prefix_mask(tok, ids, TAGS)
                times.setdefault(("prefix", n), []).append(time.perf_counter() - t0)
                # the prefix rule left the later tokens of a multi-byte character unmarked; nothing else differs
                extra[n] = sum(a > b for a, b in zip(fast, slow)), sum(a < b for a, b in zip(fast, slow))
    load = os.getloadavg()
    print(
        f"tokenizer {args.tokenizer}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; median of {args.repeats}"
    )
    print("| action tokens | marked | linear mask (s) | prefix decoding (s) | only linear / only prefix marks |")
    print("|---|---|---|---|---|")
    for n, ids in cases.items():
        lin = statistics.median(times[("linear", n)])
        pre = times.get(("prefix", n))
        marked = sum(action_token_mask(tok, ids, TAGS))
        pre_s = f"{statistics.median(pre):.2f}" if pre else "not run (quadratic)"
        diff = "{} / {}".format(*extra[n]) if n in extra else "-"
        print(f"| {len(ids):,} | {marked:,} | {lin:.3f} | {pre_s} | {diff} |")


if __name__ == "__main__":
    main()
