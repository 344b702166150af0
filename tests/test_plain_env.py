"""Issue 13: a plain Gymnasium env (no stepgym import, no optional attribute) works unchanged, and env
faults fail loudly. The envs live in ``tests/plain_env.py``."""

import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import plain_env  # noqa: E402  (registers the plain envs)
from plain_env import FAULTY_ID, NONDETERMINISTIC_ID, PLAIN_ID  # noqa: E402
from stepgym.agents.hf import HFPolicy  # noqa: E402
from stepgym.agents.models import build_tiny_model  # noqa: E402
from stepgym.agents.policy import Completion, SamplingParams  # noqa: E402
from stepgym.agents.render import ChatRenderer  # noqa: E402
from stepgym.agents.rollout import GroupPurityError, collect, env_faults, rollout_metrics  # noqa: E402
from stepgym.envs import SEED_SUBSET, EnvIdError, EnvPool, resolve_env_id, seed_tasks  # noqa: E402
from stepgym.trainers.faults import EnvFaultError  # noqa: E402
from stepgym.trainers.runner import eval_task_ids, run_training, train_task_ids  # noqa: E402
from trainer_helpers import small_run_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SP = SamplingParams(max_new_tokens=8, temperature=1.0, seed=0)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model(seed=0)


def _assert_pure_groups(trajs):
    """Every group: one reset seed, one first observation, one task id, G members."""
    groups = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t)
    for members in groups.values():
        assert len({m.seed for m in members}) == 1
        assert len({m.steps[0].observation for m in members if m.steps}) <= 1
        assert len({m.task_id for m in members}) == 1
    return groups


# --------------------------------------------------------------------------- collect
def test_plain_env_groups_reset_with_one_seed_and_sample_differently(tiny):
    model, tok = tiny
    trajs = collect(
        EnvPool(PLAIN_ID, 4),
        HFPolicy(model, tok, seed=0),
        [3, 7],
        group_size=3,
        renderer=ChatRenderer(tok),
        sampling=SP,
        max_turns=2,
    )
    groups = _assert_pure_groups(trajs)
    assert len(groups) == 2 and all(len(m) == 3 for m in groups.values())
    # a task is its reset seed: the env drew the secret from it (seed 3 -> odd hint, seed 7 -> even, see below)
    assert [t.seed for t in trajs] == [3, 3, 3, 7, 7, 7] and [t.task_id for t in trajs] == ["3"] * 3 + ["7"] * 3
    env = gym.make(PLAIN_ID)
    for t in trajs:
        assert t.steps[0].observation == env.reset(seed=t.seed)[0] and t.subset == SEED_SUBSET
    # the policy's samples differ inside a group (otherwise every advantage would be 0)
    for members in groups.values():
        assert len({tuple(m.steps[0].action_text for m in members)}) == 1  # one tuple
        assert len({m.steps[0].action_text for m in members}) > 1


def test_instructions_start_the_first_prompt_of_an_env_without_protocol(tiny):
    _, tok = tiny
    renderer = ChatRenderer(tok)
    text = "Reply with <action>guess N</action> and nothing else."
    for layout in ("concat", "per-step"):
        plain, told = (
            collect(
                EnvPool(PLAIN_ID, 1),
                _Fixed("<action>guess 1</action>", tok),
                [0],
                renderer=renderer,
                sampling=SP,
                layout=layout,
                max_turns=1,
                instructions=instr,
            )[0]
            for instr in (None, text)
        )
        first = tok.decode(told.sequences[0].ids)
        assert text in first and text not in tok.decode(plain.sequences[0].ids)
        assert first.index(text) < first.index("Guess my digit")  # before the first observation


class _Fixed:
    """A policy that always writes ``text`` (encoded with the tokenizer)."""

    def __init__(self, text, tok):
        self.ids = tok(text, add_special_tokens=False)["input_ids"]
        self.tok = tok

    def generate(self, prompts, sampling):
        return [Completion(list(self.ids), [0.0] * len(self.ids), self.tok.decode(self.ids), "stop") for _ in prompts]


