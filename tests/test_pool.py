"""The env pool: identical trajectories on every backend; faults stay contained."""

import os
import signal

import pytest
from stepgym.envs import EnvPool
from thirdparty_env import ENV_ID, BisectAgent

BACKENDS = ["inprocess", "process", "ray"]


def _needs(backend):
    if backend == "ray":
        pytest.importorskip("ray", reason="Ray backend needs `pip install 'stepgym[ray]'`")


def play(pool, seeds, scripted=None):
    """Drive every env to the end with BisectAgent (or scripted actions); ragged episodes."""
    n = pool.num_envs
    agents = [BisectAgent() for _ in range(n)]
    first = pool.reset(seeds=seeds)
    obs = {}
    trajs = {i: [("reset", o, info["task_id"])] for i, (o, info) in enumerate(first)}
    for i, (o, info) in enumerate(first):
        agents[i].reset(o, info)
        obs[i] = o
    t = 0
    while obs:
        actions = {i: (scripted(i, t) if scripted else None) or agents[i].act(o, {}) for i, o in obs.items()}
        out = pool.step(actions)
        obs = {}
        for i, s in out.items():
            trajs[i].append((actions[i], s.observation, s.reward, s.terminated, s.truncated, s.info.get("error_type")))
            if not s.done:
                obs[i] = s.observation
        t += 1
    return trajs


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_trajectories_on_every_backend(backend, request):
    _needs(backend)
    if backend == "ray":
        request.getfixturevalue("ray_session")
    seeds = [0, 1, 2, 3, 4]
    with EnvPool(ENV_ID, 5, backend="inprocess") as ref_pool:
        ref = play(ref_pool, seeds)
    with EnvPool(ENV_ID, 5, backend=backend, num_workers=2) as pool:
        got = play(pool, seeds)
    assert got == ref
    # ragged: episodes have different lengths and all of them won
    lengths = {len(v) for v in ref.values()}
    assert len(lengths) > 1
    assert all(v[-1][3] for v in ref.values())


@pytest.mark.parametrize("backend", BACKENDS)
def test_env_error_truncates_only_that_episode(backend, request):
    _needs(backend)
    if backend == "ray":
        request.getfixturevalue("ray_session")
    with EnvPool(ENV_ID, 3, backend=backend) as pool:
        ref = play(EnvPool(ENV_ID, 3), [5, 6, 7])
        got = play(pool, [5, 6, 7], scripted=lambda i, t: "<action>boom</action>" if (i, t) == (1, 0) else None)
        assert got[1][-1][4] is True and got[1][-1][5] == "RuntimeError"
        assert len(got[1]) == 2
        assert got[0] == ref[0] and got[2] == ref[2]
        # the broken env is rebuilt at its next reset and plays normally
        again = play(pool, [5, 6, 7])
        assert again == ref


def test_killed_worker_is_replaced_and_others_go_on():
    with EnvPool(ENV_ID, 3, backend="process") as pool:
        ref = play(EnvPool(ENV_ID, 3), [1, 2, 9])
        pids = [w.proc.pid for w in pool._workers]

        def killer(i, t):
            if (i, t) == (0, 0):
                os.kill(pids[0], signal.SIGKILL)
            return None

        got = play(pool, [1, 2, 9], scripted=killer)
        assert got[0][-1][4] is True and got[0][-1][5] == "WorkerDied"
        assert got[1] == ref[1] and got[2] == ref[2]
        assert pool.worker_restarts == 1 and pool._workers[0].proc.pid != pids[0]
        assert play(pool, [1, 2, 9]) == ref


def test_worker_that_exits_mid_step_truncates_its_episode():
    with EnvPool(ENV_ID, 2, backend="process") as pool:
        got = play(pool, [3, 4], scripted=lambda i, t: "<action>die</action>" if (i, t) == (1, 0) else None)
        assert got[1][-1][5] == "WorkerDied"
        assert got[0][-1][3] is True  # the other episode won


