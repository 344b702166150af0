"""Resets overlap with other envs' steps: reset_async / poll_resets / wait_resets on every backend."""

import os
import signal
import time

import gymnasium as gym
import pytest
from stepgym.envs import EnvPool
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
