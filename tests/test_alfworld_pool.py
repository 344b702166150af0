"""ALFWorld through the env pool: worker processes give the in-process trajectories; faults contained."""

import os
import signal

import pytest
from stepgym.agents.alfworld_agents import WalkthroughAgent
from stepgym.envs import EnvPool

pytest.importorskip("alfworld", reason="needs `pip install 'stepgym[alfworld]'`")

ENV_ID = "stepgym/ALFWorld-v0"
# two short games of valid_unseen (4 walkthrough commands each)
GAMES = [
    "valid_unseen/look_at_obj_in_light-AlarmClock-None-DeskLamp-308/trial_T20190908_222917_366542",
    "valid_unseen/pick_and_place_simple-Pencil-None-Shelf-308/trial_T20190908_121952_610012",
]


def play(pool, options, scripted=None):
    """Drive every env with the walkthrough (ragged episodes); scripted(i, t) may override an action."""
    agents = [WalkthroughAgent() for _ in options]
    first = pool.reset(options=options)
    trajs = {}
    obs = {}
    for i, (o, info) in enumerate(first):
        agents[i].reset(o, info)
        trajs[i] = [("reset", o, info["task_id"], info["expert_plan"])]
        obs[i] = (o, info)
    t = 0
    while obs:
        actions = {i: (scripted(i, t) if scripted else None) or agents[i].act(*oi) for i, oi in obs.items()}
        out = pool.step(actions)
        obs = {}
        for i, s in out.items():
            row = (actions[i], s.observation, s.reward, s.terminated, s.truncated, s.info.get("won"))
            trajs[i].append(row + (s.info.get("error_type"),))
            if not s.done:
                obs[i] = (s.observation, s.info)
        t += 1
    return trajs


@pytest.fixture(scope="module")
def reference():
    with EnvPool(ENV_ID, 2, env_kwargs={"games": GAMES}) as pool:
        return play(pool, [{"task_id": g} for g in GAMES])


def test_reference_walkthroughs_win(reference):
    # walkthrough lengths 4 and 4 (read from the game files), each ends with the win
    assert [len(v) - 1 for v in reference.values()] == [4, 4]
    assert all(v[-1][2] == 1.0 and v[-1][3] is True and v[-1][5] is True for v in reference.values())


def test_worker_processes_give_identical_trajectories(reference):
    with EnvPool(ENV_ID, 2, backend="process", num_workers=2, env_kwargs={"games": GAMES}) as pool:
        assert play(pool, [{"task_id": g} for g in GAMES]) == reference
        assert pool.get_attr("protocol")[0].startswith("You are an agent in a household")


def test_killed_worker_truncates_only_its_episode(reference):
    with EnvPool(ENV_ID, 2, backend="process", num_workers=2, env_kwargs={"games": GAMES}) as pool:
        pid0 = pool._workers[0].proc.pid

        def killer(i, t):
            if (i, t) == (0, 1):
                os.kill(pid0, signal.SIGKILL)
            return None

        got = play(pool, [{"task_id": g} for g in GAMES], scripted=killer)
        assert got[0][-1][4] is True and got[0][-1][6] == "WorkerDied" and len(got[0]) == 3
        assert got[1] == reference[1]
        assert pool.worker_restarts == 1
        # the replacement worker plays the game again to the win
        assert play(pool, [{"task_id": g} for g in GAMES]) == reference
