"""Child process for the SIGKILL-resume test: trains, and hangs inside step 3 once step 2 is saved."""

import sys
import time
from pathlib import Path

from stepgym.trainers.config import TrainConfig
from stepgym.trainers.credit import get_credit
from stepgym.trainers.grpo import step_seed, train
from trainer_helpers import logprob_teacher, tiny_model, trivial_rollout

if __name__ == "__main__":
    cfg = TrainConfig.model_validate_json(Path(sys.argv[1]).read_text())
    hang_at = step_seed(cfg.seed, int(sys.argv[2]))
    inner = trivial_rollout(cfg.group_size)

    def rollout(model, tasks, seed):
        if seed == hang_at:
            (Path(cfg.output_dir) / "HANGING").write_text("1")
            time.sleep(600)
        return inner(model, tasks, seed)

    teacher = logprob_teacher if get_credit(cfg.credit).needs_teacher else None
    train(cfg, model=tiny_model(0), task_ids=[f"t{i}" for i in range(4)], rollout=rollout, teacher=teacher)
