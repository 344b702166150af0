import pytest
from stepgym.agents.models import build_tiny_tokenizer
from stepgym.agents.policy import SamplingParams
from stepgym.agents.render import ChatRenderer
from stepgym.agents.scripted import TextAgentPolicy
from stepgym.trainers.evaluate import evaluate, overall, sample_tasks, task_subsets
from thirdparty_env import ENV_ID, BisectAgent


class AlwaysGuess:
    def __init__(self, digit):
        self.digit = digit

    def reset(self, observation, info):
        pass

    def act(self, observation, info):
        return f"<action>guess {self.digit}</action>"


def test_task_subsets_and_fixed_sample():
    by = task_subsets(ENV_ID)
    assert sorted(by) == ["high", "low"] and len(by["low"]) == len(by["high"]) == 5
    a = sample_tasks(by, 2, seed=3)
    assert a == sample_tasks(by, 2, seed=3)
    assert all(len(v) == 2 and set(v) <= set(by[k]) for k, v in a.items())
    assert sample_tasks(by, None, subsets=["low"]).keys() == {"low"}
    with pytest.raises(KeyError, match=r"unknown subset\(s\) \['mid'\]; this env has \['high', 'low'\]"):
        sample_tasks(by, 1, subsets=["mid"])


def test_evaluate_per_subset_numbers():
    tok = build_tiny_tokenizer()
    renderer = ChatRenderer(tok)
    tasks = sample_tasks(task_subsets(ENV_ID), None)
    sampling = SamplingParams(max_new_tokens=64, temperature=0.0)
    res, trajs = evaluate(
        TextAgentPolicy(lambda key: BisectAgent(), tok), renderer, ENV_ID, tasks, sampling=sampling, max_turns=5
    )
    assert len(trajs) == 10 and res["low"].success == 1.0 and res["high"].success == 1.0
    # always guessing 2 within 5 turns: wins only digit-2 -> low 1/5, high 0/5; every other episode
    # runs to the turn limit (5 steps, truncated)
    res, _ = evaluate(
        TextAgentPolicy(lambda key: AlwaysGuess(2), tok), renderer, ENV_ID, tasks, sampling=sampling, max_turns=5
    )
    assert res["low"].success == pytest.approx(0.2) and res["high"].success == 0.0
    assert res["high"].num_steps == 5.0 and res["low"].num_steps == pytest.approx((1 + 4 * 5) / 5)
    assert overall(res).success == pytest.approx(0.1)