def test_nondeterministic_reset_is_refused_with_the_fix(tiny):
    model, tok = tiny
    with pytest.raises(GroupPurityError, match=r"env PlainGuessNondeterministic-v0 is not deterministic in its reset"):
        collect(
            EnvPool(NONDETERMINISTIC_ID, 2),
            HFPolicy(model, tok, seed=0),
            [5],
            group_size=2,
            renderer=ChatRenderer(tok),
            sampling=SP,
        )


def test_env_that_ignores_the_task_id_option_is_refused(tiny):
    _, tok = tiny

    class Ignores(plain_env.PlainGuessEnv):
        task_ids = ("a", "b")

        def reset(self, *, seed=None, options=None):
            obs, info = super().reset(seed=seed)
            return obs, {"task_id": "a"}

    gym.register("tests/IgnoresTaskId-v0", entry_point=Ignores)
    pol = _Fixed("<action>guess 1</action>", tok)
    with pytest.raises(GroupPurityError, match=r"ignores options\['task_id'\]"):
        collect(EnvPool("tests/IgnoresTaskId-v0", 1), pol, ["b"], renderer=ChatRenderer(tok), sampling=SP)


def test_nan_reward_is_reported_as_the_envs_fault(tiny):
    _, tok = tiny
    pool = EnvPool(FAULTY_ID, 2, env_kwargs={"fault": "nan", "fault_seeds": [4]})
    trajs = collect(pool, _Fixed("<action>guess 11</action>", tok), [4, 5], renderer=ChatRenderer(tok), sampling=SP)
    bad, good = trajs
    assert env_faults(trajs) == [bad]
    assert bad.info["truncated_reason"] == "nonfinite_reward" and bad.steps[0].reward == 0.0
    assert bad.steps[0].info["nonfinite_reward"] == "nan"
    assert bad.info["error"].startswith(f"env {FAULTY_ID} returned a non-finite reward (nan) at step 0 of task 4")
    assert good.info.get("truncated_reason") != "nonfinite_reward" and all(math.isfinite(s.reward) for s in good.steps)
    m = rollout_metrics(trajs)
    assert m["rollout/nonfinite_rewards"] == 1.0 and m["rollout/env_errors"] == 0.0
    json.loads(bad.model_dump_json())  # no NaN reaches a record


@pytest.mark.parametrize("backend", ["inprocess", "process"])
def test_env_exception_carries_its_traceback(tiny, backend):
    _, tok = tiny
    pool = EnvPool(FAULTY_ID, 1, backend=backend, env_kwargs={"fault": "raise", "fault_seeds": [2]})
    try:
        (t,) = collect(pool, _Fixed("<action>guess 1</action>", tok), [2], renderer=ChatRenderer(tok), sampling=SP)
    finally:
        pool.close()
    assert t.info["truncated_reason"] == "env_error" and "exploded on purpose" in t.info["error"]
    assert "Traceback" in t.info["error_traceback"] and "plain_env.py" in t.info["error_traceback"]
    assert rollout_metrics([t])["rollout/env_errors"] == 1.0


def test_overlong_action_is_cut_before_rendering_in_linear_time(tiny):
    _, tok = tiny
    long_text = "<action>guess 1</action>" + " word" * 20_000  # ~100k characters
    t0 = time.perf_counter()
    (t,) = collect(
        EnvPool(PLAIN_ID, 1),
        _Fixed(long_text, tok),
        [0],
        renderer=ChatRenderer(tok),
        sampling=SamplingParams(max_new_tokens=100_000),
        max_action_tokens=64,
        max_turns=1,
    )
    assert time.perf_counter() - t0 < 30  # generous: the quadratic mask took minutes here
    step = t.steps[0]
    assert step.info["num_tokens"] == 64 and step.info["finish_reason"] == "length"
    assert step.info["action_cut_tokens"] == len(tok(long_text, add_special_tokens=False)["input_ids"]) - 64
    assert sum(t.sequences[0].loss_mask) == 64 and sum(t.sequences[0].action_mask) > 0


