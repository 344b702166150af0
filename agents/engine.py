"""The multi-turn KV engine: each episode's KV cache lives on between turns, batches are ragged.

A multi-turn episode asks the policy for a completion every turn, with a prompt that starts with
everything it was shown before (concat: ``prompt, completion_0, obs_1, ...``; per-step: the shared
system prompt and first observation). Re-prefilling that prefix from an empty cache every turn is
where a rollout's time went (issue 15: 864 tokens re-prefilled in 6.59 s vs 0.93 s to extend a cached
768-token prefix). :class:`KVEngine` keeps, after every call, the KV cache of each row (its prompt
and its completion minus the last sampled token, which was never fed) and starts each new prompt
from the cached entry sharing its longest common prefix of token ids, so it prefills only the
new suffix. Matching is by token ids, so the :class:`~stepgym.agents.policy.Policy` protocol is
unchanged and reuse is exact by construction: an entry's KV is what a forward over those ids
computes. Entries of the same call count too, so the ``G`` members of a group prefill their common
first prompt once.

Decoding is ragged: rows sit left-padded in one preallocated KV buffer (:class:`GrowingLayer`
writes in place instead of concatenating every token), a finished row leaves the batch at once
(its cache is saved, the buffer shrinks, leading columns that are padding for every remaining row
are cut), and the LM head runs only on the position that is sampled (``logits_to_keep=1``).

Exactness (the trainer recomputes these log-probs): a reused prefix is only ever paired with the
same ids at the same positions; padding keys are masked out. Sampling draws one uniform per
*original* row per decode step (:func:`sample_next`), the same stream the no-cache path
(:class:`~stepgym.agents.hf.HFPolicy` with ``engine="legacy"``) draws, so both engines sample the
same ids from the same seed, whichever rows have already left the batch.

The cache is only valid for the weights it was computed with: :meth:`KVEngine.reset` drops it, and
it is dropped automatically when any parameter was modified in place since it was filled (torch
bumps a tensor's version counter on every in-place write: optimizer steps, ``load_state_dict``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from stepgym.agents.policy import Completion, SamplingParams

__all__ = ["EngineStats", "KVEngine", "RowState", "find_stop", "sample_next"]

logger = logging.getLogger(__name__)


def find_stop(text: str, stops: Sequence[str]) -> int:
    """End position (exclusive) of the earliest stop string in ``text``; -1 if none occurs."""
    best = -1
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best < 0 or i + len(s) < best):
            best = i + len(s)
    return best


def sample_next(logp: Any, top_p: float, u: Any) -> Any:
    """Inverse-CDF sampling: row ``b`` takes the first token whose cumulative probability exceeds ``u[b]``.

    One uniform per row (``u``: ``[B]`` in ``[0, 1)``) instead of ``torch.multinomial``'s hidden draws,
    so a row's sample depends only on its own distribution and its own uniform: a batch that lost its
    finished rows samples the survivors exactly as the full batch would. Nucleus truncation keeps the
    smallest set of most probable tokens whose mass reaches ``top_p`` (the top token always).

    Args:
        logp: ``[B, V]`` log-probs of the sampling distribution.
        top_p: Nucleus mass (1.0 = off).
        u: ``[B]`` uniforms.

    Returns:
        ``[B]`` token ids.
    """
    import torch

    probs = logp.exp()  # [B, V]
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)  # [B, V]
        keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # [B, V] always keeps the top token
        cdf = (sorted_p * keep).cumsum(-1)  # [B, V]
        pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous(), right=True)  # [B, 1]
        return order.gather(-1, pick.clamp(max=probs.shape[-1] - 1))[:, 0]
    cdf = probs.cumsum(-1)  # [B, V]
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous(), right=True)  # [B, 1]
    return pick.clamp(max=probs.shape[-1] - 1)[:, 0]


class RowState:
    """Generated ids, log-probs and finish reasons of a batch of rows, with the stop rules of both engines.

    A row stops on a stop token id (kept) or when the decoded tail of its last tokens contains a stop
    string (the completing token is kept).
    """

    def __init__(self, n: int, tokenizer: Any, stop_token_ids: set[int], sampling: SamplingParams):
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.logprobs: list[list[float]] = [[] for _ in range(n)]
        self.finish: list[str | None] = [None] * n
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids
        self.stops = sampling.stop
        self.window = max((len(s) for s in sampling.stop), default=0) + 4  # tokens enough to hold a stop string

    def accept(self, i: int, tok: int, lp: float) -> bool:
        """Append ``tok`` to row ``i``; True if the row is now finished."""
        self.ids[i].append(tok)
        self.logprobs[i].append(lp)
        if tok in self.stop_ids:
            self.finish[i] = "stop"
        elif self.stops:
            tail = self.tokenizer.decode(self.ids[i][-self.window :], skip_special_tokens=False)
            if find_stop(tail, self.stops) >= 0:
                self.finish[i] = "stop"
        return self.finish[i] is not None

    def completions(self) -> list[Completion]:
        """One :class:`Completion` per row (``length`` where no stop came)."""
        out = []
        for ids, lps, fin in zip(self.ids, self.logprobs, self.finish):
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            out.append(Completion(ids, lps, text, fin or "length"))  # type: ignore[arg-type]
        return out


def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A cache layer over a preallocated ``[B, H, capacity, D]`` buffer, written in place.

        ``DynamicLayer`` concatenates every new token onto the whole cache (a full copy per token and
        layer); this one writes the new keys/values at ``length`` and returns views of the filled part.
        The buffer doubles when full.
        """

        def __init__(self, keys: Any, values: Any, length: int):
            super().__init__()
            self.keys, self.values, self.length = keys, values, length  # [B, H, C, D] each
            self.dtype, self.device = keys.dtype, keys.device
            self.is_initialized = True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            import torch

            n = key_states.shape[-2]
            if self.length + n > self.keys.shape[-2]:
                grow = max(self.keys.shape[-2], n)
                pad = (*self.keys.shape[:2], grow, self.keys.shape[-1])
                self.keys = torch.cat([self.keys, self.keys.new_zeros(pad)], dim=-2)
                self.values = torch.cat([self.values, self.values.new_zeros(pad)], dim=-2)
            self.keys[:, :, self.length : self.length + n] = key_states
            self.values[:, :, self.length : self.length + n] = value_states
            self.length += n
            return self.keys[:, :, : self.length], self.values[:, :, : self.length]

        def get_seq_length(self) -> int:
            return self.length

        def select(self, rows: Any, first: int) -> None:
            """Keep batch ``rows`` and the columns from ``first`` on (a copy of the kept part)."""
            self.keys = self.keys[rows, :, first:]
            self.values = self.values[rows, :, first:]
            self.length -= first

    return GrowingLayer


