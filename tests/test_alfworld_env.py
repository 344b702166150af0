"""stepgym/ALFWorld-v0 on the real alfworld/TextWorld engine: games, protocol, expert, faults."""

import shutil
import sys
from collections import Counter

import gymnasium as gym
import pytest
from stepgym.agents.alfworld_agents import RandomAdmissibleAgent, WalkthroughAgent, read_walkthrough
from stepgym.agents.scripted import run_episode
from stepgym.envs.data import MalformedDataError, resolve_data_dir

pytest.importorskip("alfworld", reason="needs `pip install 'stepgym[alfworld]'`")
from stepgym.envs.alfworld import SUBSETS, ALFWorldEnv, list_games  # noqa: E402

ENV_ID = "stepgym/ALFWorld-v0"
# the first valid_unseen game in sorted order (a "look" game with a 4-command walkthrough)
LOOK_TASK = "valid_unseen/look_at_obj_in_light-AlarmClock-None-DeskLamp-308/trial_T20190908_222917_366542"


def _root():
    try:
        return resolve_data_dir(None, "alfworld")
    except FileNotFoundError:
        pytest.skip("ALFWorld data not found (set STEPGYM_DATA)")


@pytest.fixture(scope="module")
def env():
    e = ALFWorldEnv(split="valid_unseen")
    yield e
    e.close()


# counts: `ls -d json_2.1.1/<split>/*/*/ | cut -d/ -f2 | sed 's/-.*//' | sort | uniq -c` on the data,
# and they add up to ALFWorld's AlfredTWEnv totals 134 / 140 / 200 (data README).
EXPECTED_COUNTS = {
    "valid_unseen": {"pick": 24, "look": 18, "clean": 31, "heat": 23, "cool": 21, "pick_two": 17},
    "valid_seen": {"pick": 35, "look": 13, "clean": 27, "heat": 16, "cool": 25, "pick_two": 24},
    "train": {"pick": 46, "look": 19, "clean": 37, "heat": 25, "cool": 28, "pick_two": 45},
}


@pytest.mark.parametrize("split", sorted(EXPECTED_COUNTS))
def test_game_counts_per_split_and_task_type(split):
    root = _root()
    ids = list_games(root, split)
    counts = Counter(i.split("/")[1].split("-")[0] for i in ids)
    expected = EXPECTED_COUNTS[split]
    assert len(ids) == sum(expected.values()) == {"valid_unseen": 134, "valid_seen": 140, "train": 200}[split]
    assert len(counts) == 6
    for subset, n in expected.items():
        assert len(list_games(root, split, [subset])) == n
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_subsets_kwarg_and_task_ids():
    e = gym.make(ENV_ID, split="valid_seen", subsets=["heat", "cool"]).unwrapped
    assert len(e.task_ids) == 16 + 25
    assert {e.task_subset(t) for t in e.task_ids} == {"heat", "cool"}
    assert all(t.startswith("valid_seen/pick_") for t in e.task_ids)
    with pytest.raises(ValueError, match=r"unknown ALFWorld subsets \['sleep'\]"):
        ALFWorldEnv(subsets=["sleep"])
    with pytest.raises(ValueError, match="unknown ALFWorld split 'test'"):
        ALFWorldEnv(split="test")
    one = ALFWorldEnv(games=[LOOK_TASK, LOOK_TASK])
    assert one.task_ids == [LOOK_TASK]
    with pytest.raises(ValueError, match=r"games \['valid_unseen/nope'\] are not games of split 'valid_unseen'"):
        ALFWorldEnv(games=["valid_unseen/nope"])
    assert SUBSETS == ("pick", "look", "clean", "heat", "cool", "pick_two")


