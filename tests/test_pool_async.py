"""Async pool API: resets overlap with steps (reset_async/poll_resets), steps run free (step_async/poll_steps)."""

import os
import signal
import time

import gymnasium as gym
import pytest
from stepgym.envs import EnvPool, PoolStateError
from thirdparty_env import ENV_ID, BisectAgent, GuessDigitEnv

SLOW_ID = "thirdparty/GuessDigitSlowReset-v0"
RESET_SECONDS = 1.5


class SlowResetEnv(GuessDigitEnv):
    """GuessDigit whose reset sleeps (like ALFWorld's ~1-3 s game load), without using CPU."""

    def _reset_task(self, task_id):
        time.sleep(RESET_SECONDS)
        return super()._reset_task(task_id)


if SLOW_ID not in gym.registry:
    gym.register(SLOW_ID, entry_point=SlowResetEnv)


def test_reset_async_overlaps_with_steps_of_other_workers():
    with EnvPool(SLOW_ID, 2, backend="process", num_workers=2) as pool:
        pool.reset(seeds=[0, 1])
        t0 = time.monotonic()
        pool.reset_async(seeds=[5], indices=[0])
        assert pool.pending_resets() == [0] and pool.active() == [1]
        assert pool.poll_resets() == {}  # not finished: it sleeps 1.5 s
        agent = BisectAgent()
        agent.reset("", {})
        out = pool.step({1: agent.act("", {})})
        stepped_after = time.monotonic() - t0
        # the step of env 1 came back while env 0 was still resetting on the other worker
        assert stepped_after < RESET_SECONDS / 2
        assert out[1].info["valid_action"] is True
        with pytest.raises(RuntimeError, match="env 0 has a reset in flight"):
            pool.step({0: "<action>guess 1</action>"})
        with pytest.raises(RuntimeError, match="already has a reset in flight"):
            pool.reset_async(indices=[0])
        got = pool.wait_resets()
        assert time.monotonic() - t0 >= RESET_SECONDS
        assert list(got) == [0] and got[0][1]["task_id"] == GuessDigitEnv().reset(seed=5)[1]["task_id"]
        assert pool.pending_resets() == [] and pool.active() == ([0] if out[1].done else [0, 1])
        with pytest.raises(RuntimeError, match="no reset in flight"):
            pool.wait_resets([0])


@pytest.mark.parametrize("backend", ["inprocess", "process"])
def test_async_resets_give_the_same_first_observations(backend):
    with EnvPool(ENV_ID, 4, backend="inprocess") as ref_pool:
        ref = ref_pool.reset(seeds=[0, 1, 2, 3])
    with EnvPool(ENV_ID, 4, backend=backend, num_workers=2) as pool:
        pool.reset_async(seeds=[0, 1, 2, 3])
        got: dict = {}
        deadline = time.monotonic() + 30
        while len(got) < 4 and time.monotonic() < deadline:
            got.update(pool.poll_resets(timeout=0.5))
        assert [got[i] for i in range(4)] == ref
        assert pool.active() == [0, 1, 2, 3]


def test_worker_killed_during_async_reset_reports_it_and_is_replaced():
    with EnvPool(SLOW_ID, 2, backend="process", num_workers=2) as pool:
        pids = [w.proc.pid for w in pool._workers]
        pool.reset_async(seeds=[0, 1])
        os.kill(pids[0], signal.SIGKILL)
        got = pool.wait_resets()
        assert got[0][1]["error_type"] == "WorkerDied" and "error" not in got[1][1]
        assert pool.active() == [1] and pool.worker_restarts == 1
        # the replaced worker works
        assert "error" not in pool.reset(seeds=[0], indices=[0])[0][1]


def test_memory_cap_never_recycles_a_worker_with_a_reset_in_flight():
    with EnvPool(SLOW_ID, 2, backend="process", num_workers=1, max_worker_rss_mb=1.0) as pool:
        pool.reset_async(seeds=[0], indices=[0])
        restarts = pool.worker_restarts
        # env 1 shares the worker; its reset must not kill env 0's reset in flight
        pool.reset_async(seeds=[1], indices=[1])
        assert pool.worker_restarts == restarts
        got = pool.wait_resets()
        assert all("error" not in info for _, info in got.values())


# --------------------------------------------------------------------------- step_async / poll_steps
SLOW_STEP_ID = "thirdparty/GuessDigitSlowStep-v0"
STEP_SECONDS = 1.0


class SlowStepEnv(GuessDigitEnv):
    """GuessDigit whose step sleeps ``STEP_SECONDS`` when the action text says ``slow`` (outside the tag)."""

    def _step(self, action_text):
        if action_text.startswith("slow"):
            time.sleep(STEP_SECONDS)
        return super()._step(action_text)


if SLOW_STEP_ID not in gym.registry:
    gym.register(SLOW_STEP_ID, entry_point=SlowStepEnv)


def _record(actions, i, s):
    return (actions[i], s.observation, s.reward, s.terminated, s.truncated, s.info.get("error_type"))


