"""The GRPO loop on a trivial env with a tiny model: learning, parameter coverage, exact resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from stepgym.trainers.config import OptimConfig, TrainConfig
from stepgym.trainers.grpo import train
from stepgym.trainers.metrics import JsonlSink
from trainer_helpers import logprob_teacher, tiny_model, trivial_rollout

TASKS = [f"t{i}" for i in range(4)]


def _config(out, **kw):
    base = dict(
        model="tiny",
        env_id="test/Trivial-v0",
        group_size=8,
        tasks_per_step=4,
        micro_batch_size=16,
        mini_batches=2,
        optim=OptimConfig(lr=3e-3, max_grad_norm=1.0),
        total_steps=4,
        checkpoint_every=2,
        output_dir=str(out),
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def test_success_rate_rises_and_every_parameter_changes(tmp_path):
    cfg = _config(tmp_path, total_steps=12, checkpoint_every=0)
    model = tiny_model(0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = train(cfg, model=model, task_ids=TASKS, rollout=trivial_rollout(cfg.group_size))
    success = [m["rollout/success"] for m in hist]
    first, last = sum(success[:3]) / 3, sum(success[-3:]) / 3
    assert last > first + 0.2, success  # measured: 0.15 -> 0.43 (fixed seed)
    assert [n for n, p in model.named_parameters() if torch.equal(p, before[n])] == []
    rows = JsonlSink.read(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert {"loss/policy", "credit/adv_mean", "optim/lr", "time/update"} <= set(rows[0])
    timers = {"time/generate", "time/env", "time/credit", "time/update", "time/eval", "time/rollout", "time/step"}
    assert all(timers <= set(r) and r["time/update"] > 0 and r["time/step"] >= r["time/update"] for r in rows)
    assert rows[0]["system/torch_threads"] == torch.get_num_threads() >= 1
    assert (tmp_path / "config.json").is_file() and (tmp_path / "checkpoints" / "step-00000012").is_dir()


def _no_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


# Each case holds state a resume must give back: the teacher snapshot and the step it was taken
# (interval 3, so the snapshot at checkpoint 2 is the initial policy, not the resumed one), the KL
# reference (a different init is resumed, so it must come from the checkpoint), the value head, LoRA adapters.
RESUME_CASES = {
    "grpo": {},
    "stepopsd": dict(credit="stepopsd", teacher={"mode": "snapshot", "snapshot_interval": 3}),
    "sdar": dict(credit="sdar", credit_kwargs={"lam": 0.5}, teacher={"mode": "snapshot", "snapshot_interval": 3}),
    "steppo": dict(credit="steppo", loss={"kl_coef": 0.1, "reference": "initial"}),
    "lora": dict(lora={"enabled": True, "rank": 4, "alpha": 8.0}, loss={"kl_coef": 0.1, "reference": "initial"}),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_sigkill_then_resume_reproduces_the_uninterrupted_run(tmp_path, case):
    kw = RESUME_CASES[case]
    teacher = logprob_teacher if "teacher" in kw else None
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    ref_cfg = _config(ref_dir, **kw)
    ref_model = tiny_model(0)
    train(ref_cfg, model=ref_model, task_ids=TASKS, rollout=trivial_rollout(8), teacher=teacher)

    cfg = _config(killed_dir, **kw)
    killed_dir.mkdir()
    cfg_path = killed_dir / "cfg.json"
    cfg_path.write_text(cfg.model_dump_json())
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, str(tests / "trainer_loop_child.py"), str(cfg_path), "2"], env=env)
    try:
        deadline = time.time() + 240
        while not (killed_dir / "HANGING").exists():  # inside step 3, after checkpoint 2 was written
            assert child.poll() is None, "child exited early"
            assert time.time() < deadline, "child never reached step 3"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert [p.name for p in (killed_dir / "checkpoints").iterdir()] == ["step-00000002"]

    # a different init: the weights must come from the checkpoint (under LoRA the frozen base is the config's model)
    model = tiny_model(0 if case == "lora" else 7)
    hist = train(cfg, model=model, task_ids=TASKS, rollout=trivial_rollout(8), teacher=teacher)
    assert len(hist) == 2  # steps 3 and 4 only
    ref_rows = JsonlSink.read(ref_dir / "metrics.jsonl")
    rows = JsonlSink.read(killed_dir / "metrics.jsonl")
    assert _no_time(rows) == _no_time(ref_rows)  # every metric of every step, bit-identical
    for (n, p), q in zip(model.named_parameters(), ref_model.parameters()):
        assert torch.equal(p, q), n


def test_resume_passes_over_a_corrupt_newest_checkpoint_and_moves_it_aside(tmp_path, caplog):
    cfg = _config(tmp_path, total_steps=4, checkpoint_every=2)
    train(cfg, model=tiny_model(0), task_ids=TASKS, rollout=trivial_rollout(8))
    ref_rows = JsonlSink.read(tmp_path / "metrics.jsonl")
    bad = tmp_path / "checkpoints" / "step-00000004"
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[:16] = b"\xff" * 16  # header garbage, size unchanged: safetensors' "incomplete metadata"
    (bad / "model.safetensors").write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        hist = train(cfg, model=tiny_model(7), task_ids=TASKS, rollout=trivial_rollout(8))
    assert len(hist) == 2  # resumed from step 2, redid steps 3 and 4
    assert _no_time(JsonlSink.read(tmp_path / "metrics.jsonl")) == _no_time(ref_rows)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("step-00000004" in w and "corrupt" in w for w in warnings), warnings
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000004", "step-00000004.corrupt"]


def test_checkpoints_by_wall_time_and_keeps_the_training_time_across_a_resume(tmp_path):
    from stepgym.trainers.checkpoint import list_checkpoints, read_checkpoint_state

    # checkpoint_every=0 saves only at the end; a tiny checkpoint_minutes saves after every step
    cfg = _config(tmp_path, total_steps=3, checkpoint_every=0, checkpoint_minutes=1e-9, keep_last=5)
    hist = train(cfg, model=tiny_model(0), task_ids=TASKS, rollout=trivial_rollout(8))
    ckpts = list_checkpoints(tmp_path / "checkpoints")
    assert [p.name for p in ckpts] == ["step-00000001", "step-00000002", "step-00000003"]
    first = read_checkpoint_state(ckpts[-1]).extra["train_seconds"]
    assert first == hist[-1]["time/total"] == pytest.approx(sum(m["time/step"] for m in hist))
    # a longer run resumed from step 3: its training time adds to the first run's
    more = train(
        cfg.model_copy(update={"total_steps": 4}), model=tiny_model(0), task_ids=TASKS, rollout=trivial_rollout(8)
    )
    assert len(more) == 1 and more[0]["time/total"] > first
    assert (
        read_checkpoint_state(tmp_path / "checkpoints" / "step-00000004").extra["train_seconds"]
        == more[0]["time/total"]
    )
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")][-1] == "step-00000004"


def test_teacher_methods_need_a_teacher(tmp_path):
    from stepgym.trainers.credit import register_credit

    @register_credit("_needs_teacher_for_test", needs_teacher=True)
    def _m(batch):  # pragma: no cover - never called
        raise AssertionError

    with pytest.raises(ValueError, match="needs teacher log-probs; pass teacher="):
        train(
            _config(tmp_path, credit="_needs_teacher_for_test"),
            model=tiny_model(),
            task_ids=TASKS,
            rollout=trivial_rollout(8),
        )
