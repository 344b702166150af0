"""The env pool's small parts on their own: memory recycling choice, ticket states, worker transports."""

import multiprocessing as mp

from stepgym.envs.ids import env_spec
from stepgym.envs.pool import EnvStep, Worker
from stepgym.envs.pool.memory import recyclable_workers, rss_mb
from stepgym.envs.pool.results import WorkerDied, died_reset, died_step
from stepgym.envs.pool.tickets import Dispatcher, Ticket
from stepgym.envs.pool.transports import LocalWorker, ProcessWorker
from thirdparty_env import ENV_ID


def test_recyclable_workers_spare_running_episodes_and_requests_in_flight():
    # envs 0,1 on worker 0; 2,3 on worker 1; 4,5 on worker 2; 6 on worker 3
    owner = [0, 0, 1, 1, 2, 2, 3]
    active = [True, False, True, True, False, False, False]
    # worker 0: env 0 is active and env 0 is being reset, env 1 too -> recyclable
    # worker 1: env 3 is active and not being reset -> spared (never cut a running episode)
    # worker 2: env 4 has a step not collected -> spared; worker 3: nothing to reset -> spared
    got = recyclable_workers(owner, busy=set(), pending={4}, active=active, resetting={0, 1, 2})
    assert got == [0]
    # a worker with a request in flight is spared even when all its envs are being reset
    assert recyclable_workers(owner, busy={0}, pending=set(), active=active, resetting={0, 1}) == []
    assert recyclable_workers(owner, busy=set(), pending=set(), active=[False] * 7, resetting={5, 6}) == [2, 3]


def test_rss_mb_of_this_process_is_positive_and_of_a_missing_process_is_zero():
    assert rss_mb() > 1.0  # a Python interpreter holds more than 1 MiB
    assert rss_mb(2**22 + 12345) == 0.0  # above Linux's default pid_max: no such process


def test_ticket_states_and_the_worker_died_results():
    ticket = Ticket(0, [3, 5], died_step)
    assert not ticket.done and ticket.value == []
    ticket.fail("worker 7 died")
    assert ticket.done and len(ticket.value) == 2
    assert ticket.value[1] == EnvStep("", 0.0, False, True, {"error": "worker 7 died", "error_type": "WorkerDied"})
    assert died_reset("gone") == ("", {"error": "gone", "error_type": "WorkerDied"})
    answered = Ticket.answered([2], [died_step("x")], died_step)
    assert answered.done and answered.worker == -1 and answered.value[0].truncated


def test_local_and_process_workers_answer_in_order_and_a_killed_process_fails_its_tickets():
    spec = env_spec(ENV_ID)
    local = LocalWorker(spec, {}, 1)
    proc = ProcessWorker(mp.get_context("fork"), spec, {}, 2)
    assert isinstance(local, Worker) and isinstance(proc, Worker)
    deaths: list[tuple[int, str, set[int]]] = []
    workers = [local, proc]
    dispatch = Dispatcher(workers, lambda w, why, envs: deaths.append((w, why, envs)))
    try:
        t0 = Ticket(0, [0], died_reset)
        dispatch.submit(t0, "reset", [(0, 0, {"task_id": "digit-3"})])
        assert t0.done is False and local.ready()  # answered when sent, received on the next advance
        dispatch.receive_ready([0])
        assert t0.done and t0.value[0][0].startswith("Guess")
        t1 = Ticket(1, [1, 2], died_reset)
        t2 = Ticket(1, [2], WorkerDied)
        dispatch.submit(t1, "reset", [(0, 1, {"task_id": "digit-4"}), (1, 2, {"task_id": "digit-5"})])
        dispatch.submit(t2, "get_attr", ([1], "_secret"))
        dispatch.wait(t2)  # waits for t1 first: a worker answers in order
        assert t1.done and t2.value == [5]
        proc.proc.kill()
        proc.proc.join()
        t3 = Ticket(1, [1], died_step)
        dispatch.submit(t3, "step", [(0, "<action>guess 4</action>")])
        dispatch.wait(t3)
        assert t3.value[0].truncated and t3.value[0].info["error_type"] == "WorkerDied"
        assert dispatch.restarts == 1 and deaths[0][0] == 1 and deaths[0][2] == {1}
    finally:
        local.close()
        proc.close()