_LAYER: type | None = None
ATTENTION = "stepgym_decode"
"""Name the engine registers its decode attention under (transformers ``AttentionInterface``)."""


def _decode_attention(
    module: Any,
    query: Any,  # [B, H, q, D]
    key: Any,  # [B, KVH, T, D]
    value: Any,  # [B, KVH, T, D]
    attention_mask: Any,  # [B, 1, q, T] bool or None
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """SDPA attention as in transformers, but a one-token decode step of grouped-query attention reads K/V in place.

    With a padding mask, transformers' SDPA path repeats every K/V head for each query head that
    shares it (``repeat_kv``): a full copy of the cache per layer and step, 3x its size for
    SmolLM2's 9 query / 3 KV heads (issue 15: a batch-16 decode step over 1,500 cached tokens took
    2.3-2.7 s CPU that way, 0.33 s this way). For one query token the ``rep`` query heads of a
    KV head are instead stacked as ``rep`` queries against that head: the same dot products and
    softmax per head, so the same attention. Prefill (``q > 1``) goes to transformers' function.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, h, q, d = query.shape
    kvh = key.shape[1]
    if q != 1 or kvh == h or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    qs = query.reshape(b, kvh, h // kvh, d)  # [B, KVH, rep, D] head j = kv head j // rep, as in repeat_kv
    mask = None if attention_mask is None else attention_mask[..., : key.shape[-2]]  # [B, 1, 1, T] broadcasts
    out = torch.nn.functional.scaled_dot_product_attention(
        qs, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    return out.reshape(b, 1, h, d), None  # [B, q=1, H, D] as transformers' attention functions return


def _register_attention() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    AttentionInterface.register(ATTENTION, _decode_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@contextlib.contextmanager
def _decode_attention_on(model: Any) -> Iterator[None]:
    """Run the model with :func:`_decode_attention` while the engine generates (only over transformers' SDPA)."""
    conf = model.config
    before = getattr(conf, "_attn_implementation", None)
    if before != "sdpa":
        yield
        return
    conf._attn_implementation = ATTENTION
    try:
        yield
    finally:
        conf._attn_implementation = before


def _new_cache(layers: list[tuple[Any, Any, int]]) -> Any:
    """A transformers ``DynamicCache`` whose layers are :class:`GrowingLayer` over the given buffers."""
    global _LAYER
    from transformers import DynamicCache

    if _LAYER is None:
        _LAYER = _growing_layer_class()
    cache = DynamicCache()
    cache.layers = [_LAYER(k, v, n) for k, v, n in layers]
    return cache


@dataclass
class _Entry:
    """The KV of one token sequence: ``kv[layer] = (keys, values)``, each ``[H, T, D]`` with ``T = len(ids)``."""

    ids: np.ndarray
    kv: list[tuple[Any, Any]]


@dataclass
class EngineStats:
    """Token counts since the engine was made (for benchmarks and logs)."""

    prefill_tokens: int = 0
    """Prompt tokens run through the model (not found in the cache)."""
    reused_tokens: int = 0
    """Prompt tokens whose KV came from the cache."""
    decode_tokens: int = 0
    """Tokens generated."""
    calls: int = 0
    """``generate`` calls."""
    prefill_s: float = 0.0
    """Wall seconds in prefill (cache lookup, suffix forwards)."""
    decode_s: float = 0.0
    """Wall seconds in the decode loop (forwards, sampling, stop checks, rows leaving)."""
    prefill_cpu_s: float = 0.0
    """CPU seconds of this process in prefill (all threads; robust to other jobs' load)."""
    decode_cpu_s: float = 0.0
    """CPU seconds of this process in the decode loop."""


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    m = min(len(a), len(b))
    diff = np.flatnonzero(a[:m] != b[:m])
    return int(diff[0]) if diff.size else m


class KVEngine:
    """Generate with a transformers causal LM, reusing each sequence's KV cache across calls.

    Args:
        model: A ``PreTrainedModel`` in eval mode (any device and dtype; standard ``DynamicCache`` layers).
        tokenizer: Its tokenizer (decodes completions for stop strings).
        stop_token_ids: Token ids that end a completion.
        pad_id: Id written into left padding (never attended to).
    """

    def __init__(self, model: Any, tokenizer: Any, *, stop_token_ids: set[int], pad_id: int):
        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = stop_token_ids
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        conf = model.config.get_text_config(decoder=True)
        other = sorted({t for t in (getattr(conf, "layer_types", None) or []) if t != "full_attention"})
        if other:
            raise ValueError(
                f"the kv engine caches full-attention layers only, but this model has {other} layers; "
                "use HFPolicy(engine='legacy') (rollout.engine='legacy')"
            )
        self.stats = EngineStats()
        self._entries: list[_Entry] = []  # the previous call's rows
        self._version = -1
        _register_attention()

    # ------------------------------------------------------------------ cache bookkeeping
    def reset(self) -> None:
        """Drop every cached entry (new weights, or to free memory between rollouts)."""
        self._entries = []

    def _weights_version(self) -> int:
        return sum(p._version for p in self.model.parameters())

    def _lookup(self, ids: np.ndarray, pool: list[_Entry]) -> tuple[_Entry | None, int]:
        best, best_n = None, 0
        for e in pool:
            n = _common_prefix(ids, e.ids)
            if n > best_n:
                best, best_n = e, n
        return best, best_n

    # ------------------------------------------------------------------ generation
    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams, gen: Any) -> list[Completion]:
        """One completion per prompt (a single batch; the caller splits large requests).

        Raises:
            ValueError: An empty prompt.
        """
        import torch

        if any(len(p) == 0 for p in prompts):
            raise ValueError("an empty prompt cannot be generated from; render at least one token")
        version = self._weights_version()
        if version != self._version:
            self._entries, self._version = [], version  # weights changed in place since the cache was filled
        try:
            with torch.no_grad(), _decode_attention_on(self.model):
                out = self._generate(prompts, sampling, gen)
        except Exception:
            self._entries = []  # a half-built cache is never reused
            raise
        self._version = self._weights_version()
        return out

    def _prefill(self, ids: np.ndarray, pool: list[_Entry]) -> tuple[list[tuple[Any, Any]], Any]:
        """Run ``ids`` through the model from the best cached prefix; ``(kv per layer [H, T, D], last logits [V])``."""
        import torch

        entry, reuse = self._lookup(ids, pool)
        reuse = min(reuse, len(ids) - 1)  # the last prompt token must be fed to get the next token's logits
        n = len(ids)
        layers = []
        for layer in range(self._num_layers):
            if entry is not None and reuse > 0:
                k, v = entry.kv[layer]  # [H, T, D]
                h, d = k.shape[0], k.shape[-1]
                kb = k.new_empty((1, h, n, d))
                vb = v.new_empty((1, h, n, d))
                kb[0, :, :reuse] = k[:, :reuse]
                vb[0, :, :reuse] = v[:, :reuse]
                layers.append((kb, vb, reuse))
            else:
                layers.append(None)
        if layers[0] is None:
            cache = None
        else:
            cache = _new_cache(layers)
        suffix = torch.as_tensor(ids[reuse:], dtype=torch.long, device=self.device)[None]  # [1, S]
        res = self.model(
            input_ids=suffix,
            attention_mask=torch.ones((1, n), dtype=torch.long, device=self.device),
            position_ids=torch.arange(reuse, n, device=self.device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        past = res.past_key_values
        kv = [(lay.keys[0, :, :n], lay.values[0, :, :n]) for lay in past.layers]  # [H, T, D] each
        self.stats.prefill_tokens += n - reuse
        self.stats.reused_tokens += reuse
        return kv, res.logits[0, -1].float()

    @property
    def _num_layers(self) -> int:
        conf = self.model.config.get_text_config(decoder=True)
        return int(conf.num_hidden_layers)

    def _generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams, gen: Any) -> list[Completion]:
        import torch

        b = len(prompts)
        self.stats.calls += 1
        arrays = [np.asarray(list(p), dtype=np.int64) for p in prompts]
        # ---- prefill each row from its best cached prefix (the previous call's rows and this call's)
        t0, c0 = time.perf_counter(), time.process_time()
        pool = list(self._entries)
        row_kv, first_logits = [], []
        for ids in arrays:
            kv, logits = self._prefill(ids, pool)
            pool.append(_Entry(ids, kv))
            row_kv.append(kv)
            first_logits.append(logits)
        self._entries = []
        # ---- one left-padded buffer per layer, with room for the completions
        lengths = [len(a) for a in arrays]
        width = max(lengths)
        cap = width + sampling.max_new_tokens
        layers = []
        for layer in range(len(row_kv[0])):
            k0 = row_kv[0][layer][0]
            h, d = k0.shape[0], k0.shape[-1]
            kb = k0.new_zeros((b, h, cap, d))
            vb = k0.new_zeros((b, h, cap, d))
            for i, kv in enumerate(row_kv):
                k, v = kv[layer]
                kb[i, :, width - lengths[i] : width] = k
                vb[i, :, width - lengths[i] : width] = v
            layers.append((kb, vb, width))
        del row_kv, pool
        cache = _new_cache(layers)
        attn = torch.zeros((b, cap), dtype=torch.long, device=self.device)  # [B, C]
        for i, n in enumerate(lengths):
            attn[i, width - n : width] = 1
        pos = torch.tensor(lengths, dtype=torch.long, device=self.device)  # [B] position of the next fed token
        pad = [width - n for n in lengths]  # leading padding columns per row (shifted when columns are cut)
        rows = RowState(b, self.tokenizer, self.stop_token_ids, sampling)
        active = list(range(b))  # original row index of each batch row
        logits = torch.stack(first_logits)  # [B, V]
        temp = sampling.temperature if sampling.temperature > 0 else 1.0
        final: dict[int, _Entry] = {}

        def save(j: int) -> None:  # batch row j's cache: its prompt and completion but the last (unfed) token
            i, length = active[j], cache.layers[0].length
            ids = np.concatenate([arrays[i], np.asarray(rows.ids[i][:-1], dtype=np.int64)])
            cut = slice(pad[j], length)
            kv = [(lay.keys[j, :, cut].clone(), lay.values[j, :, cut].clone()) for lay in cache.layers]
            final[i] = _Entry(ids, kv)

        t1, c1 = time.perf_counter(), time.process_time()
        self.stats.prefill_s += t1 - t0
        self.stats.prefill_cpu_s += c1 - c0
        for t in range(sampling.max_new_tokens):
            logp = torch.log_softmax(logits / temp, dim=-1)  # [b, V]
            u = torch.rand(b, generator=gen, device=self.device)  # [B] one uniform per original row
            if sampling.temperature == 0:
                nxt = logits.argmax(-1)  # [b]
            else:
                nxt = sample_next(logp, sampling.top_p, u[active])  # [b]
            chosen = logp.gather(-1, nxt[:, None])[:, 0].tolist()  # [b]
            toks = nxt.tolist()
            done = [j for j, i in enumerate(active) if rows.accept(i, toks[j], float(chosen[j]))]
            self.stats.decode_tokens += len(active)
            if t == sampling.max_new_tokens - 1:
                break
            if done:
                # finished rows leave the batch at once
                for j in done:
                    save(j)
                gone = set(done)
                keep = [j for j in range(len(active)) if j not in gone]
                if not keep:
                    break
                first = min(pad[j] for j in keep)  # columns that are padding for every remaining row
                index = torch.tensor(keep, device=self.device)
                for lay in cache.layers:
                    lay.select(index, first)
                attn = attn[index, first:]
                pos, nxt = pos[index], nxt[index]
                pad = [pad[j] - first for j in keep]
                active = [active[j] for j in keep]
            # ---- feed the sampled tokens
            length = cache.layers[0].length
            attn[:, length] = 1
            res = self.model(
                input_ids=nxt[:, None],
                attention_mask=attn[:, : length + 1],
                position_ids=pos[:, None],
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            pos = pos + 1
            logits = res.logits[:, -1].float()  # [b, V]
        for j, i in enumerate(active):  # rows still in the batch (out of tokens, or finished on the last one)
            if i not in final:
                save(j)
        self._entries = [final[i] for i in sorted(final)]
        self.stats.decode_s += time.perf_counter() - t1
        self.stats.decode_cpu_s += time.process_time() - c1
        return rows.completions()
