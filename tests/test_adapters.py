"""Ecosystem adapters (stepgym.envs.adapters) against the real packages: ids, errors, scripted episodes."""

import random
import re
import sys

import gymnasium as gym
import pytest
import stepgym.envs
from stepgym.envs.adapters import ADAPTERS, check_known, list_adapter_env_ids
from stepgym.envs.adapters.catalog import (
    REASONING_GYM_DATASETS,
    SCIENCEWORLD_TASKS,
    TEXTARENA_GAMES,
    TEXTARENA_NLTK_GAMES,
    TEXTWORLD_GAMES,
)


def _needs(module: str):
    return pytest.importorskip(module, reason=f"{module} is an optional extra")


@pytest.fixture(scope="module")
def tw_games(tmp_path_factory):
    """One compiled-games folder for the module (a TextWorld game takes seconds to generate)."""
    return str(tmp_path_factory.mktemp("textworld_games"))


# ----------------------------------------------------------------- ids and errors
def test_every_adapter_id_is_registered_with_its_name_in_kwargs():
    ids = list_adapter_env_ids()
    assert len(ids) == 68 + 105 + 4 + 30 == len(set(ids))
    assert list_adapter_env_ids("textworld") == [f"textworld/{g}" for g in TEXTWORLD_GAMES]
    for env_id in ids:
        ns, name = env_id.split("/", 1)
        spec = gym.spec(env_id)
        assert spec.entry_point == ADAPTERS[ns].entry_point
        assert spec.kwargs == {ADAPTERS[ns].kwarg: name}
    assert stepgym.envs.list_adapter_env_ids is list_adapter_env_ids


def test_unknown_names_get_did_you_mean():
    with pytest.raises(gym.error.NameNotFound, match="Did you mean: `Sudoku`"):
        gym.make("textarena/Sudoko-v0")
    with pytest.raises(gym.error.NameNotFound, match="Did you mean: `leg_counting`"):
        gym.make("reasoning_gym/leg_countin")
    with pytest.raises(ValueError, match=r"unknown adapter namespace 'textarna'; did you mean 'textarena'\?"):
        list_adapter_env_ids("textarna")
    with pytest.raises(ValueError, match=r"unknown ScienceWorld task 'boill'; did you mean 'boil'\?"):
        check_known("ScienceWorld task", "boill", SCIENCEWORLD_TASKS)