# --------------------------------------------------------------------------- tasks and ids
def test_seed_tasks_of_train_and_eval_are_disjoint(tmp_path):
    cfg = small_run_config(tmp_path, env_id=f"plain_env:{PLAIN_ID}", seed_tasks=50, eval={"tasks_per_subset": 50})
    train = train_task_ids(cfg)
    ev = eval_task_ids(cfg)
    assert sorted(train) == list(range(50)) == seed_tasks(50, "train")
    assert list(ev) == [SEED_SUBSET] and sorted(ev[SEED_SUBSET]) == list(range(50, 100))


def test_env_ids_resolve_module_form_and_suggest_close_ids():
    assert resolve_env_id(f"plain_env:{PLAIN_ID}") == f"plain_env:{PLAIN_ID}"
    assert resolve_env_id("sandbox", {"sandbox": "stepgym/Sandbox-One-v0"}) == "stepgym/Sandbox-One-v0"
    with pytest.raises(EnvIdError, match=r"did you mean 'PlainGuess-v0'"):
        resolve_env_id("PlainGues-v0")
    with pytest.raises(EnvIdError, match=r"could not import module 'no_such_module_x'"):
        resolve_env_id("no_such_module_x:Foo-v0")
    with pytest.raises(EnvIdError, match=r"does it call gym.register\('Nope-v0'"):
        resolve_env_id("plain_env:Nope-v0")


# --------------------------------------------------------------------------- training
def _pure_rollout(seen):
    def wrap(fn):
        def rollout(model, tasks, seed):
            trajs = fn(model, tasks, seed)
            assert all(isinstance(t, int) for t in tasks)  # a seed-only env trains on reset seeds
            _assert_pure_groups(trajs)
            seen.append(trajs)
            return trajs

        return rollout

    return wrap


@pytest.mark.parametrize("layout", ["per-step", "concat"])
@pytest.mark.parametrize("credit", ["grpo", "gigpo", "stepopsd", "steppo"])
def test_plain_env_trains_two_steps(tmp_path, credit, layout):
    cfg = small_run_config(tmp_path / "run", env_id=f"plain_env:{PLAIN_ID}", credit=credit, layout=layout, group_size=3)
    seen = []
    result = run_training(cfg, wrap_rollout=_pure_rollout(seen))
    assert result.final_step == 2 and len(seen) == 2
    lines = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for line, trajs in zip(lines, seen):
        assert line["rollout/trajectories"] == len(trajs) == 6
        assert line["rollout/env_errors"] == 0.0 and line["rollout/nonfinite_rewards"] == 0.0
        # logged every step: the share of episodes whose re-rendered text re-encodes to other ids (a random
        # tiny model samples non-canonical token sequences, so it is not 0 here)
        drifted = [t.info["retokenization_drift"] > 0 for t in trajs]
        assert line["rollout/retokenization_drift"] == pytest.approx(sum(drifted) / len(drifted))


def _faulty_config(tmp_path, fault, **kw):
    # seed_tasks=2 and 2 tasks per step: every step trains on seeds 0 and 1, so seed 0 is half the episodes
    return small_run_config(
        tmp_path / "run",
        env_id=f"plain_env:{FAULTY_ID}",
        env_kwargs={"fault": fault, "fault_seeds": [0]},
        seed_tasks=2,
        layout="concat",
        **kw,
    )


@pytest.mark.parametrize("fault", ["raise", "nan"])
def test_env_faults_past_the_threshold_stop_the_run(tmp_path, fault):
    with pytest.raises(EnvFaultError) as info:
        run_training(_faulty_config(tmp_path, fault))
    msg = str(info.value)
    assert f"training step 1: 2 of 4 episodes (50%) ended on a fault of env plain_env:{FAULTY_ID}" in msg
    assert "max_env_error_share=0.1" in msg and "no checkpoint was written yet" in msg
    if fault == "raise":
        assert "the plain env exploded on purpose" in msg and "Traceback" in msg and "plain_env.py" in msg
    else:
        assert "non-finite reward (nan) at step 0 of task 0" in msg


