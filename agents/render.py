"""Chat renderers: prompt ids for both layouts, action spans, and the retokenization-drift check.

Everything is rendered with the model's own chat template (``tokenizer.apply_chat_template`` to
*text*, then encoded with special tokens parsed), and generated ids are never re-encoded:

* **concat** (Search-R1 style): ``initial_prompt`` renders ``[system?, user: protocol + first
  observation]`` with the generation prompt; after each completion, :meth:`ChatRenderer.observation_ids`
  gives the ids of the template text that closes the assistant turn, adds the observation as a user
  turn and opens the next assistant turn. That text is found by rendering a conversation with a
  placeholder assistant message and taking what the template writes after the placeholder; if the
  completion already ends with the end-of-turn token (``<|im_end|>``), that token is not repeated.
* **per-step** (verl-agent style): :meth:`ChatRenderer.step_prompt` renders one user message made
  of the protocol, the first observation, the last ``history_window`` steps (action text without
  ``<think>`` blocks, then the observation it led to) and the current observation.

Thinking: ``enable_thinking`` is passed to the template (Qwen3-style templates then open the answer
with an empty ``<think></think>`` block when it is ``False``); ``None`` leaves the template default.
Those template tokens are part of the prompt (never trained on).

Drift: :func:`concat_drift` / :func:`per_step_drift` re-render the whole conversation as text, encode
it in one go and compare with the ids the rollout built. A mismatch means the engine produced a
non-canonical tokenization or the template rewrites history (Qwen3's own template drops past
reasoning); the rollout keeps the engine's ids either way and reports the drift as a metric.

Action span: :func:`action_token_mask` marks the tokens that overlap the characters of the one
complete ``<tag>...</tag>`` of the completion, **tags included** (byte-level BPE merges tag and
content characters, e.g. ``>guess``, so tag-exclusive token boundaries do not exist); tags inside
``<think>`` blocks do not count, and a completion with zero or several action tags gets no span.
Token character offsets come from incremental detokenization (:func:`token_char_spans`): each token's
text is the difference between decoding a short window that ends before it and one that ends with
it, so the cost is linear in the completion length (decoding every prefix was quadratic: 90 s for
8k tokens). The tokens of one multi-byte character share its span.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stepgym.envs.base import strip_thinking, think_spans

__all__ = [
    "ChatRenderer",
    "RenderedPrompt",
    "action_char_span",
    "action_token_mask",
    "concat_drift",
    "per_step_drift",
    "token_char_spans",
]

_PLACEHOLDER = "\u2063STEPGYM_PLACEHOLDER\u2063"


@dataclass(frozen=True)
class RenderedPrompt:
    """Prompt ids and the text they encode; ``truncated_tokens`` > 0 when it was left-truncated."""

    ids: list[int]
    text: str
    truncated_tokens: int = 0
    dropped_history: int = 0


def _strip_think(text: str) -> str:
    return strip_thinking(text).strip()


class ChatRenderer:
    """Renders prompts with a tokenizer's chat template.

    Args:
        tokenizer: A HF tokenizer with a chat template.
        system_prompt: Optional system message before the first user message.
        enable_thinking: Passed to the template (Qwen3 thinking switch); ``None`` = template default.
        history_window: Steps of history in a per-step prompt.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        system_prompt: str | None = None,
        enable_thinking: bool | None = None,
        history_window: int = 2,
    ):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has no chat_template; set tokenizer.chat_template "
                "(e.g. stepgym.agents.models.TINY_CHAT_TEMPLATE) before rendering"
            )
        if history_window < 0:
            raise ValueError(f"history_window must be >= 0, got {history_window}")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.enable_thinking = enable_thinking
        self.history_window = history_window
        probe = [{"role": "user", "content": "x"}]
        plain = self.render_text(probe, add_generation_prompt=False)
        with_gen = self.render_text(probe, add_generation_prompt=True)
        with_asst = self.render_text([*probe, {"role": "assistant", "content": _PLACEHOLDER}], False)
        header = with_asst[len(plain) : with_asst.index(_PLACEHOLDER)] if with_asst.startswith(plain) else ""
        gen_text = with_gen[len(plain) :]
        self.generation_extra = gen_text[len(header) :] if header and gen_text.startswith(header) else ""
        """Template text after the assistant header in a generation prompt (``<think>\\n\\n</think>\\n\\n``)."""

    # ------------------------------------------------------------------ text and ids
    def render_text(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
        """The chat template applied to ``messages`` (system message prepended when configured)."""
        msgs = list(messages)
        if self.system_prompt is not None and (not msgs or msgs[0]["role"] != "system"):
            msgs = [{"role": "system", "content": self.system_prompt}, *msgs]
        kwargs: dict[str, Any] = {}
        if self.enable_thinking is not None:
            kwargs["enable_thinking"] = self.enable_thinking
        return self.tokenizer.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs
        )

    def encode(self, text: str) -> list[int]:
        """Ids of rendered template text (special tokens parsed, no BOS/EOS added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @staticmethod
    def first_user_content(protocol: str, first_observation: str) -> str:
        """The first user message: the env's protocol, a blank line, the first observation."""
        return f"{protocol}\n\n{first_observation}" if protocol else first_observation

    def _eot_texts(self, completion_ids: Sequence[int]) -> str:
        """Decoded last token when it is the EOS (end-of-turn) token, else ``""``."""
        eos = self.tokenizer.eos_token_id
        if completion_ids and eos is not None and completion_ids[-1] == eos:
            return self.tokenizer.decode([eos], skip_special_tokens=False)
        return ""

    def assistant_content(self, completion_ids: Sequence[int]) -> str:
        """The completion as the template's assistant message (generation extra + text, EOS removed)."""
        text = self.tokenizer.decode(list(completion_ids), skip_special_tokens=False)
        eot = self._eot_texts(completion_ids)
        if eot and text.endswith(eot):
            text = text[: -len(eot)]
        return self.generation_extra + text

    # ------------------------------------------------------------------ concat layout
    def initial_prompt(self, protocol: str, first_observation: str, max_tokens: int | None = None) -> RenderedPrompt:
        """The first prompt of an episode; left-truncated to ``max_tokens`` when longer (recorded)."""
        text = self.render_text(
            [{"role": "user", "content": self.first_user_content(protocol, first_observation)}], True
        )
        ids = self.encode(text)
        cut = 0
        if max_tokens is not None and len(ids) > max_tokens:
            cut = len(ids) - max_tokens
            ids = ids[cut:]
        return RenderedPrompt(ids, text, cut)

    def observation_text(self, completion_ids: Sequence[int], observation: str) -> str:
        """Template text after a completion: close the turn, the observation as user turn, next header."""
        probe = [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": _PLACEHOLDER},
            {"role": "user", "content": observation},
        ]
        full = self.render_text(probe, add_generation_prompt=True)
        suffix = full[full.rindex(_PLACEHOLDER) + len(_PLACEHOLDER) :]
        eot = self._eot_texts(completion_ids)
        if eot and suffix.startswith(eot):
            suffix = suffix[len(eot) :]
        return suffix

    def observation_ids(self, completion_ids: Sequence[int], observation: str) -> list[int]:
        """Ids appended after a completion in the concat layout (never trained on)."""
        return self.encode(self.observation_text(completion_ids, observation))

    # ------------------------------------------------------------------ per-step layout
    def step_user_content(
        self,
        protocol: str,
        first_observation: str,
        history: Sequence[tuple[str, str]],
        observation: str,
        step: int,
    ) -> str:
        """User message of a per-step prompt; ``history`` = ``(action_text, next_observation)`` pairs.

        At step 0 this is :meth:`first_user_content`; later it is that, the history, and the current
        observation under ``Current observation:``.
        """
        if step == 0:
            return self.first_user_content(protocol, observation)
        lines = [self.first_user_content(protocol, first_observation)]
        if history:
            lines += ["", f"Your last {len(history)} step(s):"]
            for j, (action_text, next_obs) in enumerate(history):
                lines.append(f"Action: {_strip_think(action_text)}")
                if j < len(history) - 1:  # the last one led to the current observation, shown below
                    lines.append(f"Observation: {next_obs}")
        lines += ["", f"Current observation:\n{observation}"]
        return "\n".join(lines)

    def step_prompt(
        self,
        protocol: str,
        first_observation: str,
        history: Sequence[tuple[str, str]],
        observation: str,
        step: int,
        max_tokens: int | None = None,
    ) -> RenderedPrompt:
        """Per-step prompt with the last ``history_window`` steps of ``history``.

        Truncation rule when the prompt exceeds ``max_tokens``: drop the oldest history steps one at
        a time (counted in ``dropped_history``); if it is still too long with no history, keep its
        last ``max_tokens`` ids (left-truncation, counted in ``truncated_tokens``).
        """
        window = list(history[len(history) - self.history_window :]) if self.history_window else []
        dropped = 0
        while True:
            content = self.step_user_content(protocol, first_observation, window, observation, step)
            text = self.render_text([{"role": "user", "content": content}], True)
            ids = self.encode(text)
            if max_tokens is None or len(ids) <= max_tokens:
                return RenderedPrompt(ids, text, 0, dropped)
            if not window:
                return RenderedPrompt(ids[len(ids) - max_tokens :], text, len(ids) - max_tokens, dropped)
            window = window[1:]
            dropped += 1