def play_lockstep(pool, seeds):
    """Every env plays BisectAgent to the end; each round steps the running envs together (step)."""
    agents = [BisectAgent() for _ in seeds]
    trajs, actions = {}, {}
    for i, (o, info) in enumerate(pool.reset(seeds=seeds)):
        agents[i].reset(o, info)
        trajs[i] = [("reset", o, info["task_id"])]
        actions[i] = agents[i].act(o, {})
    while actions:
        out = pool.step(actions)
        nxt = {}
        for i, s in out.items():
            trajs[i].append(_record(actions, i, s))
            if not s.done:
                nxt[i] = agents[i].act(s.observation, {})
        actions = nxt
    return trajs


def play_free_running(pool, seeds):
    """Each env gets its next action as soon as its own step is back (step_async + poll_steps)."""
    agents = [BisectAgent() for _ in seeds]
    trajs, actions = {}, {}
    for i, (o, info) in enumerate(pool.reset(seeds=seeds)):
        agents[i].reset(o, info)
        trajs[i] = [("reset", o, info["task_id"])]
        actions[i] = agents[i].act(o, {})
    pool.step_async(actions)
    deadline = time.monotonic() + 30
    while pool.pending_steps() and time.monotonic() < deadline:
        for i, s in pool.poll_steps(timeout=1.0).items():
            trajs[i].append(_record(actions, i, s))
            if not s.done:
                actions[i] = agents[i].act(s.observation, {})
                pool.step_async({i: actions[i]})
    assert pool.pending_steps() == [] and pool.active() == []
    return trajs


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="Ray backend needs `pip install 'stepgym[ray]'`")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("backend", ["inprocess", "process", "ray"])
def test_free_running_steps_give_the_lockstep_trajectories(backend, request):
    if backend == "ray":
        request.getfixturevalue("ray_session")
    # seeds 0..4 pick digits whose bisection takes 1 to 4 guesses: ragged episodes
    seeds = [0, 1, 2, 3, 4]
    with EnvPool(ENV_ID, 5, backend="inprocess") as ref_pool:
        ref = play_lockstep(ref_pool, seeds)
    with EnvPool(ENV_ID, 5, backend=backend, num_workers=2) as pool:
        got = play_free_running(pool, seeds)
    assert got == ref
    assert len({len(t) for t in ref.values()}) > 1  # the episodes really are ragged


def test_a_fast_env_goes_on_while_a_slow_step_runs_on_the_other_worker():
    with EnvPool(SLOW_STEP_ID, 2, backend="process", num_workers=2) as pool:
        pool.reset(seeds=[0, 1])
        t0 = time.monotonic()
        pool.step_async({0: "slow <action>guess 9</action>", 1: "<action>guess 9</action>"})
        assert pool.pending_steps() == [0, 1]
        # env 1 (other worker) is back long before env 0's 1 s step; step it twice more meanwhile
        for _ in range(2):
            got = pool.poll_steps(timeout=0.9 * STEP_SECONDS)
            assert list(got) == [1] and got[1].info["valid_action"] is True
            if not got[1].done:
                pool.step_async({1: "<action>guess 9</action>"})
            else:
                break
        assert time.monotonic() - t0 < STEP_SECONDS  # env 0's step was still sleeping
        assert 0 in pool.pending_steps()
        got = pool.wait_steps([0])
        assert time.monotonic() - t0 >= STEP_SECONDS
        assert got[0].info["valid_action"] is True and 0 not in pool.pending_steps()
        assert set(pool.wait_steps()) <= {1} and pool.pending_steps() == []


def test_worker_killed_mid_step_truncates_its_episode_and_is_replaced():
    with EnvPool(SLOW_STEP_ID, 3, backend="process", num_workers=2) as pool:
        # envs 0, 1 on worker 0 and env 2 on worker 1 (contiguous blocks)
        pool.reset(seeds=[0, 1, 2])
        pid0 = pool._workers[0].proc.pid
        pool.step_async({0: "slow <action>guess 9</action>", 2: "slow <action>guess 9</action>"})
        os.kill(pid0, signal.SIGKILL)
        got = {}
        deadline = time.monotonic() + 30
        while pool.pending_steps() and time.monotonic() < deadline:
            got.update(pool.poll_steps(timeout=1.0))
        assert got[0].truncated and got[0].info["error_type"] == "WorkerDied"
        assert f"process {pid0} died" in got[0].info["error"]
        assert "error" not in got[2].info and got[2].info["valid_action"] is True
        assert pool.worker_restarts == 1 and pool._workers[0].proc.pid != pid0
        # env 1 was on the dead worker but not stepping: its next step reports the truncation
        lost = pool.step({1: "<action>guess 5</action>"})[1]
        assert lost.truncated and lost.info["error_type"] == "WorkerDied"
        assert pool.active() == ([] if got[2].done else [2])
        # the replaced worker plays again
        pool.reset(seeds=[0], indices=[0])
        assert pool.step({0: "<action>guess 5</action>"})[0].info["valid_action"] is True


