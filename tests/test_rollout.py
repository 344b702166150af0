"""collect(): golden scripted trajectories, masks, ragged groups, truncation, errors, exact prefixes."""

import gymnasium as gym
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import thirdparty_env  # noqa: E402,F401  (registers thirdparty/GuessDigit-v0)
from stepgym.agents.hf import HFPolicy  # noqa: E402
from stepgym.agents.models import build_tiny_model  # noqa: E402
from stepgym.agents.policy import Completion, SamplingParams  # noqa: E402
from stepgym.agents.render import ChatRenderer  # noqa: E402
from stepgym.agents.rollout import DEFAULT_STOP, collect, jsonable, rollout_metrics  # noqa: E402
from stepgym.agents.scripted import RandomAdmissibleAgent, TextAgentPolicy  # noqa: E402
from stepgym.envs import EnvPool, TextEnv, parse_tagged_action  # noqa: E402
from thirdparty_env import BisectAgent  # noqa: E402

SEARCH_ID = "tests/SearchLike-v0"


class SearchLikeEnv(TextEnv):
    """A Search-QA-shaped env: <search>q</search> returns documents, <answer>a</answer> ends (EM reward)."""

    protocol = "Answer the question. Search with <search>query</search>; answer with <answer>text</answer>."
    QA = {"q0": ("capital of france?", ["Paris"]), "q1": ("largest city in france?", ["Paris"])}

    def __init__(self, render_mode=None):
        super().__init__(render_mode=render_mode)
        self._q = "q0"

    @property
    def task_ids(self):
        return sorted(self.QA)

    def task_subset(self, task_id):
        return "nq"

    def _reset_task(self, task_id):
        self._q = task_id
        question, golden = self.QA[task_id]
        return f"Question: {question}", {"question": question, "golden_answers": list(golden)}

    def _step(self, action_text):
        p = parse_tagged_action(action_text, ("search", "answer"))
        if not p.valid:
            return f"Invalid: {p.error}.", 0.0, False, False, {"valid_action": False, "action": None}
        if p.tag == "search":
            doc = "<information>Doc 1 (Title: Paris) Paris is the capital of France.</information>"
            return doc, 0.0, False, False, {"valid_action": True, "action": f"search: {p.content}"}
        em = float(p.content in self.QA[self._q][1])
        return (
            "",
            em,
            True,
            False,
            {"valid_action": True, "action": f"answer: {p.content}", "score": em, "won": em == 1},
        )


if SEARCH_ID not in gym.registry:
    gym.register(SEARCH_ID, entry_point=SearchLikeEnv)


class SearchThenAnswer:
    def reset(self, observation, info):
        self.n = 0

    def act(self, observation, info):
        self.n += 1
        return "<search>capital of france</search>" if self.n == 1 else "<think>ok</think> <answer>Paris</answer>"


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0)