# ---------------------------------------------------------------------- drift checks
def _first_mismatch(built: Sequence[int], rendered: Sequence[int]) -> int | None:
    """First position where ``built`` is not a prefix of ``rendered`` (``None`` = it is a prefix)."""
    for i, (a, b) in enumerate(zip(built, rendered)):
        if a != b:
            return i
    if len(built) > len(rendered):
        return len(rendered)
    return None


def concat_drift(
    renderer: ChatRenderer,
    protocol: str,
    first_observation: str,
    completions: Sequence[Sequence[int]],
    observations: Sequence[str],
    built_ids: Sequence[int],
) -> int | None:
    """Re-render a concat conversation and compare with the rollout's ids.

    Args:
        renderer: The renderer used for the rollout.
        protocol: The env's protocol text.
        first_observation: The reset observation.
        completions: Generated ids per step.
        observations: Observation after each step that was shown to the model (one fewer than
            ``completions`` when the episode ended, else equal).
        built_ids: The trajectory's token ids.

    Returns:
        ``None`` when the rollout ids are a prefix of the re-rendered ids (zero drift), else the first
        mismatching position.
    """
    msgs = [{"role": "user", "content": renderer.first_user_content(protocol, first_observation)}]
    for k, comp in enumerate(completions):
        msgs.append({"role": "assistant", "content": renderer.assistant_content(comp)})
        if k < len(observations):
            msgs.append({"role": "user", "content": observations[k]})
    gen = len(observations) >= len(completions) and bool(completions)
    rendered = renderer.encode(renderer.render_text(msgs, add_generation_prompt=gen))
    return _first_mismatch(built_ids, rendered)


