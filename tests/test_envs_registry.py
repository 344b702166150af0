"""Every registered stepgym id (and a third-party one) passes Gymnasium's checker and is deterministic."""

import gymnasium as gym
import pytest
import stepgym.envs
from gymnasium.utils.env_checker import check_env
from thirdparty_env import ENV_ID as THIRD_PARTY

ENV_IDS = sorted(stepgym.envs.BUILTIN_ENVS) + [THIRD_PARTY]
# kwargs that keep each env cheap in tests (unknown ids use their defaults)
CHEAP_KWARGS: dict[str, dict] = {
    "stepgym/SearchQA-v0": {"retriever": "bm25s"},
    # one game: every reset reuses the loaded game file (~0.5 s instead of ~1.5 s per new game)
    "stepgym/ALFWorld-v0": {
        "games": ["valid_unseen/look_at_obj_in_light-AlarmClock-None-DeskLamp-308/trial_T20190908_222917_366542"]
    },
}


def _make(env_id):
    try:
        return gym.make(env_id, **CHEAP_KWARGS.get(env_id, {}))
    except gym.error.DependencyNotInstalled as e:
        pytest.skip(f"{env_id}: optional backend not installed ({e})")


def test_builtin_ids_are_registered_with_string_entry_points():
    for env_id, entry in stepgym.envs.BUILTIN_ENVS.items():
        assert env_id.startswith("stepgym/")
        assert gym.spec(env_id).entry_point == entry


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env(env_id):
    env = _make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_rollout(env_id):
    def rollout(seed):
        env = _make(env_id)
        obs, info = env.reset(seed=seed)
        env.action_space.seed(seed)
        out = [(obs, info["task_id"], info["subset"])]
        for _ in range(3):
            obs, r, term, trunc, info = env.step(env.action_space.sample())
            out.append((obs, r, term, trunc, info.get("valid_action")))
            if term or trunc:
                break
        env.close()
        return out

    a, b = rollout(7), rollout(7)
    assert a == b
    assert isinstance(a[0][1], str) and isinstance(a[0][2], str)


def test_unknown_task_id_and_options_are_rejected():
    env = gym.make(THIRD_PARTY)
    with pytest.raises(ValueError, match="unknown task_id 'digit-42'"):
        env.reset(options={"task_id": "digit-42"})
    with pytest.raises(ValueError, match=r"unknown reset options \['colour'\]"):
        env.reset(options={"colour": 1})
    obs, info = env.reset(options={"task_id": "digit-7"})
    assert info["task_id"] == "digit-7" and info["subset"] == "high"


def test_step_before_reset_and_non_text_action():
    env = gym.make(THIRD_PARTY, disable_env_checker=True).unwrapped
    with pytest.raises(gym.error.ResetNeeded):
        env.step("<action>guess 1</action>")
    env.reset(seed=0)
    with pytest.raises(TypeError, match="raw text"):
        env.step(3)


def test_invalid_text_is_an_invalid_step_not_a_crash():
    env = gym.make(THIRD_PARTY)
    env.reset(options={"task_id": "digit-3"})
    for text in [
        "",
        "no tags at all",
        "<action></action>",
        "<action>guess 1</action><action>guess 2</action>",
        "\x00\xff" * 10_000,
        "<think><action>guess 3</action></think> nothing",
    ]:
        obs, r, term, trunc, info = env.step(text)
        assert info["valid_action"] is False and info["action"] is None
        assert obs.startswith("Invalid action")
        env.reset(options={"task_id": "digit-3"})


def test_pprint_registry_lists_stepgym_ids(capsys):
    gym.pprint_registry()
    out = capsys.readouterr().out
    for env_id in stepgym.envs.BUILTIN_ENVS:
        assert env_id.split("/")[1] in out