def enc(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


SP = SamplingParams(max_new_tokens=48, temperature=1.0, stop=DEFAULT_STOP, seed=0)


def test_golden_concat_trajectory_scripted(tiny):
    _, tok = tiny
    pool = EnvPool("thirdparty/GuessDigit-v0", 1)
    pol = TextAgentPolicy(lambda key: BisectAgent(), tok)
    (traj,) = collect(pool, pol, ["digit-7"], layout="concat", renderer=ChatRenderer(tok), sampling=SP, max_turns=5)
    # bisect on 0..9 for 7: guess 4 -> "Higher.", guess 7 -> "Correct!"
    assert [s.action for s in traj.steps] == ["guess 4", "guess 7"]
    assert traj.success and traj.outcome == 1.0 and not traj.truncated
    assert traj.task_id == "digit-7" and traj.subset == "high" and traj.group_id == "0:digit-7"
    first = "Guess the secret digit. Answer with <action>guess N</action>, N in 0..9."
    prompt = f"<|im_start|>user\n{first}\n\n{first}\nMake your first guess.<|im_end|>\n<|im_start|>assistant\n"
    a0, a1 = "I think... <action>guess 4</action>", "I think... <action>guess 7</action>"
    obs = "<|im_end|>\n<|im_start|>user\nHigher.<|im_end|>\n<|im_start|>assistant\n"
    (seq,) = traj.sequences
    pieces = [enc(tok, prompt), enc(tok, a0), enc(tok, obs), enc(tok, a1)]
    assert seq.ids == [i for p in pieces for i in p]
    n = [len(p) for p in pieces]
    assert seq.loss_mask == [0] * n[0] + [1] * n[1] + [0] * n[2] + [1] * n[3]
    assert seq.step_index == [-1] * n[0] + [0] * n[1] + [-1] * n[2] + [1] * n[3]
    # action span = tokens overlapping "<action>...</action>": " <" is one token, so 3 reasoning tokens
    # ("I", " think", "...") are outside it in each completion
    span = len(enc(tok, " <action>guess 4</action>"))
    assert n[1] - span == len(enc(tok, "I think..."))
    assert (
        seq.action_mask == [0] * n[0] + [0] * (n[1] - span) + [1] * span + [0] * n[2] + [0] * (n[3] - span) + [1] * span
    )
    assert seq.logprobs == [0.0] * len(seq.ids)
    assert traj.info["retokenization_drift"] == 0
    assert traj.steps[0].observation == f"{first}\nMake your first guess." and traj.steps[1].observation == "Higher."


def test_golden_per_step_trajectory_scripted(tiny):
    _, tok = tiny
    pool = EnvPool("thirdparty/GuessDigit-v0", 1)
    pol = TextAgentPolicy(lambda key: BisectAgent(), tok)
    r = ChatRenderer(tok, history_window=1)
    (traj,) = collect(pool, pol, ["digit-2"], layout="per-step", renderer=r, sampling=SP, max_turns=5)
    # bisect for 2: guess 4 -> Lower, guess 1 -> Higher, guess 2 -> Correct
    assert [s.action for s in traj.steps] == ["guess 4", "guess 1", "guess 2"]
    assert len(traj.sequences) == 3
    first = "Guess the secret digit. Answer with <action>guess N</action>, N in 0..9."
    p2 = (
        f"<|im_start|>user\n{first}\n\n{first}\nMake your first guess.\n\nYour last 1 step(s):\n"
        "Action: I think... <action>guess 1</action>\n\n"
        "Current observation:\nHigher.<|im_end|>\n<|im_start|>assistant\n"
    )
    a2 = "I think... <action>guess 2</action>"
    seq = traj.sequences[2]
    assert seq.ids == enc(tok, p2) + enc(tok, a2)
    np_, na = len(enc(tok, p2)), len(enc(tok, a2))
    assert seq.loss_mask == [0] * np_ + [1] * na and seq.step_index == [-1] * np_ + [2] * na
    for k, s in enumerate(traj.sequences):
        assert s.steps == [k]
    assert traj.info["retokenization_drift"] == 0


def test_search_like_concat_with_tiny_model_is_token_exact(tiny):
    """Every generated log-prob equals a teacher-forced forward over the whole concat sequence."""
    model, tok = tiny
    pool = EnvPool(SEARCH_ID, 3)
    pol = HFPolicy(model, tok, seed=0)
    sp = SamplingParams(max_new_tokens=16, temperature=1.0, stop=DEFAULT_STOP, seed=1)
    trajs = collect(
        pool, pol, ["q0", "q1"], group_size=2, layout="concat", renderer=ChatRenderer(tok), sampling=sp, max_turns=3
    )
    assert [t.group_id for t in trajs] == ["0:q0", "0:q0", "1:q1", "1:q1"]  # pool of 3 < 4 episodes: waves
    for t in trajs:
        assert t.info["reset_info"]["question"] == SearchLikeEnv.QA[t.task_id][0]
        assert t.info["reset_info"]["golden_answers"] == ["Paris"]
        assert t.info["time_generate_s"] > 0 and t.info["time_env_s"] > 0
        # a random model writes garbage: invalid steps, the rollout continues to the turn limit
        assert t.num_steps == 3 and t.truncated and t.info["truncated_reason"] == "max_turns"
        assert all(not s.valid for s in t.steps)
        (seq,) = t.sequences
        ids = torch.tensor([seq.ids])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids).logits[0].float(), -1)  # [L, V]
        pos = [i for i, m in enumerate(seq.loss_mask) if m]
        ref = lp[[p - 1 for p in pos], [seq.ids[p] for p in pos]]
        assert torch.allclose(ref, torch.tensor([seq.logprobs[p] for p in pos]), atol=1e-4)
        assert sorted(set(seq.step_index[p] for p in pos)) == [0, 1, 2]
        assert sum(seq.loss_mask) == t.info["num_generated_tokens"] == sum(s.info["num_tokens"] for s in t.steps)
    m = rollout_metrics(trajs)
    assert m["rollout/invalid_action_rate"] == 1.0 and m["rollout/truncated"] == 1.0


