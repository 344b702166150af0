"""The transformers policy: batched sampling with left padding and a KV cache, on CPU or GPU.

The decode loop is written out (not ``model.generate``) so that what it returns is exactly what the
trainer recomputes: the log-prob of each sampled token is ``log_softmax(logits / T)`` at that
position (``T = 1`` for greedy decoding), before top-p truncation. Stop strings are checked on the
decoded tail of each row; the token that completes a stop string is kept, and the row stops.

Two engines (``engine=``): ``"kv"`` (default) is :class:`~stepgym.agents.engine.KVEngine`, which keeps
each sequence's KV cache between calls and decodes ragged batches; ``"legacy"`` prefills every
prompt from an empty cache and decodes the whole rectangular batch until every row is done (the
path before issue 15, kept so benchmarks can compare). Both draw the same random numbers, so they
return the same ids from the same seed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from stepgym.agents.engine import EngineStats, KVEngine, RowState, find_stop, sample_next
from stepgym.agents.policy import Completion, SamplingParams

__all__ = ["ENGINES", "Engine", "HFPolicy", "find_stop"]

logger = logging.getLogger(__name__)

Engine = Literal["kv", "legacy"]
ENGINES: tuple[str, ...] = ("kv", "legacy")
"""The transformers generation engines (module docstring)."""


class HFPolicy:
    """Generate with a transformers causal LM.

    Args:
        model: A ``PreTrainedModel`` (eval mode; any device and dtype).
        tokenizer: Its tokenizer (decodes completions; gives the EOS and pad ids).
        seed: Seeds the sampling generator used when ``SamplingParams.seed`` is ``None``.
        stop_token_ids: Token ids that end a completion (default: the tokenizer's EOS).
        max_batch_size: Prompts per forward batch; larger requests are split.
        engine: ``"kv"`` (cache reuse across calls, ragged batches) or ``"legacy"`` (no reuse).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        seed: int = 0,
        stop_token_ids: Sequence[int] | None = None,
        max_batch_size: int = 64,
        engine: Engine = "kv",
    ):
        import torch

        if engine not in ENGINES:
            import difflib

            close = difflib.get_close_matches(str(engine), ENGINES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown engine {engine!r}{hint}; choose from {list(ENGINES)}")

        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        eos = tokenizer.eos_token_id
        self.stop_token_ids = set(stop_token_ids if stop_token_ids is not None else ([] if eos is None else [eos]))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
        self.max_batch_size = max_batch_size
        self.engine = engine
        self._kv = KVEngine(model, tokenizer, stop_token_ids=self.stop_token_ids, pad_id=self.pad_id)

    @property
    def stats(self) -> EngineStats:
        """Prefill / reuse / decode token counts of the ``kv`` engine (zeros under ``legacy``)."""
        return self._kv.stats

    def reset_cache(self) -> None:
        """Drop the ``kv`` engine's cached sequences (frees their memory; ``collect`` calls it when done)."""
        self._kv.reset()

    def update_weights(self, state_dict: Mapping[str, Any]) -> None:
        """Copy a trainer's weights into the model in place (names as in ``model.state_dict()``)."""
        missing, unexpected = self.model.load_state_dict(dict(state_dict), strict=False)
        if unexpected:
            raise KeyError(
                f"update_weights got unknown parameter names {unexpected[:5]}; expected model.state_dict() keys"
            )
        if missing and len(missing) == len(self.model.state_dict()):
            raise KeyError("update_weights matched no parameter; expected model.state_dict() keys")
        self._kv.reset()

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingParams) -> list[Completion]:
        """One completion per prompt, in order; a failing batch gives ``finish_reason="error"``."""
        import torch

        out: list[Completion] = []
        gen = self._generator
        if sampling.seed is not None:
            gen = torch.Generator(device=self.device).manual_seed(sampling.seed)
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = [list(p) for p in prompts[start : start + self.max_batch_size]]
            try:
                if self.engine == "kv":
                    out.extend(self._kv.generate(chunk, sampling, gen))
                else:
                    out.extend(self._generate_batch(chunk, sampling, gen))
            except Exception as e:  # noqa: BLE001 - contained: reported per prompt
                logger.warning("generation failed for %d prompts: %s", len(chunk), e, exc_info=True)
                msg = f"{type(e).__name__}: {e}"
                out.extend(Completion([], [], "", "error", msg) for _ in chunk)
        return out

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingParams, gen: Any) -> list[Completion]:
        import torch

        if any(len(p) == 0 for p in prompts):
            raise ValueError("an empty prompt cannot be generated from; render at least one token")
        b = len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)  # [B, P] left padded
        attn = torch.zeros((b, width), dtype=torch.long)  # [B, P]
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[i, width - len(p) :] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)  # [B, P]
        rows = RowState(b, self.tokenizer, self.stop_token_ids, sampling)
        past = None
        step_ids, step_attn, step_pos = ids, attn, pos
        with torch.no_grad():
            for _ in range(sampling.max_new_tokens):
                res = self.model(
                    input_ids=step_ids,
                    attention_mask=step_attn,
                    position_ids=step_pos,
                    past_key_values=past,
                    use_cache=True,
                )
                past = res.past_key_values
                logits = res.logits[:, -1, :].float()  # [B, V]
                temp = sampling.temperature if sampling.temperature > 0 else 1.0
                logp = torch.log_softmax(logits / temp, dim=-1)  # [B, V]
                u = torch.rand(b, generator=gen, device=self.device)  # [B] the stream the kv engine draws too
                if sampling.temperature == 0:
                    nxt = logits.argmax(-1)  # [B]
                else:
                    nxt = sample_next(logp, sampling.top_p, u)  # [B]
                chosen = logp.gather(-1, nxt[:, None])[:, 0].tolist()  # [B]
                nxt_list = nxt.tolist()
                for i in range(b):
                    if rows.finish[i] is None:
                        rows.accept(i, nxt_list[i], float(chosen[i]))
                if all(f is not None for f in rows.finish):
                    break
                # finished rows keep decoding (their extra tokens are dropped) so shapes stay rectangular
                step_ids = nxt[:, None]  # [B, 1]
                step_attn = torch.cat([step_attn, torch.ones((b, 1), dtype=torch.long, device=self.device)], dim=1)
                step_pos = step_pos[:, -1:] + 1  # [B, 1]
        return rows.completions()
