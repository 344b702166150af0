"""The transformers policy: batched sampling with left padding and a KV cache, on CPU or GPU.

The decode loop is written out (not ``model.generate``) so that what it returns is exactly what the
trainer recomputes: the log-prob of each sampled token is ``log_softmax(logits / T)`` at that
position (``T = 1`` for greedy decoding), before top-p truncation. Stop strings are checked on the
decoded tail of each row; the token that completes a stop string is kept, and the row stops.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from stepgym.agents.policy import Completion, SamplingParams

__all__ = ["HFPolicy", "find_stop"]

logger = logging.getLogger(__name__)


def find_stop(text: str, stops: Sequence[str]) -> int:
    """End position (exclusive) of the earliest stop string in ``text``; -1 if none occurs."""
    best = -1
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best < 0 or i + len(s) < best):
            best = i + len(s)
    return best


class HFPolicy:
    """Generate with a transformers causal LM.

    Args:
        model: A ``PreTrainedModel`` (eval mode; any device and dtype).
        tokenizer: Its tokenizer (decodes completions; gives the EOS and pad ids).
        seed: Seeds the sampling generator used when ``SamplingParams.seed`` is ``None``.
        stop_token_ids: Token ids that end a completion (default: the tokenizer's EOS).
        max_batch_size: Prompts per forward batch; larger requests are split.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        seed: int = 0,
        stop_token_ids: Sequence[int] | None = None,
        max_batch_size: int = 64,
    ):
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        eos = tokenizer.eos_token_id
        self.stop_token_ids = set(stop_token_ids if stop_token_ids is not None else ([] if eos is None else [eos]))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
        self.max_batch_size = max_batch_size

    def update_weights(self, state_dict: Mapping[str, Any]) -> None:
        """Copy a trainer's weights into the model in place (names as in ``model.state_dict()``)."""
        missing, unexpected = self.model.load_state_dict(dict(state_dict), strict=False)
        if unexpected:
            raise KeyError(
                f"update_weights got unknown parameter names {unexpected[:5]}; expected model.state_dict() keys"
            )
        if missing and len(missing) == len(self.model.state_dict()):
            raise KeyError("update_weights matched no parameter; expected model.state_dict() keys")

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
        gen_ids: list[list[int]] = [[] for _ in range(b)]
        gen_lp: list[list[float]] = [[] for _ in range(b)]
        finish: list[str | None] = [None] * b
        window = max((len(s) for s in sampling.stop), default=0) + 4  # tokens enough to hold a stop string
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
                if sampling.temperature == 0:
                    nxt = logits.argmax(-1)  # [B]
                else:
                    nxt = self._sample(logp, sampling.top_p, gen)  # [B]
                chosen = logp.gather(-1, nxt[:, None])[:, 0].tolist()  # [B]
                nxt_list = nxt.tolist()
                for i in range(b):
                    if finish[i] is not None:
                        continue
                    tok = nxt_list[i]
                    gen_ids[i].append(tok)
                    gen_lp[i].append(float(chosen[i]))
                    if tok in self.stop_token_ids:
                        finish[i] = "stop"
                    elif sampling.stop:
                        tail = self.tokenizer.decode(gen_ids[i][-window:], skip_special_tokens=False)
                        if find_stop(tail, sampling.stop) >= 0:
                            finish[i] = "stop"
                if all(f is not None for f in finish):
                    break
                # finished rows keep decoding (their extra tokens are dropped) so shapes stay rectangular
                step_ids = nxt[:, None]  # [B, 1]
                step_attn = torch.cat([step_attn, torch.ones((b, 1), dtype=torch.long, device=self.device)], dim=1)
                step_pos = step_pos[:, -1:] + 1  # [B, 1]
        out = []
        for i in range(b):
            text = self.tokenizer.decode(gen_ids[i], skip_special_tokens=False)
            out.append(Completion(gen_ids[i], gen_lp[i], text, finish[i] or "length"))  # type: ignore[arg-type]
        return out

    @staticmethod
    def _sample(logp: Any, top_p: float, gen: Any) -> Any:
        import torch

        probs = logp.exp()  # [B, V]
        if top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)  # [B, V]
            keep = (sorted_p.cumsum(-1) - sorted_p) < top_p  # [B, V] always keeps the top token
            sorted_p = sorted_p * keep
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        return torch.multinomial(probs, 1, generator=gen)[:, 0]
