"""The transformers policy: log-probs equal a teacher-forced forward, stops, seeds, errors."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from stepgym.agents.hf import HFPolicy, find_stop  # noqa: E402
from stepgym.agents.models import build_tiny_model  # noqa: E402
from stepgym.agents.policy import SamplingParams  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0)


def teacher_forced(model, prompt, completion, temperature):
    """log_softmax(logits / T) of each completion token, from one un-padded forward."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logits = model(ids).logits[0].float()  # [L, V]
    t = temperature if temperature > 0 else 1.0
    lp = torch.log_softmax(logits / t, dim=-1)[len(prompt) - 1 : -1]  # [C, V]
    return lp.gather(-1, torch.tensor(completion)[:, None])[:, 0]


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_logprobs_match_teacher_forcing_with_left_padding(tiny, temperature, top_p):
    model, tok = tiny
    pol = HFPolicy(model, tok)
    # prompts of different lengths -> the shorter ones are left padded in the batch
    prompts = [
        tok(t, add_special_tokens=False)["input_ids"] for t in ("hi", "the capital of france is", "go to desk 1")
    ]
    outs = pol.generate(prompts, SamplingParams(max_new_tokens=12, temperature=temperature, top_p=top_p, seed=3))
    for p, c in zip(prompts, outs):
        assert c.finish_reason in ("stop", "length") and len(c.ids) >= 1
        ref = teacher_forced(model, p, c.ids, temperature)
        assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4), (c.logprobs, ref)
        assert c.text == tok.decode(c.ids)


def test_greedy_batched_equals_one_by_one(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("a", "take mug 1 from desk 1")]
    sp = SamplingParams(max_new_tokens=10, temperature=0.0)
    batched = pol.generate(prompts, sp)
    single = [pol.generate([p], sp)[0] for p in prompts]
    assert [c.ids for c in batched] == [c.ids for c in single]


def test_seed_reproduces_and_differs(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok)
    p = [tok("hello", add_special_tokens=False)["input_ids"]] * 2
    a = pol.generate(p, SamplingParams(max_new_tokens=8, seed=7))
    b = pol.generate(p, SamplingParams(max_new_tokens=8, seed=7))
    assert [c.ids for c in a] == [c.ids for c in b]
    # the two identical prompts in one batch get different draws (one generator per batch)
    assert a[0].ids != a[1].ids


def test_stop_string_kept_and_finish_reason(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok)
    p = [tok("hello", add_special_tokens=False)["input_ids"]]
    free = pol.generate(p, SamplingParams(max_new_tokens=20, temperature=0.0))[0]
    assert free.finish_reason == "length" and len(free.ids) == 20
    # use a piece of the greedy continuation as a stop string: generation must end right after it
    stop = free.text[5:9]
    assert stop and free.text.find(stop) >= 0
    cut = pol.generate(p, SamplingParams(max_new_tokens=20, temperature=0.0, stop=(stop,)))[0]
    assert cut.finish_reason == "stop"
    assert stop in cut.text and free.ids[: len(cut.ids)] == cut.ids
    assert find_stop(cut.text, [stop]) > len(tok.decode(cut.ids[:-1]))  # the last token completed the stop string


def test_eos_ends_a_completion(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok, stop_token_ids=[])
    p = [tok("hello", add_special_tokens=False)["input_ids"]]
    greedy = pol.generate(p, SamplingParams(max_new_tokens=6, temperature=0.0))[0]
    # declare the 3rd greedy token a stop token: the completion keeps it and stops there
    pol2 = HFPolicy(model, tok, stop_token_ids=[greedy.ids[2]])
    out = pol2.generate(p, SamplingParams(max_new_tokens=6, temperature=0.0))[0]
    assert out.ids == greedy.ids[: greedy.ids.index(greedy.ids[2]) + 1] and out.finish_reason == "stop"


def test_error_gives_error_completions(tiny):
    model, tok = tiny
    pol = HFPolicy(model, tok)
    outs = pol.generate([[], [5, 6]], SamplingParams(max_new_tokens=3))
    assert [c.finish_reason for c in outs] == ["error", "error"]
    assert "empty prompt" in outs[0].error


def test_update_weights_in_place(tiny):
    model, tok = tiny
    other, _ = build_tiny_model(seed=5)
    fresh, _ = build_tiny_model(seed=0)
    pol = HFPolicy(fresh, tok)
    pol.update_weights(other.state_dict())
    w = "model.layers.1.mlp.up_proj.weight"
    assert torch.equal(fresh.state_dict()[w], other.state_dict()[w])
    with pytest.raises(KeyError, match="unknown parameter names"):
        pol.update_weights({"nope.weight": torch.zeros(1)})
