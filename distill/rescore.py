"""Teacher rescoring: log-probs of the sampled target tokens under a hindsight-enriched context.

For step ``k`` of a row with ids ``x`` the student context is ``x[:s_k]`` (everything before the
step, ``s_k`` = the step's first token) and the teacher context inserts a hindsight block ``H``
(ALGORITHMS.md §4.2):

* ``placement="inline"`` (the published method): ``x[:s_k] + H + x[s_k:t]`` for each step, so the
  teacher log-prob of target token ``x[t]`` is ``log p(x[t] | x[:s_k], H, x[s_k:t])`` with position
  ids ``0..s_k-1`` then ``s_k, s_k+1, ...`` for ``H + x[s_k:]`` (exactly what a forward over that
  concatenated sequence would use);
* ``placement="prefix"`` (our variant [recon]): ``H`` once before the row's first generated token,
  one forward over ``L + |H|`` tokens;
* ``placement="prompt"`` (SDAR, ALGORITHMS.md §6: privileged context prepended to the prompt):
  ``H + x``, ``H`` before the row's first token, one forward over ``|H| + L`` tokens. [recon: on ids,
  so ``H`` precedes the chat template's first turn; the paper writes its skills into the prompt text.]

The efficient inline path (:func:`teacher_logprobs`) runs **one** forward over each row, keeping its
KV cache, then **one** packed forward over all steps' ``H + step tokens`` blocks. A custom 4D
attention mask lets each block see only the cached prefix ``x[:s_k]`` of its own step plus its own
earlier block tokens (causal); position ids continue from ``s_k``. Cost: ``L + sum_k (|H| + |step_k|)``
tokens instead of ``sum_k (s_k + |H| + |step_k|)`` for per-step re-encoding
(:func:`teacher_logprobs_naive`, the reference the tests compare against to 1e-5 in fp32). The
student's own log-probs come from the trainer's one scorer, ``stepgym.trainers.update.token_logprobs``.

Rescoring works on token ids only; turn hindsight text into ids with
:func:`stepgym.distill.hindsight.render_hindsight`. Log-probs are ``log_softmax(logits / temperature)``.
A model needs a decoder (``model.get_decoder()``) returning hidden states, an output embedding
(``model.get_output_embeddings()``) and 4D-mask support (transformers ``attn_implementation``
``"eager"`` or ``"sdpa"``; ``flash_attention_2`` ignores custom masks). Models with final logit
soft-capping are not supported.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from stepgym.distill.segment import StepSpan, Target, step_spans
from stepgym.envs.records import TokenSequence
from torch import nn

__all__ = [
    "ContextView",
    "Placement",
    "TeacherSnapshot",
    "context_view",
    "teacher_logprobs",
    "teacher_logprobs_naive",
]

log = logging.getLogger(__name__)

Placement = Literal["inline", "prefix", "prompt"]
PLACEMENTS: tuple[str, ...] = ("inline", "prefix", "prompt")


# =========================================================================== model plumbing
def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module, torch.device]:
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if attn is not None and attn not in ("eager", "sdpa"):
        raise ValueError(
            f"teacher rescoring needs custom 4D attention masks, which attn_implementation={attn!r} does not "
            "support; load the model with attn_implementation='sdpa' (or 'eager')"
        )
    decoder = model.get_decoder()  # type: ignore[operator]
    head = model.get_output_embeddings()  # type: ignore[operator]
    if decoder is None or head is None or decoder is model:
        raise TypeError(f"{type(model).__name__} has no separate decoder / output embedding; pass a *ForCausalLM model")
    return decoder, head, next(model.parameters()).device


def _token_logprobs(
    head: nn.Module,
    hidden: torch.Tensor,  # [N, H] hidden state that predicts each token
    tokens: torch.Tensor,  # [N] long
    temperature: float,
    chunk: int = 2048,
) -> torch.Tensor:  # [N]
    """``log_softmax(head(hidden) / temperature)[token]``, chunked to bound the [N, V] logits."""
    out = []
    for i in range(0, hidden.shape[0], chunk):
        logits = head(hidden[i : i + chunk]).float() / temperature  # [n, V]
        lp = torch.log_softmax(logits, dim=-1)  # [n, V]
        out.append(lp.gather(-1, tokens[i : i + chunk, None]).squeeze(-1))  # [n]
    return torch.cat(out) if out else hidden.new_zeros(0)


def _pad(seqs: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:  # [B, Lmax] long
    L = max((len(s) for s in seqs), default=0)
    out = torch.zeros(len(seqs), L, dtype=torch.long, device=device)
    for b, s in enumerate(seqs):
        out[b, : len(s)] = torch.as_tensor(list(s), dtype=torch.long, device=device)
    return out


def _first_generated(row: TokenSequence) -> int:
    """Position of the row's first step token (where the ``prefix`` hindsight goes)."""
    return next(p for p, k in enumerate(row.step_index) if k >= 0)


