"""Cross-tokenizer teacher rescoring: a teacher with another vocabulary scores the student's tokens by their text.

ATOD (ALGORITHMS.md §10) distils a larger teacher into the policy, e.g. SmolLM2-135M into the tiny
model, whose tokenizers differ: the teacher cannot score the student's token ids. [recon] (the
abstract is silent; this is our choice): the teacher scores the *text* of the student's row instead.

1. Each student token's text: decode the row token by token (a token that ends inside a multi-byte
   character decodes to U+FFFD, so it is grouped with the following tokens until the character is
   complete; the group's text goes to its last token). The pieces must concatenate to the decoded
   row (true for byte-level BPE tokenizers: GPT-2, Qwen, SmolLM2, Llama 3); otherwise we refuse.
2. The teacher tokenizes that text (the row's chat template, observations and all, verbatim; with
   ``placement="prompt"`` a hindsight text first) and runs one forward; the same per-token decoding
   gives each teacher token's character span. Characters the teacher's tokenizer drops or changes
   (control characters a random student samples) are aligned by :mod:`difflib`'s matching blocks.
3. Alignment by character spans: the positions where both a student token and a teacher token end
   are common boundaries, cutting the text into *chunks* (one token each on both sides when the two
   tokenizers agree there). A chunk's teacher log-prob is the sum over its teacher tokens (the
   log-prob of the chunk's text, exactly), spread evenly over its student tokens. So the teacher
   log-prob summed over any chunk-aligned span (a step, usually) is the teacher's log-prob of that
   span's text, the same quantity as the student's sum; single tokens inside a longer chunk get the
   chunk's mean.

Why text and not a shared tokenizer: it keeps any student (the tiny model's own ~2k vocabulary,
cheap to train) and any teacher; the price is this alignment, which is exact only per chunk.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import torch
from stepgym.distill.rescore import Placement
from stepgym.distill.segment import Target, step_spans
from stepgym.envs.records import TokenSequence
from torch import nn

__all__ = ["char_ends", "chunk_logprobs", "cross_tokenizer_logprobs"]

_MAX_GROUP = 8
"""Most tokens grouped while a multi-byte character is incomplete."""


def char_ends(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[int]]:
    """The text of ``ids`` and, per token, the character offset where its text ends.

    The text is decoded token by token (grouped while a character is incomplete); it equals the decoded
    row up to how many U+FFFD an invalid byte sequence becomes.

    Raises:
        ValueError: The per-token pieces do not concatenate to the decoded text (a tokenizer whose
            decoding depends on neighbours, e.g. SentencePiece's leading-space handling).
    """

    def dec(x: list[int]) -> str:
        return tokenizer.decode(x, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    pieces: list[str] = []
    ends: list[int] = []
    pending: list[int] = []
    n = 0
    for i, tok in enumerate(ids):
        pending.append(int(tok))
        text = dec(pending)
        if text.endswith("\ufffd") and i + 1 < len(ids) and len(pending) < _MAX_GROUP:
            continue  # a multi-byte character is not complete yet: wait for the next token
        pieces.append(text)
        n += len(text)
        ends += [n] * len(pending)
        pending = []
    text = "".join(pieces)
    # invalid byte sequences (a random policy samples them) may decode to another number of U+FFFD in one go;
    # anything else that differs (SentencePiece dropping leading spaces per piece) has no character spans
    if text.replace("\ufffd", "") != dec(list(map(int, ids))).replace("\ufffd", ""):
        raise ValueError(
            f"{type(tokenizer).__name__}'s per-token decoding does not concatenate to the decoded text, so tokens "
            "cannot be given character spans; cross-tokenizer rescoring needs a byte-level BPE tokenizer on both "
            "sides (GPT-2, Qwen, SmolLM2, Llama 3 style), or give the teacher the policy's tokenizer"
        )
    return text, ends


def chunk_logprobs(
    student_ends: Sequence[int],
    teacher_ends: Sequence[int],
    teacher_logp: torch.Tensor,  # [M] teacher log-prob of each teacher token (0 for the first: no context)
) -> torch.Tensor:  # [N]
    """Teacher log-probs on the student's tokens by character chunks (the module docstring, step 3).

    Args:
        student_ends: Per student token, the character offset where it ends (non-decreasing), in the
            teacher text's coordinates.
        teacher_ends: The same for each teacher token.
        teacher_logp: Each teacher token's log-prob.

    Returns:
        Per student token, its chunk's summed teacher log-prob divided by the chunk's student tokens.
    """
    common = sorted(set(student_ends) & set(teacher_ends))
    if not common or common[-1] < max(max(student_ends, default=0), max(teacher_ends, default=0)):
        common.append(max(max(student_ends, default=0), max(teacher_ends, default=0)))
    bounds = torch.tensor(common, dtype=torch.long)  # [C]
    s_chunk = torch.searchsorted(bounds, torch.tensor(list(student_ends), dtype=torch.long))  # [N]
    t_chunk = torch.searchsorted(bounds, torch.tensor(list(teacher_ends), dtype=torch.long))  # [M]
    C = len(common)
    tot = torch.zeros(C, dtype=torch.float64).index_add_(0, t_chunk, teacher_logp.double().cpu())  # [C]
    cnt = torch.zeros(C, dtype=torch.float64).index_add_(0, s_chunk, torch.ones(len(student_ends), dtype=torch.float64))
    return (tot / cnt.clamp(min=1))[s_chunk].float()  # [N]


def _char_map(src: str, dst: str) -> list[int]:
    """For each character offset of ``src`` (0..len), the matching offset of ``dst``.

    From difflib's matching blocks; offsets inside a mismatch take the last matched one, so the map is non-decreasing.
    """
    out = [-1] * (len(src) + 1)
    out[0] = 0
    for a, b, n in difflib.SequenceMatcher(None, src, dst, autojunk=False).get_matching_blocks():
        for i in range(n + 1):
            out[a + i] = b + i
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1])
    return out


@torch.no_grad()
def cross_tokenizer_logprobs(
    model: nn.Module,
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    rows: Sequence[TokenSequence],
    *,
    hindsight_texts: Sequence[str | None] | None = None,
    target: Target = "step",
    placement: Placement = "prompt",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher log-probs of the student rows' target tokens, scored by a teacher with another tokenizer.

    Args:
        model: The teacher (a causal LM of ``teacher_tokenizer``).
        teacher_tokenizer: Its tokenizer.
        student_tokenizer: The tokenizer of the rows' ids.
        rows: Token sequences (either layout); outputs are right-padded to the longest row ``L``.
        hindsight_texts: Per row, a text the teacher reads before the row (``placement="prompt"`` only), or ``None``.
        target: ``"step"`` or ``"action"`` (:mod:`stepgym.distill.segment`).
        placement: Only ``"prompt"`` (the hindsight text before the row's text) when a hindsight text is given.
        temperature: Logits are divided by it before the softmax.

    Returns:
        ``(logp_teacher [B, L], target_mask [B, L])``; ``logp_teacher`` is 0 off the targets.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    texts = list(hindsight_texts) if hindsight_texts is not None else [None] * len(rows)
    if len(texts) != len(rows):
        raise ValueError(f"hindsight_texts has {len(texts)} entries but there are {len(rows)} rows (one per row)")
    if any(texts) and placement != "prompt":
        raise ValueError(
            f"cross-tokenizer rescoring puts a hindsight text before the row only (placement 'prompt'), got "
            f"{placement!r}; set teacher.placement='prompt' or teacher.hindsight=[]"
        )
    dev = next(model.parameters()).device
    L = max((len(r.ids) for r in rows), default=0)
    out = torch.zeros(len(rows), L)
    mask = torch.zeros(len(rows), L)
    for b, row in enumerate(rows):
        tg = [t for s in step_spans(row, target) for t in s.targets]
        if not tg:
            continue
        mask[b, tg] = 1.0
        text, s_ends = char_ends(student_tokenizer, row.ids)
        head = texts[b] or ""
        t_ids = teacher_tokenizer(head + text, add_special_tokens=False)["input_ids"]
        t_text, t_ends = char_ends(teacher_tokenizer, t_ids)
        if t_text != head + text:  # the teacher's tokenizer dropped or changed characters (e.g. control characters)
            to_student = _char_map(t_text, head + text)
            t_ends = [to_student[e] for e in t_ends]
        ids = torch.tensor([t_ids], dtype=torch.long, device=dev)  # [1, M]
        logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float() / temperature  # [M-1, V_T]
        lp = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).squeeze(-1)  # [M-1]
        t_logp = torch.cat([lp.new_zeros(1), lp]).cpu()  # [M] the first token has no context
        per_tok = chunk_logprobs([e + len(head) for e in s_ends], t_ends, t_logp)  # [N]
        out[b, tg] = per_tok[tg]
    return out, mask