def test_search_like_scripted_success_and_masks(tiny):
    _, tok = tiny
    pool = EnvPool(SEARCH_ID, 2)
    pol = TextAgentPolicy(lambda key: SearchThenAnswer(), tok)
    trajs = collect(pool, pol, ["q0"], group_size=2, layout="concat", renderer=ChatRenderer(tok), sampling=SP)
    for t in trajs:
        assert t.success and t.outcome == 1.0 and t.num_steps == 2
        (seq,) = t.sequences
        gen = tok.decode([i for i, m in zip(seq.ids, seq.loss_mask) if m])
        assert gen == "<search>capital of france</search><think>ok</think> <answer>Paris</answer>"
        act = tok.decode([i for i, m in zip(seq.ids, seq.action_mask) if m])
        assert act == "<search>capital of france</search> <answer>Paris</answer>"
        # the observation (documents) is in the sequence but never trainable
        obs_ids = [i for i, m in zip(seq.ids, seq.loss_mask) if not m]
        assert "Paris is the capital of France." in tok.decode(obs_ids)
        assert t.info["retokenization_drift"] == 0


class FlakyPolicy:
    """Fails for every prompt of the second call whose index is odd; otherwise answers wrongly."""

    def __init__(self, tok):
        self.tok, self.calls = tok, 0

    def generate(self, prompts, sampling):
        self.calls += 1
        out = []
        for i, _ in enumerate(prompts):
            if self.calls == 2 and i % 2 == 1:
                out.append(Completion([], [], "", "error", "backend exploded"))
            else:
                ids = enc(self.tok, "<action>guess 0</action>")
                out.append(Completion(ids, [-0.5] * len(ids), self.tok.decode(ids), "stop"))
        return out


def test_policy_error_truncates_only_affected_episodes(tiny):
    _, tok = tiny
    pool = EnvPool("thirdparty/GuessDigit-v0", 4)
    trajs = collect(
        pool,
        FlakyPolicy(tok),
        ["digit-5"],
        group_size=4,
        layout="per-step",
        renderer=ChatRenderer(tok),
        sampling=SP,
        max_turns=3,
    )
    # call 2 = turn 2: episodes 1 and 3 (odd rows) fail after one step; 0 and 2 run to the 3-turn limit
    assert [t.num_steps for t in trajs] == [3, 1, 3, 1]
    assert [t.info.get("truncated_reason") for t in trajs] == ["max_turns", "policy_error", "max_turns", "policy_error"]
    assert trajs[1].info["error"] == "policy: backend exploded" and trajs[1].truncated
    assert len(trajs[1].sequences) == 1


def test_policy_exception_is_contained(tiny):
    _, tok = tiny

    class Broken:
        def generate(self, prompts, sampling):
            raise RuntimeError("server down")

    (t,) = collect(
        EnvPool("thirdparty/GuessDigit-v0", 1), Broken(), ["digit-1"], renderer=ChatRenderer(tok), sampling=SP
    )
    assert t.num_steps == 0 and t.truncated and t.sequences == []
    assert t.info["error"] == "policy: RuntimeError: server down"


def test_env_error_is_recorded(tiny):
    _, tok = tiny

    class Boom:
        def reset(self, o, i):
            pass

        def act(self, o, i):
            return "<action>boom</action>"

    pol = TextAgentPolicy(lambda k: Boom(), tok)
    (t,) = collect(EnvPool("thirdparty/GuessDigit-v0", 1), pol, ["digit-1"], renderer=ChatRenderer(tok), sampling=SP)
    assert t.num_steps == 1 and t.truncated and t.info["truncated_reason"] == "env_error"
    assert "exploded on purpose" in t.info["error"]


