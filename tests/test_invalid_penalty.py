"""The invalid-action penalty has one owner, the env: per-step rewards and scores on the three real envs.

Each trajectory is played by a scripted agent through ``collect`` and collated as the trainer does.
The penalty must appear exactly once in the invalid step's reward (GiGPO / StepPO read these) and once
in the trajectory score (GRPO and everything built on it), and never in the outcome.
"""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from stepgym.agents.models import build_tiny_model  # noqa: E402
from stepgym.agents.policy import SamplingParams  # noqa: E402
from stepgym.agents.render import ChatRenderer  # noqa: E402
from stepgym.agents.rollout import DEFAULT_STOP, collect  # noqa: E402
from stepgym.agents.scripted import ExpertPlanAgent, TextAgentPolicy  # noqa: E402
from stepgym.envs import EnvPool  # noqa: E402
from stepgym.trainers.batch import collate  # noqa: E402

SP = SamplingParams(max_new_tokens=48, temperature=1.0, stop=DEFAULT_STOP, seed=0)


@pytest.fixture(scope="module")
def tok():
    return build_tiny_model(seed=0)[1]


class Scripted:
    """Plays ``prefix`` (raw texts) first, then the env's expert plan (when it has one)."""

    def __init__(self, prefix, plan=True):
        self.prefix, self.plan = list(prefix), ExpertPlanAgent() if plan else None

    def reset(self, obs, info):
        if self.plan is not None:
            self.plan.reset(obs, info)

    def act(self, obs, info):
        return self.prefix.pop(0) if self.prefix else self.plan.act(obs, info)


def _play(tok, env_id, env_kwargs, task, prefix, *, plan=True, max_turns=50):
    pool = EnvPool(env_id, 1, env_kwargs=env_kwargs)
    try:
        pol = TextAgentPolicy(lambda key: Scripted(prefix, plan), tok)
        (traj,) = collect(pool, pol, [task], renderer=ChatRenderer(tok), sampling=SP, max_turns=max_turns)
    finally:
        pool.close()
    return traj


def test_alfworld_invalid_step_is_penalised_once(tok):
    pytest.importorskip("alfworld")
    task = "valid_unseen/look_at_obj_in_light-AlarmClock-None-DeskLamp-308/trial_T20190908_222917_366542"
    env_kwargs = {"games": [task], "invalid_penalty": 0.1}
    traj = _play(tok, "stepgym/ALFWorld-v0", env_kwargs, task, ["no tags here"])
    # one invalid step, then the 4-command walkthrough wins
    assert [s.valid for s in traj.steps] == [False, True, True, True, True]
    assert traj.outcome == 1.0 and traj.success
    c = collate([traj]).credit
    # the env's rewards as returned: (-0.1, 0, 0, 0, 1); before the fix the trainer subtracted 0.1 again (-0.2)
    assert c.step_rewards == ((-0.1, 0.0, 0.0, 0.0, 1.0),)
    assert c.scores.tolist() == pytest.approx([0.9])  # outcome 1 - 0.1 once


def _searchqa_data(root):
    base = root / "searchqa" / "nq"
    base.mkdir(parents=True)
    q = {"id": "nq_1", "question": "which city is the eiffel tower in", "golden_answers": ["Paris"]}
    (base / "questions.jsonl").write_text(json.dumps(q) + "\n")
    passage = {"id": "t1", "contents": '"Eiffel Tower"\nThe Eiffel Tower is a lattice tower in Paris, France.'}
    (root / "searchqa" / "corpus.jsonl").write_text(json.dumps(passage) + "\n")
    return root


def test_searchqa_invalid_step_is_penalised_once_also_when_the_rollout_cuts_there(tok, tmp_path):
    data = _searchqa_data(tmp_path / "data")
    kw = {"subset": "nq", "split": "all", "retriever": "bm25s", "data_dir": str(data), "index_dir": str(tmp_path)}
    kw["invalid_action_penalty"] = 0.01
    answered = _play(tok, "stepgym/SearchQA-v0", kw, "nq/nq_1", ["oops", "<answer>Paris</answer>"], plan=False)
    # the rollout stops after one turn, on the invalid step (the env would allow 4)
    cut = _play(tok, "stepgym/SearchQA-v0", kw, "nq/nq_1", ["oops"], plan=False, max_turns=1)
    assert [s.valid for s in answered.steps] == [False, True] and answered.outcome == 1.0
    assert [s.valid for s in cut.steps] == [False] and cut.truncated
    # a cut episode has no outcome: 0, not the invalid step's -0.01 (which the score then counted twice)
    assert cut.outcome == 0.0 and not cut.success
    c = collate([answered, cut]).credit
    assert c.step_rewards == ((-0.01, 1.0), (-0.01,))
    assert c.scores.tolist() == pytest.approx([0.99, -0.01])


def test_sandbox_invalid_and_inadmissible_steps_are_penalised_once(tok):
    kw = {"num_tasks": 1, "max_steps": 20, "invalid_penalty": 0.1}
    prefix = ["no tags here", "<action>fly to the moon</action>"]  # unparsable, then inadmissible
    traj = _play(tok, "stepgym/Sandbox-One-v0", kw, "heat-train-0", prefix)
    assert traj.success and traj.outcome == 1.0
    n = traj.num_steps
    assert [s.valid for s in traj.steps] == [False, False] + [True] * (n - 2)
    c = collate([traj]).credit
    assert c.step_rewards == ((-0.1, -0.1) + (0.0,) * (n - 3) + (1.0,),)
    assert c.scores.tolist() == pytest.approx([0.8])
    # the penalty is the env's choice: the default sandbox has none, and then nothing is subtracted
    plain = _play(tok, "stepgym/Sandbox-One-v0", {"num_tasks": 1, "max_steps": 20}, "heat-train-0", prefix)
    assert collate([plain]).credit.scores.tolist() == pytest.approx([1.0])