def test_reset_info_and_walkthrough_wins(env):
    task = LOOK_TASK
    obs, info = env.reset(options={"task_id": task})
    assert obs.startswith("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room.")
    assert obs.endswith("Your task is to: examine the alarmclock with the desklamp.")
    assert info["goal"] == "examine the alarmclock with the desklamp."
    assert info["task_type"] == info["subset"] == "look" and info["task_id"] == task
    assert info["gamefile"].endswith(task + "/game.tw-pddl")
    # the walkthrough stored in this game file (4 commands)
    assert info["expert_plan"] == ["go to desk 2", "take alarmclock 1 from desk 2", "go to desk 1", "use desklamp 1"]
    assert info["expert_plan"] == read_walkthrough(info["gamefile"])
    assert "go to desk 2" in info["admissible_actions"] and info["won"] is False
    steps = run_episode(env, WalkthroughAgent(think=True), options={"task_id": task})
    assert [s[5]["action"] for s in steps] == info["expert_plan"]
    assert [s[2] for s in steps] == [0.0, 0.0, 0.0, 1.0]
    assert steps[-1][3] is True and steps[-1][4] is False and steps[-1][5]["won"] is True
    assert steps[0][5]["admissible_actions"][0] == "examine desk 2"
    assert all(s[5]["valid_action"] for s in steps)


@pytest.mark.parametrize("subset", ["pick", "clean", "heat", "cool", "pick_two"])
def test_walkthrough_wins_first_game_of_each_other_type(env, subset):
    task = next(t for t in env.task_ids if env.task_subset(t) == subset)
    steps = run_episode(env, WalkthroughAgent(), options={"task_id": task})
    assert steps[-1][3] and steps[-1][5]["won"] and steps[-1][2] == 1.0
    assert sum(s[2] for s in steps) == 1.0


def test_invalid_and_non_admissible_actions(env):
    task = LOOK_TASK
    obs0, info0 = env.reset(options={"task_id": task})
    cases = [
        ("no tags at all", "no complete <action>...</action> found"),
        ("<action>go to desk 1</action><action>look</action>", "found 2 actions"),
        ("<action>fly to the moon</action>", "'fly to the moon' is not an admissible action"),
        ("<think><action>go to desk 2</action></think>", "no complete"),
        ("<action>go to desk 9</action>", "not an admissible action"),
    ]
    for text, why in cases:
        obs, r, term, trunc, info = env.step(text)
        assert obs.startswith("Invalid action") and why in obs
        assert r == pytest.approx(-0.1) and not term and not trunc
        assert info["valid_action"] is False and info["action"] is None and info["won"] is False
        assert info["admissible_actions"] == info0["admissible_actions"]  # the game did not move
    # case and spacing are forgiven; the command is reported as ALFWorld spells it
    obs, r, term, trunc, info = env.step("I will look there.\n<action>Go to   DESK 2</action>")
    assert info["valid_action"] is True and info["action"] == "go to desk 2" and r == 0.0
    assert obs == "You arrive at desk 2. On the desk 2, you see a alarmclock 1."


def test_penalty_reward_and_max_steps_are_configurable():
    e = ALFWorldEnv(max_steps=3, invalid_penalty=0.5, success_reward=10.0)
    task = LOOK_TASK
    e.reset(options={"task_id": task})
    out = [e.step(a) for a in ["<action>look</action>", "bad", "<action>inventory</action>"]]
    assert [o[1] for o in out] == [0.0, -0.5, 0.0]
    assert [o[3] for o in out] == [False, False, True]  # truncated at step 3 (invalid steps count)
    steps = run_episode(e, WalkthroughAgent(), options={"task_id": task})
    # 4 commands are needed but max_steps=3: truncated after the third, not won
    assert len(steps) == 3 and steps[-1][4] is True and steps[-1][3] is False
    e.close()
    e = ALFWorldEnv(success_reward=10.0)
    steps = run_episode(e, WalkthroughAgent(), options={"task_id": task})
    assert steps[-1][2] == 10.0
    e.close()


def test_same_seed_same_game_and_rollout(env):
    def rollout(seed):
        obs, info = env.reset(seed=seed)
        agent = RandomAdmissibleAgent(seed=seed)
        agent.reset(obs, info)
        out = [info["task_id"]]
        for _ in range(5):
            a = agent.act(obs, info)
            obs, r, term, trunc, info = env.step(a)
            out.append((a, obs, r))
        return out

    a, b = rollout(3), rollout(3)
    assert a == b
    assert a[0] in env.task_ids
    assert all(x[0] != "<action>help</action>" for x in a[1:])


