"""The PPO-style policy update: mini-batches, micro-batches with gradient accumulation, guards.

Given padded rows and per-token advantages (from a credit method), :func:`ppo_update` runs
``ppo_epochs`` passes; each pass shuffles the rows (seeded generator), splits them into
``mini_batches`` optimizer steps, and each optimizer step into micro-batches of
``micro_batch_size`` rows whose gradients accumulate. Every aggregation normaliser (token count,
row count, target-token count) is computed over the whole mini-batch -- and summed over processes
when ``torch.distributed`` is initialised -- so 1 micro-batch of 8 rows, 8 of 1 row, or 2
processes of 4 rows give the same gradient up to float rounding.

A non-finite loss or gradient norm raises :class:`NonFiniteError` before ``optimizer.step()``:
the weights of that optimizer step are untouched and no checkpoint is written by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from stepgym.trainers.config import LossConfig
from stepgym.trainers.credit import AuxLoss
from stepgym.trainers.distributed import is_distributed, world_size
from stepgym.trainers.losses import (
    aggregate,
    aggregation_normalizer,
    clipped_surrogate,
    entropy_from_logits,
    kl_k3,
)
from stepgym.trainers.value import clipped_value_error

__all__ = [
    "NonFiniteError",
    "UpdateInputs",
    "compute_logprobs",
    "compute_logprobs_and_values",
    "log_softmax_at",
    "ppo_update",
    "token_logprobs",
]


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN/inf; the optimizer step was not taken."""