def test_episode_lost_on_a_shared_worker_is_reported_on_its_next_step():
    with EnvPool(ENV_ID, 2, backend="process", num_workers=1) as pool:
        pool.reset(seeds=[0, 1])
        out = pool.step({0: "<action>die</action>"})
        assert out[0].info["error_type"] == "WorkerDied"
        out = pool.step({1: "<action>guess 1</action>"})
        assert out[1].truncated and out[1].info["error_type"] == "WorkerDied"


def test_memory_cap_recycles_worker_between_episodes():
    with EnvPool(ENV_ID, 2, backend="process", max_worker_rss_mb=1.0) as pool:
        pool.reset(seeds=[0, 1])
        assert pool.worker_restarts == 0 or pool.worker_restarts == 2
        before = pool.worker_restarts
        pool.reset(seeds=[0, 1])
        assert pool.worker_restarts == before + 2
        assert all(r > 0 for r in pool.worker_rss_mb())


def test_stepping_a_finished_env_is_an_error():
    with EnvPool(ENV_ID, 1) as pool:
        pool.reset(options=[{"task_id": "digit-0"}])
        assert pool.step({0: "<action>guess 0</action>"})[0].terminated
        with pytest.raises(RuntimeError, match="reset it before stepping"):
            pool.step({0: "<action>guess 0</action>"})
        with pytest.raises(IndexError):
            pool.step({5: "x"})


def test_get_attr_and_unknown_backend():
    with EnvPool(ENV_ID, 2, backend="process") as pool:
        assert pool.get_attr("protocol") == [pool.get_attr("protocol", [0])[0]] * 2
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        EnvPool(ENV_ID, 1, backend="gpu")


class _BatchCounter:
    calls: list[int] = []


def test_step_batch_hook_gets_one_call_per_host():
    import gymnasium as gym
    from thirdparty_env import GuessDigitEnv

    class Batched(GuessDigitEnv):
        @classmethod
        def step_batch(cls, envs, actions):
            _BatchCounter.calls.append(len(envs))
            return [e.step(a) for e, a in zip(envs, actions)]

    gym.register("thirdparty/GuessBatched-v0", entry_point=Batched)
    with EnvPool("thirdparty/GuessBatched-v0", 4) as pool:
        pool.reset(seeds=[0, 1, 2, 3])
        pool.step({i: "<action>guess 4</action>" for i in range(4)})
    assert _BatchCounter.calls == [4]


def test_failing_step_batch_truncates_its_group_without_stepping_twice():
    import gymnasium as gym
    from thirdparty_env import GuessDigitEnv

    class HalfBatched(GuessDigitEnv):
        steps_taken = 0

        def _step(self, action_text):
            HalfBatched.steps_taken += 1
            return super()._step(action_text)

        @classmethod
        def step_batch(cls, envs, actions):
            envs[0].step(actions[0])  # the first env moves, then the batch fails
            raise RuntimeError("retriever down")

    gym.register("thirdparty/GuessHalfBatched-v0", entry_point=HalfBatched)
    with EnvPool("thirdparty/GuessHalfBatched-v0", 3) as pool:
        pool.reset(seeds=[0, 1, 2])
        out = pool.step({i: "<action>guess 4</action>" for i in range(3)})
        assert HalfBatched.steps_taken == 1  # nobody stepped twice
        assert all(o.truncated and "retriever down" in o.info["error"] for o in out.values())
        assert pool.active() == []
        pool.reset(seeds=[0, 1, 2])  # rebuilt and usable again
        assert pool.active() == [0, 1, 2]


def test_module_prefixed_id_like_gym_make():
    # gym.make("module:ns/Name-v0") imports the module first; the pool accepts the same form
    with EnvPool("thirdparty_env:thirdparty/GuessDigit-v0", 1) as pool:
        assert pool.spec.id == "thirdparty/GuessDigit-v0"
        assert pool.reset(options=[{"task_id": "digit-3"}])[0][1]["subset"] == "low"