def _insert_at(row: TokenSequence, placement: Placement) -> int:
    """Where a once-per-row hindsight block goes: before the prompt (0) or before the first step token."""
    return 0 if placement == "prompt" else _first_generated(row)


def _check_temperature(temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _chunks(n: int, size: int | None) -> list[range]:
    size = n if not size else size
    return [range(i, min(i + size, n)) for i in range(0, n, max(size, 1))]


# =========================================================================== teacher (efficient)
@dataclass(frozen=True)
class _Plan:
    """Per row: its target spans and the hindsight ids (None/empty = teacher is the student)."""

    spans: list[StepSpan]
    hindsight: list[int] | None


def _plans(rows: Sequence[TokenSequence], hindsight_ids: Sequence[Sequence[int] | None], target: Target) -> list[_Plan]:
    if len(hindsight_ids) != len(rows):
        raise ValueError(f"hindsight_ids has {len(hindsight_ids)} entries but there are {len(rows)} rows (one per row)")
    return [_Plan(step_spans(r, target), list(h) if h else None) for r, h in zip(rows, hindsight_ids)]


def _target_mask(plans: list[_Plan], L: int, device: torch.device) -> torch.Tensor:  # [B, L]
    m = torch.zeros(len(plans), L, device=device)
    for b, p in enumerate(plans):
        for s in p.spans:
            m[b, list(s.targets)] = 1.0
    return m


@torch.no_grad()
def teacher_logprobs(
    model: nn.Module,
    rows: Sequence[TokenSequence],
    hindsight_ids: Sequence[Sequence[int] | None],
    *,
    target: Target = "step",
    placement: Placement = "inline",
    temperature: float = 1.0,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher log-probs of every target token, batched (one shared + one packed forward).

    Args:
        model: The teacher (a policy snapshot or the live policy), a causal LM with 4D-mask support.
        rows: Token sequences of either layout; outputs are right-padded to the longest row ``L``.
        hindsight_ids: Per row, the hindsight block's ids, or ``None`` (teacher context = student
            context; the row still gets its student log-probs on its targets).
        target: ``"step"`` or ``"action"`` (see :mod:`stepgym.distill.segment`).
        placement: ``"inline"`` (hindsight before every step), ``"prefix"`` (once before the
            row's first generated token) or ``"prompt"`` (once before the row's first token).
        temperature: Logits are divided by it before the softmax.
        batch_size: Rows per forward (``None`` = all at once).

    Returns:
        ``(logp_teacher [B, L], target_mask [B, L])``; ``logp_teacher`` is 0 off the targets.
    """
    _check_temperature(temperature)
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(map(repr, PLACEMENTS))}, got {placement!r}")
    decoder, head, dev = _parts(model)
    plans = _plans(rows, hindsight_ids, target)
    L = max((len(r) for r in rows), default=0)
    out = torch.zeros(len(rows), L, device=dev)
    for idx in _chunks(len(rows), batch_size):
        plain = [i for i in idx if plans[i].hindsight is None or not plans[i].spans]
        hinted = [i for i in idx if i not in plain]
        if plain:
            _score_plain(decoder, head, rows, plans, plain, out, temperature, dev)
        if hinted and placement == "inline":
            _score_inline(decoder, head, rows, plans, hinted, out, temperature, dev)
        elif hinted:
            _score_prefix(decoder, head, rows, plans, hinted, out, temperature, dev, placement)
    return out, _target_mask(plans, L, dev)


def _scatter_targets(
    out: torch.Tensor, rows_b: list[int], qs: list[list[int]], ps: list[list[int]], hidden, ids, head, temperature
) -> None:
    """For row ``rows_b[j]``: target position ``ps[j][n]`` is predicted by hidden[j, qs[j][n]] and is ids[j, qs+1]."""
    bi = torch.tensor([j for j, q in enumerate(qs) for _ in q], dtype=torch.long, device=out.device)
    qi = torch.tensor([x for q in qs for x in q], dtype=torch.long, device=out.device)
    if bi.numel() == 0:
        return
    lp = _token_logprobs(head, hidden[bi, qi], ids[bi, qi + 1], temperature)  # [N]
    ob = torch.tensor([rows_b[j] for j, q in enumerate(qs) for _ in q], dtype=torch.long, device=out.device)
    op = torch.tensor([x for p in ps for x in p], dtype=torch.long, device=out.device)
    out[ob, op] = lp.to(out.dtype)


def _score_plain(decoder, head, rows, plans, sel, out, temperature, dev) -> None:
    """Rows without hindsight: teacher == student, one forward."""
    ids = _pad([rows[i].ids for i in sel], dev)  # [b, Lb]
    hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state  # [b, Lb, H]
    ps = [[t for s in plans[i].spans for t in s.targets] for i in sel]
    qs = [[t - 1 for t in p] for p in ps]
    _scatter_targets(out, sel, qs, ps, hidden, ids, head, temperature)


def _score_prefix(decoder, head, rows, plans, sel, out, temperature, dev, placement) -> None:
    """Hindsight once per row: one forward over ``x[:s0] + H + x[s0:]`` (``s0`` = 0 for ``prompt``)."""
    seqs, ps, qs = [], [], []
    for i in sel:
        x, h = rows[i].ids, plans[i].hindsight or []
        s0 = _insert_at(rows[i], placement)
        seqs.append(list(x[:s0]) + h + list(x[s0:]))
        p = [t for s in plans[i].spans for t in s.targets]
        ps.append(p)
        qs.append([t + len(h) - 1 for t in p])  # target t sits at t + |H| in the teacher sequence
    ids = _pad(seqs, dev)  # [b, L + |H|]
    hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state  # [b, L+|H|, H]
    _scatter_targets(out, sel, qs, ps, hidden, ids, head, temperature)


def _score_inline(decoder, head, rows, plans, sel, out, temperature, dev) -> None:
    """Shared forward (KV cache) + one packed forward over every step's ``H + step`` block."""
    # ---- 1. shared forward over each row, keep the KV cache
    ids = _pad([rows[i].ids for i in sel], dev)  # [b, Lb]
    b, Lb = ids.shape
    cache = decoder(input_ids=ids, use_cache=True).past_key_values

    # ---- 2. pack the blocks: block k of row j = H_j + x[s_k:e_k], positions s_k + 0,1,2,...
    packed, pos, blk_of, blk_start, ps, qs = [], [], [], [], [], []
    for i in sel:
        x, h = rows[i].ids, plans[i].hindsight or []
        tok, pp, bo, bs, p_list, q_list = [], [], [], [], [], []
        for nb, s in enumerate(plans[i].spans):
            off = len(tok)
            block = h + list(x[s.start : s.end])
            tok += block
            pp += range(s.start, s.start + len(block))
            bo += [nb] * len(block)
            bs.append(s.start)
            for t in s.targets:  # x[t] sits at off + |H| + (t - s_k); predicted by the token before
                p_list.append(t)
                q_list.append(off + len(h) + (t - s.start) - 1)
        packed.append(tok)
        pos.append(pp)
        blk_of.append(bo)
        blk_start.append(bs)
        ps.append(p_list)
        qs.append(q_list)
    P = max(len(t) for t in packed)
    pids = _pad(packed, dev)  # [b, P]
    position_ids = _pad(pos, dev)  # [b, P] (padding at position 0)

    # ---- 3. 4D mask [b, 1, P, Lb + P]: cached key j < s_k of the query's step; packed keys of the same
    # block at or before the query. Padding queries see only themselves (no all-masked rows -> no NaN).
    allow = torch.zeros(b, P, Lb + P, dtype=torch.bool, device=dev)
    ar_L = torch.arange(Lb, device=dev)
    ar_P = torch.arange(P, device=dev)
    for j in range(b):
        n = len(packed[j])
        bo = torch.tensor(blk_of[j], dtype=torch.long, device=dev)  # [n]
        starts = torch.tensor(blk_start[j], dtype=torch.long, device=dev)[bo]  # [n]
        allow[j, :n, :Lb] = ar_L[None, :] < starts[:, None]  # [n, Lb]
        same = (bo[:, None] == bo[None, :]) & (ar_P[:n, None] >= ar_P[None, :n])  # [n, n]
        allow[j, :n, Lb : Lb + n] = same
        allow[j, n:, Lb + n :] = torch.eye(P - n, dtype=torch.bool, device=dev)
    dtype = next(decoder.parameters()).dtype
    if getattr(decoder.config, "_attn_implementation", "sdpa") == "eager":
        mask = torch.zeros(b, 1, P, Lb + P, dtype=dtype, device=dev)
        mask.masked_fill_(~allow[:, None], torch.finfo(dtype).min)
    else:
        mask = allow[:, None]  # bool: True = attend

    # ---- 4. one packed forward on top of the cache; gather the targets
    hidden = decoder(
        input_ids=pids, position_ids=position_ids, attention_mask=mask, past_key_values=cache, use_cache=True
    ).last_hidden_state  # [b, P, H]
    _scatter_targets(out, sel, qs, ps, hidden, pids, head, temperature)


# =========================================================================== the context view as rows
@dataclass(frozen=True)
class ContextView:
    """The rows with their hindsight block inserted once (``prefix``/``prompt`` placement), for a forward *with* grad.

    UCOB (ALGORITHMS.md §10) trains the policy under both views, so the context view must be a batch
    the update can run forward on itself; the ``inline`` placement has one block per step and no
    single such row.
    """

    input_ids: torch.Tensor
    """[B, Lv] long: ``x[:s0] + H + x[s0:]`` per row, right-padded."""
    attention_mask: torch.Tensor
    """[B, Lv] 1 on real tokens."""
    position: torch.Tensor
    """[B, L] long: where row token ``x[l]`` sits in the view row (``l + |H|`` from ``s0`` on), -1 on padding."""

    def rows(self, index: torch.Tensor) -> ContextView:
        """The subset of rows ``index`` (a 1-D long tensor)."""
        return ContextView(self.input_ids[index], self.attention_mask[index], self.position[index])


def context_view(
    rows: Sequence[TokenSequence],
    hindsight_ids: Sequence[Sequence[int] | None],
    *,
    placement: Placement,
    length: int | None = None,
    device: torch.device | str = "cpu",
) -> ContextView:
    """The rows as the teacher of ``placement`` sees them: the same sequences :func:`teacher_logprobs` scores.

    Args:
        rows: Token sequences (either layout).
        hindsight_ids: Per row, the block's ids (``None``/empty: the row unchanged).
        placement: ``"prefix"`` (before the row's first generated token) or ``"prompt"`` (before its first token).
        length: ``L`` of the batch's rows (``position`` is ``[B, L]``); default the longest row.
        device: Where the tensors go.

    Raises:
        ValueError: ``placement`` is ``inline`` (one block per step: no single view row exists).
    """
    if placement not in ("prefix", "prompt"):
        raise ValueError(
            f"a context view as rows needs placement 'prefix' or 'prompt' (one block per row), got {placement!r}; "
            "set teacher.placement='prompt'"
        )
    if len(hindsight_ids) != len(rows):
        raise ValueError(f"hindsight_ids has {len(hindsight_ids)} entries but there are {len(rows)} rows (one per row)")
    L = max((len(r) for r in rows), default=0) if length is None else length
    seqs, pos = [], torch.full((len(rows), L), -1, dtype=torch.long)
    for b, (row, h) in enumerate(zip(rows, hindsight_ids)):
        h = list(h or [])
        s0 = _insert_at(row, placement) if h and any(k >= 0 for k in row.step_index) else 0
        seqs.append(list(row.ids[:s0]) + h + list(row.ids[s0:]))
        n = len(row.ids)
        pos[b, :n] = torch.arange(n) + torch.where(torch.arange(n) >= s0, len(h), 0)
    ids = _pad(seqs, torch.device(device))  # [B, Lv]
    attn = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        attn[b, : len(s)] = 1
    return ContextView(ids, attn, pos.to(device))


# =========================================================================== teacher (naive reference)
@torch.no_grad()
def teacher_logprobs_naive(
    model: nn.Module,
    rows: Sequence[TokenSequence],
    hindsight_ids: Sequence[Sequence[int] | None],
    *,
    target: Target = "step",
    placement: Placement = "inline",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference implementation: one forward per (row, step) over ``x[:s_k] + H + x[s_k:e_k]``.

    Same arguments and outputs as :func:`teacher_logprobs`; used by the tests and the benchmark.
    """
    _check_temperature(temperature)
    decoder, head, dev = _parts(model)
    plans = _plans(rows, hindsight_ids, target)
    L = max((len(r) for r in rows), default=0)
    out = torch.zeros(len(rows), L, device=dev)
    for i, (row, plan) in enumerate(zip(rows, plans)):
        h = plan.hindsight or []
        if placement in ("prefix", "prompt") and plan.spans:
            spans = [StepSpan(-1, _insert_at(row, placement), max(s.end for s in plan.spans), ())]
            targets = [[t for s in plan.spans for t in s.targets]]
        else:
            spans, targets = plan.spans, [list(s.targets) for s in plan.spans]
        for s, tg in zip(spans, targets):
            seq = list(row.ids[: s.start]) + h + list(row.ids[s.start : s.end])
            ids = torch.tensor([seq], dtype=torch.long, device=dev)  # [1, n]
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state  # [1, n, H]
            q = [t + len(h) - 1 for t in tg]
            _scatter_targets(out, [i], [q], [tg], hidden, ids, head, temperature)
    return out, _target_mask(plans, L, dev)


# =========================================================================== teacher model
class TeacherSnapshot:
    """The teacher: a frozen copy of the policy refreshed every ``refresh_every`` training steps, or the live policy.

    StepOPSD's ``stale_ref`` (ALGORITHMS.md §4.3) refreshes every 10 training steps. ``refresh_every=0``
    means the live policy itself is the teacher (no copy). Whether the snapshot is also the KL
    reference is the trainer's separate choice. The copy is made once and refreshed in place
    (``load_state_dict``), so a copy that ``prepare`` sharded (FSDP) stays sharded; the trainer
    checkpoints :attr:`model` and :attr:`taken_at` and gives them back with :meth:`restore`.
    """

    def __init__(
        self,
        policy: nn.Module,
        refresh_every: int = 10,
        *,
        prepare: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        if refresh_every < 0:
            raise ValueError(f"refresh_every must be >= 0 (0 = live policy), got {refresh_every}")
        self.refresh_every = refresh_every
        self._model: nn.Module | None = None
        self._taken_at = -1
        if refresh_every:
            twin = copy.deepcopy(policy).eval().requires_grad_(False)
            self._model = prepare(twin) if prepare is not None else twin
            self._taken_at = 0

    def get(self, policy: nn.Module, training_step: int) -> nn.Module:
        """The teacher for ``training_step`` (refreshes the copy when ``refresh_every`` steps have passed)."""
        if self._model is None:
            return policy
        if training_step - self._taken_at >= self.refresh_every:
            self._model.load_state_dict(policy.state_dict())
            self._taken_at = training_step
            log.info("teacher snapshot refreshed at training step %d", training_step)
        return self._model

    @property
    def model(self) -> nn.Module | None:
        """The frozen copy (``None`` for the live policy)."""
        return self._model

    @property
    def taken_at(self) -> int:
        """Training step of the current snapshot (-1 for the live policy)."""
        return self._taken_at

    def restore(self, taken_at: int) -> None:
        """Set the step of a snapshot whose weights were loaded into :attr:`model` (resume)."""
        if self._model is None:
            raise ValueError("a live-policy teacher (refresh_every=0) has no snapshot to restore")
        self._taken_at = taken_at