def test_env_faults_below_the_threshold_warn_and_are_left_out(tmp_path, caplog):
    seen = []

    def keep(fn):
        def rollout(model, tasks, seed):
            trajs = fn(model, tasks, seed)
            seen.append(trajs)
            return trajs

        return rollout

    with caplog.at_level(logging.WARNING, logger="stepgym.trainers.faults"):
        result = run_training(_faulty_config(tmp_path, "raise", max_env_error_share=0.6), wrap_rollout=keep)
    assert result.final_step == 2
    lines = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    for line, trajs in zip(lines, seen):
        assert line["rollout/env_errors"] == 2.0 and line["rollout/trajectories"] == 4.0
        # only the 2 healthy episodes became rows (concat: one row per episode)
        assert line["rollout/rows"] == 2.0 == len([t for t in trajs if not env_faults([t])])
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "2 of 4 episodes ended on a fault of env" in warnings[0]
    assert "left out of the update" in warnings[0] and "exploded on purpose" in warnings[0]


# --------------------------------------------------------------------------- the CLI
_CLI_CASES = [("grpo", "per-step"), ("stepopsd", "concat")]
_CLI_SLOW = [(c, lay) for c in ("grpo", "gigpo", "stepopsd", "steppo") for lay in ("per-step", "concat")]


@pytest.mark.parametrize(
    ("credit", "layout"),
    [*_CLI_CASES, *(pytest.param(*c, marks=pytest.mark.slow) for c in _CLI_SLOW if c not in _CLI_CASES)],
)
def test_cli_trains_a_plain_env_given_as_module_colon_id(tmp_path, credit, layout):
    # run from the folder holding plain_env.py, as a user runs next to their env module: `python
    # benchmarks/run.py` puts benchmarks/ on sys.path, not the current directory, and the module still imports
    out = tmp_path / "out"
    args = ["--env", f"plain_env:{PLAIN_ID}", "--method", credit, "--layout", layout, "--model", "tiny"]
    args += ["--steps", "2", "--group_size", "2", "--tasks_per_step", "2", "--max_turns", "2"]
    args += ["--sampling.max_new_tokens", "8", "--eval-tasks", "3", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args],
        cwd=Path(__file__).parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["env_id"] == f"plain_env:{PLAIN_ID}" and res["method"] == credit and res["status"] == "complete"
    assert res["training"]["0"]["final_step"] == 2 and res["config"]["layout"] == layout
    table = (out / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| subset")]
    assert rows == [rows[0]] and rows[0].startswith(f"| {SEED_SUBSET} | ") and rows[0].endswith(" | 3 |")
    lines = [json.loads(x) for x in (out / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all(x["rollout/env_errors"] == 0.0 for x in lines)


def test_env_faults_in_evaluation_are_warned_about(tiny, caplog):
    from stepgym.trainers.evaluate import evaluate

    _, tok = tiny
    with caplog.at_level(logging.WARNING, logger="stepgym.trainers.evaluate"):
        results, trajs = evaluate(
            _Fixed("<action>guess 1</action>", tok),
            ChatRenderer(tok),
            FAULTY_ID,
            {SEED_SUBSET: [0, 1, 2]},
            env_kwargs={"fault": "raise", "fault_seeds": [1]},
            sampling=SP,
            max_turns=1,
        )
    assert results[SEED_SUBSET].n == 3 and len(env_faults(trajs)) == 1
    (msg,) = [r.getMessage() for r in caplog.records]
    assert f"evaluation of {FAULTY_ID}: 1 of 3 episodes ended on an env fault" in msg and "exploded" in msg