def test_stepping_an_index_in_flight_or_not_active_is_refused():
    with EnvPool(SLOW_STEP_ID, 3, backend="process", num_workers=2) as pool:
        pool.reset(seeds=[0, 1], indices=[0, 1])  # env 2 never reset
        pool.step_async({0: "slow <action>guess 9</action>"})
        with pytest.raises(PoolStateError, match="env 0 already has a step in flight"):
            pool.step_async({1: "<action>guess 9</action>", 0: "<action>guess 9</action>"})
        assert pool.pending_steps() == [0]  # env 1 was not sent: a refused call sends nothing
        with pytest.raises(ValueError, match="env 0 already has a step in flight"):
            pool.step({0: "<action>guess 9</action>"})
        with pytest.raises(PoolStateError, match="env 0 has a step in flight; collect it"):
            pool.reset_async(indices=[0])
        with pytest.raises(PoolStateError, match="env 2 is not in an episode; reset it before stepping"):
            pool.step_async({2: "<action>guess 9</action>"})
        with pytest.raises(IndexError, match="env index 7 out of range for a pool of 3"):
            pool.step_async({7: "<action>guess 9</action>"})
        with pytest.raises(PoolStateError, match="env 1 has no step in flight"):
            pool.wait_steps([1])
        assert list(pool.wait_steps()) == [0] and pool.pending_steps() == []
        assert pool.poll_steps(timeout=5.0) == {}  # nothing in flight: returns at once


def test_a_finished_step_not_collected_yet_survives_its_worker_dying_after_it():
    with EnvPool(ENV_ID, 2, backend="process", num_workers=1) as pool:
        pool.reset(options=[{"task_id": "digit-3"}, {"task_id": "digit-4"}])  # guess 9 -> "Lower."
        pool.step_async({0: "<action>guess 9</action>"})
        pool.step_async({1: "<action>die</action>"})  # the worker exits while stepping env 1
        died = pool.wait_steps([1])[1]  # env 0's reply comes first on the shared worker
        assert died.truncated and died.info["error_type"] == "WorkerDied"
        assert pool.pending_steps() == [0] and pool.worker_restarts == 1
        ok = pool.wait_steps([0])[0]
        assert ok.observation == "Lower." and not ok.done  # the step it did before the death counts
        # but its episode lived in the dead worker: the next step reports the loss
        lost = pool.step({0: "<action>guess 3</action>"})[0]
        assert lost.truncated and lost.info["error_type"] == "WorkerDied"
        assert pool.active() == []


def test_poll_returns_steps_and_resets_as_they_finish():
    with EnvPool(SLOW_ID, 2, backend="process", num_workers=2) as pool:
        pool.reset(seeds=[0, 1])
        t0 = time.monotonic()
        pool.reset_async(seeds=[5], indices=[0])  # sleeps 1.5 s on worker 0
        pool.step_async({1: "<action>guess 9</action>"})
        resets, steps = pool.poll(timeout=RESET_SECONDS / 2)
        # the step on worker 1 comes back first, long before the reset on worker 0
        assert resets == {} and list(steps) == [1] and time.monotonic() - t0 < RESET_SECONDS / 2
        assert steps[1].info["valid_action"] is True
        resets, steps = pool.poll(timeout=30.0)
        assert list(resets) == [0] and steps == {} and time.monotonic() - t0 >= RESET_SECONDS
        assert resets[0][1]["task_id"] == GuessDigitEnv().reset(seed=5)[1]["task_id"]
        assert pool.poll(timeout=30.0) == ({}, {})  # nothing in flight: at once
        assert 0 in pool.active()


UNPICKLABLE_ID = "thirdparty/GuessDigitUnpicklable-v0"


class UnpicklableInfoEnv(GuessDigitEnv):
    """GuessDigit whose step info cannot be sent back to the main process when the text says so."""

    def _step(self, action_text):
        obs, reward, terminated, truncated, info = super()._step(action_text)
        if action_text.startswith("unpicklable"):
            info["callback"] = lambda: None  # a worker cannot pickle its reply
        return obs, reward, terminated, truncated, info


if UNPICKLABLE_ID not in gym.registry:
    gym.register(UNPICKLABLE_ID, entry_point=UnpicklableInfoEnv)


def test_a_worker_that_cannot_answer_raises_after_collecting_every_step():
    with EnvPool(UNPICKLABLE_ID, 2, backend="process", num_workers=2) as pool:
        pool.reset(options=[{"task_id": "digit-3"}, {"task_id": "digit-4"}])
        with pytest.raises(RuntimeError, match="step: .*pickle"):
            pool.step({0: "unpicklable <action>guess 9</action>", 1: "<action>guess 9</action>"})
        # nothing left in flight; env 0's step counts as truncated, env 1 stepped and goes on
        assert pool.pending_steps() == [] and pool.active() == [1]
        assert pool.step({1: "<action>guess 4</action>"})[1].observation == "Correct!"