@pytest.mark.parametrize(
    ("module", "env_id", "extra"),
    [
        ("textarena", "textarena/GuessTheNumber-v0", "textarena"),
        ("reasoning_gym", "reasoning_gym/leg_counting", "reasoning-gym"),
        ("textworld", "textworld/coin_collector", "textworld"),
        ("scienceworld", "scienceworld/boil", "scienceworld"),
    ],
)
def test_missing_package_names_the_extra(monkeypatch, module, env_id, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(gym.error.DependencyNotInstalled, match=re.escape(f"pip install 'stepgym[{extra}]'")):
        gym.make(env_id)


@pytest.mark.parametrize(
    ("module", "env_id", "kwargs"),
    [
        ("textarena", "textarena/GuessTheNumber-v0", {}),
        ("textarena", "textarena/TowerOfHanoi-v0", {}),
        ("reasoning_gym", "reasoning_gym/basic_arithmetic", {}),
        ("textworld", "textworld/coin_collector", {"settings": {"level": 2}, "num_tasks": 1}),
    ],
)
def test_gymnasium_env_checker_and_same_seed_same_episode(tw_games, module, env_id, kwargs):
    from gymnasium.utils.env_checker import check_env

    _needs(module)
    if module == "textworld":
        kwargs = {**kwargs, "games_dir": tw_games}

    def episode(seed):
        env = gym.make(env_id, **kwargs)
        obs, info = env.reset(seed=seed)
        out = [(obs, info["task_id"], info["subset"])]
        for k in range(3):
            obs, r, term, trunc, info = env.step(f"<action>look</action> [{k + 1}] <answer>{k}</answer>")
            out.append((obs, r, term, trunc, info["valid_action"]))
            if term or trunc:
                break
        env.close()
        return out

    env = gym.make(env_id, **kwargs)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()
    assert episode(5) == episode(5)


# ----------------------------------------------------------------- the catalog matches the installed packages
def test_textarena_catalog_matches_the_installed_registry():
    _needs("textarena")
    from textarena.envs.registration import ENV_REGISTRY

    base = {i for i in ENV_REGISTRY if not i.endswith(("-raw", "-train"))}
    listed = set(TEXTARENA_GAMES) | set(TEXTARENA_NLTK_GAMES)
    assert listed <= base, f"no longer in textarena: {sorted(listed - base)}"


def test_reasoning_gym_catalog_matches_the_installed_datasets():
    _needs("reasoning_gym")
    from reasoning_gym.factory import DATASETS

    assert set(REASONING_GYM_DATASETS) == set(DATASETS) - {"composite"}


def test_textworld_catalog_matches_the_installed_challenges():
    _needs("textworld")
    from textworld.challenges import CHALLENGES

    assert {f"tw-{g}" for g in TEXTWORLD_GAMES} == set(CHALLENGES)


# ----------------------------------------------------------------- TextArena
def _bisect(env, lo=1, hi=20):
    """Binary search on TextArena's GuessTheNumber; returns the step tuples."""
    steps = []
    while True:
        guess = (lo + hi) // 2
        obs, reward, term, trunc, info = env.step(f"<think>halve it</think>My guess is [{guess}]")
        steps.append((guess, reward, term, info))
        if term or trunc:
            return steps
        lo, hi = (guess + 1, hi) if "higher" in obs else (lo, guess - 1)


def test_textarena_bisection_wins_guess_the_number_with_the_games_reward():
    _needs("textarena")
    env = gym.make("textarena/GuessTheNumber-v0", num_tasks=50)
    before = random.getstate()
    obs, info = env.reset(options={"task_id": "train-7"})
    assert "guess the number between 1 and 20" in obs and info["subset"] == "GuessTheNumber-v0"
    assert info["seed"] == 7
    steps = _bisect(env)
    assert random.getstate() == before  # TextArena's draws use the env's own generator state
    *middle, last = steps
    assert all(r == 0.0 and not t and i["valid_action"] for _, r, t, i in middle)
    assert last[1] == 1.0 and last[2] and last[3]["won"] and last[3]["score"] == 1.0
    assert len(steps) <= 5  # log2(20) guesses suffice
    # the same task is the same secret: the same guesses win again
    env.reset(options={"task_id": "train-7"})
    assert [s[0] for s in _bisect(env)] == [s[0] for s in steps]
    with pytest.raises(gym.error.ResetNeeded):
        env.unwrapped.step("[3]")


def test_textarena_invalid_moves_follow_the_games_rules():
    _needs("textarena")
    env = gym.make("textarena/GuessTheNumber-v0", num_tasks=5, split="test")
    _, info = env.reset(seed=0)
    assert info["seed"] >= 1_000_000
    obs, reward, term, _, info = env.step("ten")  # no brackets: rejected, one retry allowed
    assert not info["valid_action"] and info["action"] is None and not term and reward == 0.0
    assert "invalid move" in obs.lower()
    obs, reward, term, _, info = env.step("still no brackets")  # the second one in a row ends the game
    # the game's own penalty: its completion score, 0 before any valid guess
    assert term and not info["won"] and reward == info["score"] == 0.0 and not info["valid_action"]
    assert "Invalid move format" in info["reason"] and "Invalid move format" in obs


# ----------------------------------------------------------------- reasoning-gym
def test_reasoning_gym_retries_with_verdicts_and_pays_the_best_score_once():
    _needs("reasoning_gym")
    env = gym.make("reasoning_gym/leg_counting", num_tasks=20, dataset_seed=3, max_attempts=3)
    obs, info = env.reset(options={"task_id": "4"})
    assert "legs" in obs and info["subset"] == "leg_counting"
    gold = info["gold_answer"]
    o1, r1, t1, tr1, i1 = env.step("I think it is many")
    assert (r1, t1, tr1, i1["valid_action"]) == (0.0, False, False, False) and "2 attempts left" in o1
    o2, r2, t2, _, i2 = env.step(f"<answer>{int(gold) + 1}</answer>")
    assert (r2, t2, i2["attempt_score"], i2["valid_action"]) == (0.0, False, 0.0, True) and "1 attempt left" in o2
    o3, r3, t3, tr3, i3 = env.step(f"Counting again... <answer>{gold}</answer>")
    assert (o3, r3, t3, tr3, i3["won"], i3["score"]) == ("Correct.", 1.0, True, False, True, 1.0)
    # out of attempts: truncated, return 0
    env.reset(options={"task_id": "4"})
    results = [env.step("<answer>-1</answer>") for _ in range(3)]
    assert [r[1] for r in results] == [0.0] * 3 and results[-1][3] and not results[-1][2]
    assert "No attempts left" in results[-1][0]


def test_reasoning_gym_oracle_solves_several_datasets_first_try():
    _needs("reasoning_gym")
    for name in ("basic_arithmetic", "word_sorting", "gcd"):
        env = gym.make(f"reasoning_gym/{name}", num_tasks=3, max_attempts=1)
        for task in env.unwrapped.task_ids:
            _, info = env.reset(options={"task_id": task})
            _, reward, term, _, info = env.step(f"<answer>{info['gold_answer']}</answer>")
            assert (reward, term, info["won"]) == (1.0, True, True), (name, task)


def test_held_out_kwargs_select_other_tasks():
    _needs("reasoning_gym")
    held_out = _adapter_class("reasoning_gym").held_out_kwargs
    assert held_out == {"dataset_seed": 1_000_000}
    questions = []
    for kwargs in ({}, held_out):
        env = gym.make("reasoning_gym/gcd", num_tasks=10, **kwargs)
        questions.append({env.reset(options={"task_id": t})[0] for t in env.unwrapped.task_ids})
    assert len(questions[0]) == len(questions[1]) == 10 and not questions[0] & questions[1]
    for namespace in ("textarena", "textworld", "scienceworld"):
        assert _adapter_class(namespace).held_out_kwargs == {"split": "test"}


def _adapter_class(namespace):
    from gymnasium.envs.registration import load_env_creator

    return load_env_creator(ADAPTERS[namespace].entry_point)


def test_reasoning_gym_bad_config_is_rejected():
    _needs("reasoning_gym")
    with pytest.raises(ValueError, match="bad config"):
        gym.make("reasoning_gym/leg_counting", config={"no_such_field": 1})


# ----------------------------------------------------------------- TextWorld
def test_textworld_expert_plan_wins_a_generated_coin_collector(tw_games):
    _needs("textworld")
    env = gym.make("textworld/coin_collector", settings={"level": 2}, num_tasks=3, games_dir=tw_games)
    obs, info = env.reset(options={"task_id": "train-0"})
    assert "coin" in info["objective"] and info["expert_plan"] and info["max_score"] == 1.0
    assert "$$$" not in obs and " " * 10 not in obs and obs[0].isalnum()  # no title art, no status bar
    assert set(info["expert_plan"][:1]) <= set(info["admissible_actions"])
    gamefile = info["gamefile"]
    rewards = []
    for command in info["expert_plan"]:
        _, reward, term, trunc, step_info = env.step(f"<action>{command}</action>")
        rewards.append(reward)
        assert step_info["valid_action"] and not trunc
    assert term and step_info["won"] and step_info["score"] == 1.0 and sum(rewards) == 1.0
    # an untagged text does not move the game
    env.reset(options={"task_id": "train-0"})
    obs, reward, term, _, step_info = env.step("go north")
    assert not step_info["valid_action"] and "Invalid action" in obs and not term and reward == 0.0
    # the compiled game is reused, and the same seed makes the same game
    env2 = gym.make("textworld/coin_collector", settings={"level": 2}, num_tasks=3, games_dir=tw_games)
    _, info2 = env2.reset(options={"task_id": "train-0"})
    assert info2["gamefile"] == gamefile and info2["expert_plan"] == info["expert_plan"]
    env.close()
    env2.close()


def test_textworld_settings_are_checked_with_the_challenges_arguments():
    _needs("textworld")
    with pytest.raises(ValueError, match=r"unknown tw-coin_collector setting 'levle'; did you mean 'level'\?"):
        gym.make("textworld/coin_collector", settings={"levle": 3})
    with pytest.raises(ValueError, match=r"rewards='plenty' must be one of \['dense', 'balanced', 'sparse'\]"):
        gym.make("textworld/simple", settings={"rewards": "plenty"})


# ----------------------------------------------------------------- ScienceWorld
def test_scienceworld_gold_path_completes_the_task():
    _needs("scienceworld")
    env = gym.make("scienceworld/find-living-thing", split="dev", max_steps=40)
    try:
        task_ids = env.unwrapped.task_ids
        assert task_ids and all(t.isdigit() for t in task_ids)
        obs, info = env.reset(options={"task_id": task_ids[0]})
        assert "find a(n) living thing" in obs and info["subset"] == "find-living-thing"
        assert len(info["admissible_actions"]) > 10 and info["expert_plan"]
        start = info["score"]
        total = 0.0
        for command in info["expert_plan"]:
            _, reward, term, trunc, step_info = env.step(f"<action>{command}</action>")
            total += reward
            assert not trunc
        assert term and step_info["won"] and step_info["points"] == 100
        assert total == pytest.approx(1.0 - start)  # rewards add up to ScienceWorld's score (0-1 scale)
        with pytest.raises(gym.error.ResetNeeded):
            env.unwrapped.step("<action>look around</action>")
    finally:
        env.close()


# ----------------------------------------------------------------- training through run_training, unchanged
_TRAIN = [
    # (package, env id, env kwargs); one fast env of each ecosystem
    ("textarena", "textarena/GuessTheNumber-v0", {"num_tasks": 8}),
    ("reasoning_gym", "reasoning_gym/leg_counting", {"num_tasks": 8}),
    ("textworld", "textworld/coin_collector", {"settings": {"level": 2}, "num_tasks": 1}),
    ("scienceworld", "scienceworld/find-living-thing", {"split": "dev"}),
]
_FAST = {("textarena", "stepopsd"), ("reasoning_gym", "grpo")}  # the others take 30-120 s on a shared 2-core CPU


def _train_cases():
    for package, env_id, kwargs in _TRAIN:
        for credit in ("grpo", "stepopsd"):
            marks = () if (package, credit) in _FAST else (pytest.mark.slow,)
            yield pytest.param(package, env_id, kwargs, credit, marks=marks, id=f"{env_id}-{credit}")


@pytest.mark.parametrize(("package", "env_id", "env_kwargs", "credit"), list(_train_cases()))
def test_two_training_steps_on_an_adapter_env(tmp_path, tw_games, package, env_id, env_kwargs, credit):
    import json

    _needs(package)
    from stepgym.trainers.runner import run_training
    from trainer_helpers import small_run_config

    if package == "textworld":
        env_kwargs = {**env_kwargs, "games_dir": tw_games}
    cfg = small_run_config(
        tmp_path / "run",
        env_id=env_id,
        env_kwargs=env_kwargs,
        credit=credit,
        num_envs=2,
        sampling={"max_new_tokens": 12},
    )
    result = run_training(cfg)
    assert result.final_step == 2 and not result.interrupted
    lines = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for line in lines:
        assert 0.0 <= line["rollout/success"] <= 1.0 and "loss/total" in line
        if credit == "stepopsd":  # the teacher rescored the adapter's steps: failed steps got a nonzero gap
            assert line["credit/delta_abs_failed"] > 0.0


@pytest.mark.parametrize("preset", ["smoke", "paper"])
def test_presets_evaluate_an_adapter_on_its_held_out_tasks(preset):
    from stepgym.trainers.presets import get_preset

    # reasoning-gym's held-out tasks are another dataset seed; TextArena's its test split (declared, not guessed)
    for env_id, held_out in (
        ("reasoning_gym/leg_counting", {"dataset_seed": 1_000_000}),
        ("textarena/GuessTheNumber-v0", {"split": "test"}),
    ):
        p = get_preset(preset, env_id)
        assert [(s.label, s.env_kwargs) for s in p.eval_splits] == [("held_out", held_out)]
        assert p.config["eval"]["env_kwargs"] == held_out
    # a plain env without held-out kwargs keeps the generic plan (its eval seeds are disjoint from its train seeds)
    from plain_env import PLAIN_ID

    assert [(s.label, s.env_kwargs) for s in get_preset(preset, PLAIN_ID).eval_splits] == [("eval", {})]
