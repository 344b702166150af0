"""The thread policy: config, then OMP_NUM_THREADS, then physical cores; applied to torch."""

import os

import pytest
import torch
from stepgym.trainers.threads import apply_thread_policy, physical_cores


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_physical_cores_within_the_allowed_cpus():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))


def test_config_wins_then_omp_then_physical_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = apply_thread_policy(2)
    assert (p.threads, p.source, torch.get_num_threads()) == (2, "config", 2)
    p = apply_thread_policy(None)
    assert (p.threads, p.source, torch.get_num_threads()) == (1, "OMP_NUM_THREADS", 1)
    monkeypatch.delenv("OMP_NUM_THREADS")
    p = apply_thread_policy(None)
    assert (p.threads, p.source) == (physical_cores(), "physical cores") and torch.get_num_threads() == p.threads
    assert p.metrics() == {"system/torch_threads": float(p.threads), "system/physical_cores": float(p.physical_cores)}


def test_bad_omp_value_is_refused(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "four")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='four'"):
        apply_thread_policy(None)
