"""The multi-turn KV engine: same ids and log-probs as the no-cache path, cache reuse, ragged batches."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import test_rollout  # noqa: E402,F401  (registers tests/SearchLike-v0)
from stepgym.agents.engine import sample_next  # noqa: E402
from stepgym.agents.hf import HFPolicy  # noqa: E402
from stepgym.agents.models import build_tiny_model  # noqa: E402
from stepgym.agents.policy import SamplingParams  # noqa: E402
from stepgym.agents.render import ChatRenderer  # noqa: E402
from stepgym.agents.rollout import DEFAULT_STOP, collect  # noqa: E402
from stepgym.envs import EnvPool  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0)


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def teacher_forced(model, ids, positions):
    """log_softmax(logits) of ids[p] given ids[:p], from one forward over the whole row with no cache."""
    with torch.no_grad():
        lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)  # [L, V]
    return lp[[p - 1 for p in positions], [ids[p] for p in positions]]


def run(model, tok, engine, layout, temperature):
    pool = EnvPool(test_rollout.SEARCH_ID, 3)
    pol = HFPolicy(model, tok, seed=0, engine=engine)
    # "e" ends many completions early, so rows leave the decode batch at different steps
    sp = SamplingParams(max_new_tokens=14, temperature=temperature, stop=(*DEFAULT_STOP, "e"), seed=5)
    try:
        trajs = collect(
            pool, pol, ["q0", "q1"], group_size=3, layout=layout, renderer=ChatRenderer(tok), sampling=sp, max_turns=3
        )
    finally:
        pool.close()
    return trajs, pol


@pytest.mark.parametrize("layout", ["concat", "per-step"])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_kv_engine_equals_no_cache_path(tiny, layout, temperature):
    """Equal ids, log-probs within 1e-4 of the legacy engine and of a teacher-forced forward; less prefill."""
    model, tok = tiny
    kv, kv_pol = run(model, tok, "kv", layout, temperature)
    old, _ = run(model, tok, "legacy", layout, temperature)
    assert len(kv) == len(old) == 6
    lengths = set()
    for a, b in zip(kv, old):
        assert len(a.sequences) == len(b.sequences) >= 1
        for sa, sb in zip(a.sequences, b.sequences):
            assert sa.ids == sb.ids and sa.loss_mask == sb.loss_mask
            assert max(abs(x - y) for x, y in zip(sa.logprobs, sb.logprobs)) < 1e-4
            pos = [i for i, m in enumerate(sa.loss_mask) if m]
            ref = teacher_forced(model, sa.ids, pos)
            assert torch.allclose(ref, torch.tensor([sa.logprobs[p] for p in pos]), atol=1e-4)
        lengths.update(s.info["num_tokens"] for s in a.steps)
    assert len(lengths) > 1  # completions of different lengths: the batch was ragged
    st = kv_pol.stats
    generated = sum(t.info["num_generated_tokens"] for t in kv)
    assert st.decode_tokens == generated  # finished rows left the batch: no token decoded for them
    prompt_tokens = st.prefill_tokens + st.reused_tokens
    assert st.reused_tokens > 0.5 * prompt_tokens  # most of every prompt came from the cache
    if layout == "concat":
        # a later turn prefills only its new observation and the last sampled token: at most the row's
        # non-generated ids plus one per later turn (less, as group members share their first prompt)
        bound = 0
        for t in kv:
            (seq,) = t.sequences
            bound += len(seq.ids) - sum(seq.loss_mask) + t.num_steps - 1
        assert st.prefill_tokens <= bound


def test_group_members_share_the_first_prompt(tiny):
    """G identical prompts in one call: the first is prefilled, the others reuse all but its last token."""
    model, tok = tiny
    pol = HFPolicy(model, tok, engine="kv")
    p = enc(tok, "the capital of france is a city named")
    out = pol.generate([p] * 4, SamplingParams(max_new_tokens=3, temperature=0.0))
    assert pol.stats.prefill_tokens == len(p) + 3 and pol.stats.reused_tokens == 3 * (len(p) - 1)
    assert len({tuple(c.ids) for c in out}) == 1


def test_cache_dropped_when_weights_change_in_place(tiny):
    model, tok = build_tiny_model(seed=1)
    pol = HFPolicy(model, tok, engine="kv")
    legacy = HFPolicy(model, tok, engine="legacy")
    sp = SamplingParams(max_new_tokens=4, temperature=0.0)
    p = enc(tok, "go to desk 1 and look")
    first = pol.generate([p], sp)[0]
    nxt = p + first.ids + enc(tok, " you see a mug")
    with torch.no_grad():
        for w in model.parameters():
            w.mul_(1.5)  # an optimizer step, in place
    before = pol.stats.reused_tokens
    again = pol.generate([nxt], sp)[0]
    assert pol.stats.reused_tokens == before  # the stale cache was not used
    ref = legacy.generate([nxt], sp)[0]
    assert again.ids == ref.ids and max(abs(a - b) for a, b in zip(again.logprobs, ref.logprobs)) < 1e-4
    pol.generate([nxt + again.ids], sp)
    assert pol.stats.reused_tokens > before  # unchanged weights: reused
    pol.reset_cache()
    r = pol.stats.reused_tokens
    pol.generate([nxt + again.ids], sp)
    assert pol.stats.reused_tokens == r


def test_sample_next_inverse_cdf():
    logp = torch.tensor([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]).log()
    assert sample_next(logp, 1.0, torch.tensor([0.4, 0.6])).tolist() == [0, 1]
    assert sample_next(logp, 1.0, torch.tensor([0.79, 0.81])).tolist() == [1, 2]
    # top_p=0.7 keeps {0, 1} (mass 0.8): u scales into 0.8, so u=0.99 -> token 1, never 2
    assert sample_next(logp, 0.7, torch.tensor([0.6, 0.99])).tolist() == [0, 1]
    assert sample_next(logp, 0.7, torch.tensor([0.63, 0.0])).tolist() == [1, 0]


def test_unknown_engine_names_the_choices(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="did you mean 'legacy'"):
        HFPolicy(model, tok, engine="legasy")