def test_missing_split_lists_layout(tmp_path):
    (tmp_path / "alfworld" / "json_2.1.1" / "valid_seen").mkdir(parents=True)
    with pytest.raises(MalformedDataError, match=r"valid_unseen does not exist; expected layout: .*game.tw-pddl"):
        ALFWorldEnv(data_dir=str(tmp_path))
    with pytest.raises(MalformedDataError, match="no games under"):
        ALFWorldEnv(split="valid_seen", data_dir=str(tmp_path))


def _fake_split(tmp_path, good_task):
    src = _root() / "json_2.1.1" / good_task
    dst = tmp_path / "alfworld" / "json_2.1.1" / good_task
    dst.mkdir(parents=True)
    shutil.copy(src / "game.tw-pddl", dst / "game.tw-pddl")
    bad = dst.parent.parent / "pick_and_place_simple-Pen-None-Desk-1" / "trial_X"
    bad.mkdir(parents=True)
    (bad / "game.tw-pddl").write_text('{"pddl_domain": "(define', encoding="utf-8")
    return "valid_unseen/pick_and_place_simple-Pen-None-Desk-1/trial_X"


def test_corrupt_game_file_is_named_or_skipped(tmp_path):
    bad_id = _fake_split(tmp_path, LOOK_TASK)
    e = ALFWorldEnv(data_dir=str(tmp_path))
    assert len(e.task_ids) == 2
    with pytest.raises(
        MalformedDataError, match=r"pick_and_place_simple-Pen-None-Desk-1/trial_X/game.tw-pddl: cannot load"
    ):
        e.reset(options={"task_id": bad_id})
    # the env still works after the failure
    steps = run_episode(e, WalkthroughAgent(), options={"task_id": LOOK_TASK})
    assert steps[-1][5]["won"]
    e.close()
    with pytest.warns(UserWarning, match=r"skipping ALFWorld game: .*trial_X/game.tw-pddl is unreadable"):
        e = ALFWorldEnv(data_dir=str(tmp_path), skip_bad_games=True)
    assert e.task_ids == [LOOK_TASK]


def test_missing_alfworld_raises_dependency_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "alfworld.agents.environment.alfred_tw_env", None)
    with pytest.raises(gym.error.DependencyNotInstalled, match=r"pip install 'stepgym\[alfworld\]'"):
        ALFWorldEnv()


def test_protocol_text():
    assert "<action>" in ALFWorldEnv.protocol and "admissible" in ALFWorldEnv.protocol


@pytest.mark.slow
def test_walkthrough_wins_every_valid_unseen_game():
    e = ALFWorldEnv(split="valid_unseen")
    lost = []
    for task in e.task_ids:
        steps = run_episode(e, WalkthroughAgent(), options={"task_id": task})
        if not (steps[-1][3] and steps[-1][5]["won"] and all(s[5]["valid_action"] for s in steps)):
            lost.append(task)
    e.close()
    assert len(e.task_ids) == 134 and lost == []


def test_corrupt_game_in_training_warns_below_and_stops_past_the_threshold(tmp_path, caplog):
    # a data folder with one good and one corrupt game; each training step plays both (2 tasks, G = 2)
    import json
    import logging

    pytest.importorskip("torch")
    from stepgym.trainers.faults import EnvFaultError
    from stepgym.trainers.runner import run_training
    from trainer_helpers import small_run_config

    bad_id = _fake_split(tmp_path, LOOK_TASK)
    kw = dict(env_id=ENV_ID, env_kwargs={"data_dir": str(tmp_path), "max_steps": 1}, max_turns=1, total_steps=1)
    with caplog.at_level(logging.WARNING, logger="stepgym.trainers.faults"):
        result = run_training(small_run_config(tmp_path / "below", max_env_error_share=0.5, **kw))
    (line,) = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert line["rollout/env_errors"] == 2.0 and line["rollout/trajectories"] == 4.0 and line["rollout/rows"] == 2.0
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "2 of 4 episodes ended on a fault of env stepgym/ALFWorld-v0" in warning and bad_id in warning

    with pytest.raises(EnvFaultError) as info:
        run_training(small_run_config(tmp_path / "past", **kw))
    msg = str(info.value)
    assert "training step 1: 2 of 4 episodes (50%) ended on a fault of env stepgym/ALFWorld-v0" in msg
    assert f"{bad_id}/game.tw-pddl: cannot load this ALFWorld game file" in msg and "Traceback" in msg