class GuessZero:
    def reset(self, o, i):
        pass

    def act(self, o, i):
        return "<action>guess 0</action>"


def test_total_token_limit_and_prompt_truncation(tiny):
    _, tok = tiny
    pol = TextAgentPolicy(lambda k: GuessZero(), tok)
    r = ChatRenderer(tok)
    pool = EnvPool("thirdparty/GuessDigit-v0", 1)
    (full,) = collect(pool, pol, ["digit-9"], renderer=r, sampling=SP, max_turns=1)
    n_prompt = full.sequences[0].loss_mask.index(1)
    n0 = len(full.sequences[0].ids)
    # turn 1 needs n0 + len("Higher." turn ids) + 48 tokens; a cap of n0 + 48 lets turn 0 run, not turn 1
    (t,) = collect(pool, pol, ["digit-9"], renderer=r, sampling=SP, max_turns=5, max_total_tokens=n0 + 48)
    assert t.num_steps == 1 and t.truncated and t.info["truncated_reason"] == "max_total_tokens"
    assert len(t.sequences[0].ids) == n0  # the observation of the turn that never ran is not kept
    # a prompt cap below the first prompt left-truncates it to its last 10 ids, and says so
    (t2,) = collect(pool, pol, ["digit-9"], renderer=r, sampling=SP, max_turns=1, max_prompt_tokens=10)
    assert t2.info["prompt_truncation"] == [{"step": 0, "left_truncated_tokens": n_prompt - 10}]
    assert t2.sequences[0].ids[:10] == full.sequences[0].ids[n_prompt - 10 : n_prompt]
    assert t2.info["retokenization_drift"] is None
    # later concat turns are never cut in the middle: the episode ends instead
    (t3,) = collect(pool, pol, ["digit-9"], renderer=r, sampling=SP, max_turns=5, max_prompt_tokens=n0)
    assert t3.num_steps == 1 and t3.info["truncated_reason"] == "max_prompt_tokens"


def test_int_tasks_are_seeds_and_group_size(tiny):
    _, tok = tiny
    pol = TextAgentPolicy(lambda k: BisectAgent(), tok)
    trajs = collect(
        EnvPool("thirdparty/GuessDigit-v0", 2), pol, [3, 3], group_size=1, renderer=ChatRenderer(tok), sampling=SP
    )
    assert trajs[0].task_id == trajs[1].task_id and trajs[0].seed == 3  # same seed -> same task
    assert trajs[0].group_id != trajs[1].group_id


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown layout"):
        collect(None, None, [], layout="flat", renderer=None, sampling=SP)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="group_size"):
        collect(None, None, [], group_size=0, renderer=None, sampling=SP)  # type: ignore[arg-type]


def test_jsonable():
    class X:
        pass

    assert jsonable({"a": (1, 2), 3: X(), "f": float("nan"), "n": {"x": [X(), "y"]}}) == {
        "a": [1, 2],
        "f": None,
        "n": {"x": ["y"]},
    }


def test_random_admissible_agent_only_makes_valid_moves(tiny):
    _, tok = tiny
    pol = TextAgentPolicy(lambda k: RandomAdmissibleAgent(seed=k), tok)
    trajs = collect(
        EnvPool("thirdparty/GuessDigit-v0", 2),
        pol,
        ["digit-3"],
        group_size=4,
        layout="per-step",
        renderer=ChatRenderer(tok),
        sampling=SP,
        max_turns=4,
    )
    assert all(s.valid for t in trajs for s in t.steps)
    assert all(t.success or t.info["truncated_reason"] == "max_turns" for t in trajs)


def test_expert_plan_agent_plays_the_plan():
    from stepgym.agents.scripted import ExpertPlanAgent

    a = ExpertPlanAgent()
    a.reset("o", {"expert_plan": ["go to desk 1", "take mug 1 from desk 1"]})
    assert [a.act("o", {}) for _ in range(3)] == [
        "<action>go to desk 1</action>",
        "<action>take mug 1 from desk 1</action>",
        "<action>take mug 1 from desk 1</action>",  # the plan ran out: the last command again
    ]
    with pytest.raises(KeyError, match="no 'expert_plan'"):
        a.reset("o", {})