# =========================================================================== log-probs
def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, L] long
    attention_mask: torch.Tensor,  # [B, L]
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    value_head: torch.nn.Module | None = None,
    score_mask: torch.Tensor | None = None,  # [B, L]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # ([B, L], [B, L] | None, [B, L] | None)
    """Log-prob of each token given its prefix, aligned to the token's position.

    ``logp[b, l] = log_softmax(logits[b, l-1] / T)[ids[b, l]]`` for ``l >= 1`` and 0 at ``l = 0``
    (the same quantity the rollout engine reports for sampled tokens, ``agents/policy.py``).
    ``entropy[b, l]`` is the entropy of that same distribution; ``values[b, l]`` the value head's
    output on the hidden state that *predicts* token ``l`` (position ``l-1``), so it lines up with
    the token it scores.

    With ``score_mask``, only positions where it is 1 are scored (0 elsewhere): the LM head then
    runs on those hidden states only, never materialising ``[B, L, V]`` logits (models exposing
    ``get_decoder()`` / ``get_output_embeddings()``, not FSDP-wrapped; others take the full path).
    """
    t = temperature if temperature > 0 else 1.0
    decoder = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    selective = score_mask is not None and decoder is not None and head is not None and not _is_fsdp(model)
    pad = torch.zeros(input_ids.shape[0], 1, device=input_ids.device)  # [B, 1]
    if selective:
        hidden = decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        hidden = hidden[:, :-1]  # [B, L-1, H] state l-1 predicts token l
        where = score_mask[:, 1:] > 0  # [B, L-1]
        logits = head(hidden[where]).float() / t  # [N, V]
        tok = input_ids[:, 1:][where]  # [N]
        picked = logits.gather(-1, tok[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # [N]

        def scatter(v: torch.Tensor) -> torch.Tensor:  # [N] -> [B, L]
            full = torch.zeros(where.shape, dtype=v.dtype, device=v.device).masked_scatter(where, v)  # [B, L-1]
            return torch.cat([pad.to(v.dtype), full], dim=1)

        logp = scatter(picked)
        entropy = scatter(entropy_from_logits(logits)) if with_entropy else None
        values = scatter(value_head(hidden[where]).squeeze(-1).float()) if value_head is not None else None
        return logp, entropy, values

    out = model(
        input_ids=input_ids, attention_mask=attention_mask, use_cache=False, output_hidden_states=value_head is not None
    )
    logits = out.logits[:, :-1].float() / t  # [B, L-1, V]
    targets = input_ids[:, 1:].unsqueeze(-1)  # [B, L-1, 1]
    logp = logits.gather(-1, targets).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # [B, L-1]
    logp = torch.cat([pad, logp], dim=1)  # [B, L]
    entropy = torch.cat([pad, entropy_from_logits(logits)], dim=1) if with_entropy else None  # [B, L]
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, :-1]  # [B, L-1, H]
        values = torch.cat([pad, value_head(hidden).squeeze(-1).float()], dim=1)  # [B, L]
    if score_mask is not None:
        logp = logp * score_mask
        entropy = entropy * score_mask if entropy is not None else None
        values = values * score_mask if values is not None else None
    return logp, entropy, values


def log_softmax_at(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, L] long
    attention_mask: torch.Tensor,  # [B, L]
    rows: torch.Tensor,  # [N] long
    positions: torch.Tensor,  # [N] long, >= 1
    *,
    temperature: float = 1.0,
) -> torch.Tensor:  # [N, V]
    """The full next-token log-softmax that predicts token ``input_ids[rows, positions]`` (with grad).

    For divergences over more than the sampled token (UCOB's top-K); the LM head runs on the ``N``
    predicting states only when the model exposes a decoder and is not FSDP-wrapped.
    """
    t = temperature if temperature > 0 else 1.0
    decoder = getattr(model, "get_decoder", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is not None and head is not None and not _is_fsdp(model):
        hidden = decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = head(hidden[rows, positions - 1]).float() / t  # [N, V]
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits[rows, positions - 1].float() / t  # [N, V]
    return torch.log_softmax(logits, dim=-1)


def _two_view_aux(
    model: torch.nn.Module, micro: UpdateInputs, target: torch.Tensor, temperature: float
) -> torch.Tensor:  # [b, L]
    """The per-token loss of an auxiliary term with a second view (``AuxLoss.view``).

    Both views run forward with grad and ``fn`` sees their full log-softmax at each target token (UCOB's
    bidirectional top-K term).
    """
    aux = micro.aux
    if aux is None or aux.view is None:
        raise ValueError("_two_view_aux needs an AuxLoss with a view")
    active = (target > 0) if aux.weight is None else (target > 0) & (aux.weight != 0)  # [b, L] tokens with a term
    # only the rows holding such a token run forward (at least one row, so every process runs both forwards)
    sel = active.any(dim=1).nonzero().flatten()  # [s]
    sel = sel if sel.numel() else torch.zeros(1, dtype=torch.long, device=target.device)
    r, pos = active[sel].nonzero(as_tuple=True)  # [N] r indexes sel
    rows = sel[r]  # [N] micro-batch rows
    tokens = micro.input_ids[rows, pos]  # [N]
    ids, attn = micro.input_ids[sel], micro.attention_mask[sel]
    lp_rows = log_softmax_at(model, ids, attn, r, pos, temperature=temperature)  # [N, V]
    vpos = aux.view.position[rows, pos]  # [N]
    if bool((vpos < 1).any()):
        raise ValueError("a target token has no place in the context view (ContextView.position < 1)")
    view = aux.view.rows(sel)
    lp_view = log_softmax_at(model, view.input_ids, view.attention_mask, r, vpos, temperature=temperature)  # [N, V]
    w = aux.weight[rows, pos] if aux.weight is not None else torch.ones_like(rows, dtype=lp_rows.dtype)  # [N]
    per = aux.fn(lp_rows, lp_view, tokens, w)  # [N]
    return torch.zeros(target.shape, dtype=per.dtype, device=per.device).index_put((rows, pos), per)  # [b, L]


def _is_fsdp(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(model, FSDPModule)


@torch.no_grad()
def compute_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [B, L]
    attention_mask: torch.Tensor,  # [B, L]
    *,
    micro_batch_size: int,
    temperature: float = 1.0,
    score_mask: torch.Tensor | None = None,  # [B, L]
) -> torch.Tensor:  # [B, L]
    """:func:`token_logprobs` without grad, in micro-batches (old-policy and reference log-probs)."""
    parts = [
        token_logprobs(
            model,
            input_ids[i : i + micro_batch_size],
            attention_mask[i : i + micro_batch_size],
            temperature=temperature,
            score_mask=None if score_mask is None else score_mask[i : i + micro_batch_size],
        )[0]
        for i in range(0, input_ids.shape[0], micro_batch_size)
    ]
    return torch.cat(parts, dim=0)


@torch.no_grad()
def compute_logprobs_and_values(
    model: torch.nn.Module,
    value_head: torch.nn.Module | None,
    input_ids: torch.Tensor,  # [B, L]
    attention_mask: torch.Tensor,  # [B, L]
    *,
    micro_batch_size: int,
    temperature: float = 1.0,
    score_mask: torch.Tensor,  # [B, L]
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:  # ([B, L], [B, L] | None, [B, L] | None)
    """Old log-probs, and the critic's values and the entropy when asked, in one forward per micro-batch (no grad).

    All are token-aligned (:func:`token_logprobs`): ``values[b, l]`` is the value of the state that
    predicts token ``l``, i.e. of position ``l - 1``; 0 where ``score_mask`` is 0.

    Returns:
        ``(logp, values or None, entropy or None)``.
    """
    logps, values, entropies = [], [], []
    for i in range(0, input_ids.shape[0], micro_batch_size):
        logp, ent, v = token_logprobs(
            model,
            input_ids[i : i + micro_batch_size],
            attention_mask[i : i + micro_batch_size],
            temperature=temperature,
            with_entropy=with_entropy,
            value_head=value_head,
            score_mask=score_mask[i : i + micro_batch_size],
        )
        logps.append(logp)
        values.append(v)
        entropies.append(ent)
    cat = torch.cat
    return (
        cat(logps, dim=0),
        cat(values, dim=0) if value_head is not None else None,
        cat(entropies, dim=0) if with_entropy else None,
    )


# =========================================================================== inputs
@dataclass(frozen=True)
class UpdateInputs:
    """Everything the update reads, for ``B`` rows of length ``L`` (this process's rows)."""

    input_ids: torch.Tensor
    """[B, L] long."""
    attention_mask: torch.Tensor
    """[B, L] 1 on real tokens."""
    mask: torch.Tensor
    """[B, L] float: trainable tokens."""
    logp_old: torch.Tensor
    """[B, L] float: behaviour-policy log-probs."""
    advantages: torch.Tensor
    """[B, L] float: per-token advantages from the credit method."""
    logp_ref: torch.Tensor | None = None
    """[B, L] float: reference-model log-probs for the KL term."""
    aux: AuxLoss | None = None
    """Auxiliary per-token loss from the credit method (SDAR, OPSD)."""
    returns: torch.Tensor | None = None
    """[B, L] float: value targets (credit methods with a critic)."""
    values_old: torch.Tensor | None = None
    """[B, L] float: the critic's values before the update (for value clipping), token-aligned like ``logp``."""
    value_mask: torch.Tensor | None = None
    """[B, L] float: tokens whose value is regressed to ``returns`` (StepPO: each step's first
    trainable token, ``value.step_value_mask``); ``None`` = every trainable token."""

    def rows(self, index: torch.Tensor) -> UpdateInputs:
        """The subset of rows ``index`` (a 1-D long tensor)."""

        def pick(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[index]

        aux = self.aux
        if aux is not None:
            aux = replace(
                aux,
                target_mask=aux.target_mask[index],
                logp_teacher=aux.logp_teacher[index],
                weight=None if aux.weight is None else aux.weight[index],
                view=None if aux.view is None else aux.view.rows(index),
            )
        return UpdateInputs(
            input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index],
            mask=self.mask[index],
            logp_old=self.logp_old[index],
            advantages=self.advantages[index],
            logp_ref=pick(self.logp_ref),
            aux=aux,
            returns=pick(self.returns),
            values_old=pick(self.values_old),
            value_mask=pick(self.value_mask),
        )

    @property
    def num_rows(self) -> int:
        """B."""
        return int(self.input_ids.shape[0])


# =========================================================================== the update
def _all_reduce(x: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """Reduce ``x`` over processes (a new tensor on ``x``'s device); NCCL needs it on the current GPU."""
    if is_distributed():
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else x.device
        y = x.to(dev)
        dist.all_reduce(y, op=op)
        return y.to(x.device)
    return x


def _can_have_gradient(mb: UpdateInputs, cfg: LossConfig, train_value: bool) -> bool:
    """False only when the mini-batch's loss is identically 0: all advantages 0 and no other term (on every rank)."""
    live = cfg.kl_coef > 0 or cfg.entropy_coef > 0 or mb.aux is not None or train_value
    live = live or bool((mb.advantages * mb.mask).ne(0).any())
    if is_distributed():  # every rank must run (or skip) the same forwards, or FSDP's collectives hang
        live = bool(_all_reduce(torch.tensor([float(live)]), dist.ReduceOp.MAX) > 0)
    return live


def _grad_norm(params: list[torch.nn.Parameter], max_norm: float | None) -> float:
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm is not None else math.inf)
    if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
        norm = norm.full_tensor()
    return float(norm)


def ppo_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: UpdateInputs,
    *,
    loss_config: LossConfig,
    ppo_epochs: int = 1,
    mini_batches: int = 1,
    micro_batch_size: int = 8,
    max_grad_norm: float | None = 1.0,
    temperature: float = 1.0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    value_head: torch.nn.Module | None = None,
    generator: torch.Generator | None = None,
    on_micro_batch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Run the PPO-style update; returns ``loss/...`` and ``optim/...`` metrics (means over optimizer steps).

    Args:
        model: The policy (a causal LM; FSDP2-sharded or not).
        optimizer: Its optimizer (the value head's parameters included when there is one).
        inputs: This process's rows.
        loss_config: Clip, ratio level, KL, entropy, aggregation, value-loss settings.
        ppo_epochs: Passes over the rows.
        mini_batches: Optimizer steps per pass.
        micro_batch_size: Rows per forward/backward.
        max_grad_norm: Global gradient-norm clip (``None`` = no clip; the norm is still checked).
        temperature: Rollout temperature (logits are divided by it, as during sampling).
        scheduler: Stepped once per optimizer step.
        value_head: Critic head on the last hidden state, trained when ``inputs.returns`` is set.
        generator: Seeded generator for row shuffling; ``None`` keeps the row order.
        on_micro_batch: Called with each micro-batch's loss terms (for tests and debugging).

    Raises:
        NonFiniteError: A loss or the gradient norm is NaN/inf (the optimizer step is not taken).
        ValueError: KL is on but ``inputs.logp_ref`` is missing.
    """
    cfg = loss_config
    if cfg.kl_coef > 0 and inputs.logp_ref is None:
        raise ValueError("loss_config.kl_coef > 0 but inputs.logp_ref is None; compute reference log-probs first")
    if inputs.num_rows < mini_batches:
        raise ValueError(
            f"{inputs.num_rows} rows cannot fill {mini_batches} mini-batches; lower mini_batches or collect more rows"
        )
    train_value = inputs.returns is not None and value_head is not None
    world = world_size()
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    norm_length = cfg.norm_length  # Dr.GRPO's constant (TrainConfig fills it); never the padded length
    totals: dict[str, float] = {}
    term_steps: dict[str, int] = {}  # optimizer steps that computed each term
    n_opt_steps = skipped = 0
    model.train()

    for epoch in range(ppo_epochs):
        order = torch.randperm(inputs.num_rows, generator=generator) if generator is not None else None
        order = order if order is not None else torch.arange(inputs.num_rows)
        for mb_index, mb_rows in enumerate(torch.tensor_split(order, mini_batches)):
            mb = inputs.rows(mb_rows)
            # ---- normalisers over the whole mini-batch (and every process)
            counts = torch.tensor(
                [
                    aggregation_normalizer(mb.mask, cfg.aggregation, norm_length=norm_length),
                    float(mb.mask.sum()),
                    float(mb.aux.target_mask.sum()) if mb.aux is not None else 0.0,
                    float((mb.value_mask if mb.value_mask is not None else mb.mask).sum()) if train_value else 0.0,
                ],
                dtype=torch.float64,
            )
            pg_norm, tok_norm, tgt_norm, val_norm = (max(float(c), 1.0) for c in _all_reduce(counts))
            n_micro = torch.tensor([math.ceil(mb.num_rows / micro_batch_size)])
            n_micro = int(_all_reduce(n_micro, dist.ReduceOp.MAX))  # every rank runs as many forwards

            optimizer.zero_grad(set_to_none=True)
            step_terms: dict[str, float] = {}
            if not _can_have_gradient(mb, cfg, train_value):
                # every trainable token's advantage is 0 and no KL / entropy / auxiliary / value term applies:
                # the loss is identically 0, so its forward/backward is skipped. The optimizer still steps on
                # zero gradients, so AdamW's moments, weight decay and the schedule advance exactly as if it ran.
                for p in params:
                    p.grad = torch.zeros_like(p)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                n_opt_steps += 1
                skipped += 1
                for key in ("policy", "total", "clip_frac", "grad_norm"):  # exactly 0 (no approx_kl: not computed)
                    totals[key] = totals.get(key, 0.0)
                    term_steps[key] = term_steps.get(key, 0) + 1
                continue
            for k in range(n_micro):
                rows = torch.arange(k * micro_batch_size, min((k + 1) * micro_batch_size, mb.num_rows))
                dummy = rows.numel() == 0  # this rank ran out of rows: a zero-weight forward keeps collectives in step
                micro = mb.rows(rows) if not dummy else inputs.rows(torch.tensor([0]))
                weight = 0.0 if dummy else 1.0

                view_aux = None
                if micro.aux is not None and micro.aux.view is not None:
                    # the two-view term (UCOB) runs its own two forwards; its backward comes first, so their graphs
                    # are freed before the policy's forward (peak memory: two forwards' activations, not three)
                    view_tok = _two_view_aux(model, micro, micro.aux.target_mask * weight, temperature)  # [b, L]
                    view_aux = (view_tok * micro.aux.target_mask * weight).sum() / tgt_norm
                    if bool(torch.isfinite(view_aux.detach())):  # a non-finite one stops below with the loss
                        (micro.aux.coef * view_aux * world).backward()
                    view_aux = view_aux.detach()
                scored = micro.mask if micro.aux is None else torch.maximum(micro.mask, micro.aux.target_mask)
                logp, entropy, values = token_logprobs(
                    model,
                    micro.input_ids,
                    micro.attention_mask,
                    temperature=temperature,
                    with_entropy=cfg.entropy_coef > 0,
                    value_head=value_head if train_value else None,
                    score_mask=scored,
                )
                mask = micro.mask * weight  # [b, L]
                # ---- policy gradient (ALGORITHMS.md §2)
                pg_tok, clipped = clipped_surrogate(
                    logp,
                    micro.logp_old,
                    micro.advantages,
                    mask,
                    clip_eps_low=cfg.clip_eps_low,
                    clip_eps_high=cfg.clip_eps_high,
                    dual_clip=cfg.dual_clip,
                    level=cfg.ratio_level,
                )  # [b, L]
                if micro.aux is not None and micro.aux.replaces_policy_loss:
                    pg_tok = pg_tok * 0.0
                per_token = pg_tok
                kl_tok = None
                if cfg.kl_coef > 0:
                    kl_tok = kl_k3(logp, micro.logp_ref, mask, clamp=cfg.kl_clamp)  # [b, L]
                    per_token = per_token + cfg.kl_coef * kl_tok
                policy_loss = aggregate(per_token, mask, cfg.aggregation, normalizer=pg_norm)
                terms = {"policy": aggregate(pg_tok, mask, cfg.aggregation, normalizer=pg_norm)}
                loss = policy_loss
                if kl_tok is not None:
                    terms["kl"] = (kl_tok * mask).sum() / tok_norm
                if entropy is not None:
                    ent = (entropy * mask).sum() / tok_norm
                    terms["entropy"] = ent
                    loss = loss - cfg.entropy_coef * ent
                if micro.aux is not None:
                    target = micro.aux.target_mask * weight  # [b, L]
                    if view_aux is not None:
                        aux_loss = view_aux  # already backpropagated above
                    else:
                        weighted = {} if micro.aux.weight is None else {"weight": micro.aux.weight}
                        aux_tok = micro.aux.fn(logp, micro.aux.logp_teacher, target, **weighted)  # [b, L]
                        aux_loss = (aux_tok * target).sum() / tgt_norm
                    terms["aux"] = aux_loss
                    loss = loss + micro.aux.coef * aux_loss
                if train_value:
                    v_err = clipped_value_error(values, micro.values_old, micro.returns, clip=cfg.value_clip)  # [b, L]
                    vmask = (micro.value_mask if micro.value_mask is not None else micro.mask) * weight  # [b, L]
                    value_loss = 0.5 * (v_err * vmask).sum() / val_norm
                    terms["value"] = value_loss
                    loss = loss + cfg.value_coef * value_loss
                terms["clip_frac"] = (clipped * mask).sum() / tok_norm
                terms["approx_kl"] = (0.5 * (logp - micro.logp_old) ** 2 * mask).sum() / tok_norm
                terms["total"] = loss

                finite = bool(torch.isfinite(loss.detach()))
                if is_distributed():  # every rank must stop together, or the others hang in the next collective
                    finite = bool(_all_reduce(torch.tensor([float(not finite)]), dist.ReduceOp.MAX) == 0)
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    bad = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
                    raise NonFiniteError(
                        f"non-finite loss at epoch {epoch}, mini-batch {mb_index}, micro-batch {k} ({bad}); "
                        "the optimizer step was not taken and the weights are unchanged since the last step. "
                        "Check logp_old/advantages for NaN, lower the learning rate, or use float32."
                    )
                # FSDP averages gradients over processes; the normalisers are already global, so undo the mean
                (loss * world).backward()
                detached = {k: float(v.detach()) for k, v in terms.items()}
                if on_micro_batch is not None:
                    on_micro_batch(detached)
                for key, v in detached.items():
                    step_terms[key] = step_terms.get(key, 0.0) + v

            grad_norm = _grad_norm(params, max_grad_norm)
            if not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteError(
                    f"non-finite gradient norm ({grad_norm}) at epoch {epoch}, mini-batch {mb_index}; the optimizer "
                    "step was not taken and the weights are unchanged since the last step. Lower the learning "
                    "rate, set optim.max_grad_norm, or check the inputs for extreme log-probs."
                )
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            n_opt_steps += 1
            step_terms["grad_norm"] = grad_norm
            for key, v in step_terms.items():
                totals[key] = totals.get(key, 0.0) + v
                term_steps[key] = term_steps.get(key, 0) + 1

    grad_norm_total = totals.pop("grad_norm", 0.0)
    term_steps.pop("grad_norm", None)
    if is_distributed() and totals:  # each process holds its rows' share of every (globally normalised) term
        keys = sorted(totals)
        summed = _all_reduce(torch.tensor([totals[k] for k in keys], dtype=torch.float64))
        totals = dict(zip(keys, summed.tolist()))
    metrics = {f"loss/{k}": v / max(term_steps.get(k, 0), 1) for k, v in totals.items()}
    metrics["optim/grad_norm"] = grad_norm_total / max(n_opt_steps, 1)
    metrics["optim/lr"] = float(optimizer.param_groups[0]["lr"])
    metrics["optim/steps"] = float(n_opt_steps)
    metrics["optim/skipped_steps"] = float(skipped)
    return metrics
