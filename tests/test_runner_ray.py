"""run_training with env workers on Ray actors (config.env_backend="ray")."""

import os

import pytest
from stepgym.trainers.config import TrainConfig
from stepgym.trainers.metrics import JsonlSink
from stepgym.trainers.runner import run_training


def _config(out, backend):
    return TrainConfig.model_validate(
        dict(
            model="tiny",
            device="cpu",
            env_id="thirdparty_env:thirdparty/GuessDigit-v0",
            env_kwargs={"max_turns": 2},
            env_backend=backend,
            layout="per-step",
            group_size=2,
            tasks_per_step=2,
            num_envs=2,
            total_steps=1,
            max_turns=2,
            micro_batch_size=4,
            optim={"lr": 1e-2},
            sampling={"max_new_tokens": 8},
            eval={"every": 0},
            output_dir=str(out),
        )
    )


@pytest.fixture
def ray_session():
    ray = pytest.importorskip("ray", reason="the Ray backend needs `pip install 'stepgym[ray]'`")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - any start-up failure means "no Ray here"
        pytest.skip(f"Ray could not start on this machine: {type(e).__name__}: {e}")
    yield ray
    ray.shutdown()


def test_ray_env_workers_give_the_inprocess_rollouts(tmp_path, ray_session):
    result = run_training(_config(tmp_path / "ray", "ray"))
    assert result.final_step == 1 and result.checkpoint is not None
    local = run_training(_config(tmp_path / "local", "inprocess"))
    ray_row = JsonlSink.read(result.output_dir / "metrics.jsonl")[0]
    local_row = JsonlSink.read(local.output_dir / "metrics.jsonl")[0]
    # same seeds, same envs: the Ray actors must produce exactly the in-process episodes and update
    keys = [k for k in local_row if k.startswith(("rollout/", "loss/", "credit/"))]
    assert {k: ray_row[k] for k in keys} == {k: local_row[k] for k in keys}
    assert ray_row["rollout/trajectories"] == 4.0 and ray_row["rollout/rows"] >= 4.0