def per_step_drift(
    renderer: ChatRenderer, prompt_text: str, completion_ids: Sequence[int], built_ids: Sequence[int]
) -> int | None:
    """Drift of one per-step sequence: encode prompt text + completion text in one go and compare."""
    text = prompt_text + renderer.tokenizer.decode(list(completion_ids), skip_special_tokens=False)
    return _first_mismatch(built_ids, renderer.encode(text))


# ---------------------------------------------------------------------- action spans
def action_char_span(text: str, tags: Sequence[str]) -> tuple[int, int] | None:
    """Character span of the single complete ``<tag>...</tag>`` outside ``<think>`` blocks, tags included."""
    think = think_spans(text)
    alternatives = "|".join(re.escape(t) for t in tags)
    found = [
        m.span()
        for m in re.finditer(rf"<({alternatives})>(.*?)</\1>", text, flags=re.DOTALL)
        if not any(a <= m.start() < b for a, b in think)
    ]
    return found[0] if len(found) == 1 else None


def token_char_spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded text of ``ids`` and, per token, the character span ``[start, end)`` it produced.

    Incremental detokenization: the text of token ``i`` is ``decode(ids[p:i+1])`` minus
    ``decode(ids[p:r])``, where ``r`` is the first token not yet turned into text and ``p`` the one
    before the previous emission (a little left context, so tokenizers that treat a leading space
    specially decode the same as inside the whole text). While a multi-byte character is incomplete
    the window decodes to ``U+FFFD`` and nothing is emitted; the tokens from ``r`` to the completing
    one then share the span of the characters they produced together. Each step decodes a window of
    a few tokens, so the cost is linear in ``len(ids)``.

    Returns:
        ``(text, spans)``: ``text`` is the emitted text (equal to ``decode(ids)`` for byte-level BPE
        tokenizers), ``spans[i]`` token ``i``'s characters in it (empty at the end for trailing
        tokens that never produced text).
    """
    ids = list(ids)
    pieces: list[str] = []
    spans: list[tuple[int, int]] = []
    length, prefix, read = 0, 0, 0
    for i in range(len(ids)):
        before = tokenizer.decode(ids[prefix:read], skip_special_tokens=False)
        after = tokenizer.decode(ids[prefix : i + 1], skip_special_tokens=False)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            delta = after[len(before) :]
            pieces.append(delta)
            spans.extend([(length, length + len(delta))] * (i + 1 - read))
            length += len(delta)
            prefix, read = read, i + 1
    spans.extend([(length, length)] * (len(ids) - len(spans)))
    return "".join(pieces), spans


def action_token_mask(tokenizer: Any, ids: Sequence[int], tags: Sequence[str]) -> list[int]:
    """1 on generated tokens overlapping the action span (see the module docstring), else 0; linear time."""
    text, spans = token_char_spans(tokenizer, ids)
    span = action_char_span(text, tags)
    if span is None:
        return [0] * len(spans)
    start, end = span
    return [1 if a < end and b > start else 0 for a, b in spans]
