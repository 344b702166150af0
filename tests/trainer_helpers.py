"""Tiny models and hand-built rollouts for the trainer tests (built locally, never downloaded)."""

from pathlib import Path
from typing import Any

import torch
from stepgym.envs.records import StepRecord, TokenSequence, Trajectory
from stepgym.trainers.config import TrainConfig
from transformers import Qwen3Config, Qwen3ForCausalLM

VOCAB = 64


def tiny_config() -> Qwen3Config:
    return Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )


def tiny_model(seed: int = 0) -> Qwen3ForCausalLM:
    """A random ~60k-parameter Qwen3 (2 layers, hidden 64, vocab 64)."""
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config())
    model.config.use_cache = False
    return model


def step(k: int, *, valid: bool = True, reward: float = 0.0, obs: str | None = None) -> StepRecord:
    return StepRecord(
        index=k,
        observation=obs if obs is not None else f"obs {k}",
        action_text=f"<action>a{k}</action>",
        action=f"a{k}" if valid else None,
        valid=valid,
        reward=reward,
        terminated=False,
        truncated=False,
    )


def concat_sequence(prompt: list[int], turns: list[tuple[list[int], list[int]]], seed: int = 0) -> TokenSequence:
    """prompt, then per step: generated ids (trainable, step k), observation ids (masked)."""
    g = torch.Generator().manual_seed(seed)
    ids, mask, logp, sidx, amask = list(prompt), [0] * len(prompt), [0.0] * len(prompt), [-1] * len(prompt), []
    amask = [0] * len(prompt)
    for k, (gen, obs) in enumerate(turns):
        ids += gen
        mask += [1] * len(gen)
        logp += (-torch.rand(len(gen), generator=g) * 3).tolist()
        sidx += [k] * len(gen)
        amask += [0] * (len(gen) - 1) + [1]  # last generated token is the action
        ids += obs
        mask += [0] * len(obs)
        logp += [0.0] * len(obs)
        sidx += [-1] * len(obs)
        amask += [0] * len(obs)
    return TokenSequence(ids=ids, loss_mask=mask, logprobs=logp, step_index=sidx, action_mask=amask)


def random_trajectories(num_groups: int, group_size: int, *, seed: int = 0, max_len: int = 24) -> list[Trajectory]:
    """Concat-layout trajectories with random ids, random lengths, 0/1 outcomes."""
    g = torch.Generator().manual_seed(seed)
    trajs = []
    for grp in range(num_groups):
        for i in range(group_size):
            n_steps = int(torch.randint(1, 3, (1,), generator=g))
            prompt = torch.randint(1, VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
            turns = []
            for _ in range(n_steps):
                gen = torch.randint(1, VOCAB, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist()
                obs = torch.randint(1, VOCAB, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()
                turns.append((gen, obs))
            seq = concat_sequence(prompt, turns, seed=seed * 1000 + grp * 10 + i)
            won = bool(torch.rand(1, generator=g) < 0.5)
            trajs.append(
                Trajectory(
                    env_id="test/Fake-v0",
                    task_id=f"t{grp}",
                    subset="s",
                    group_id=f"g{grp}",
                    steps=[step(k) for k in range(n_steps)],
                    outcome=float(won),
                    success=won,
                    truncated=False,
                    sequences=[seq],
                )
            )
    return trajs


# --------------------------------------------------------------------------- a trivial env for the loop
TARGET = 8  # success: the first generated token id is below TARGET (about 1 in 8 under a random init)


def trivial_rollout(group_size: int, gen_len: int = 3):
    """A RolloutFn: each task is a 2-token prompt; the model samples ``gen_len`` tokens; success iff
    the first one is < TARGET. Deterministic given the seed."""

    @torch.no_grad()
    def rollout(model, task_ids, seed):
        g = torch.Generator().manual_seed(seed)
        prompts = [[1, 2 + int(t[1:])] for t in task_ids for _ in range(group_size)]
        ids = torch.tensor(prompts)
        logps = []
        for _ in range(gen_len):
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -1].float()
            logp = torch.log_softmax(logits, -1)
            nxt = torch.multinomial(logp.exp(), 1, generator=g)
            logps.append(logp.gather(-1, nxt))
            ids = torch.cat([ids, nxt], 1)
        logps = torch.cat(logps, 1)
        trajs = []
        for r, row in enumerate(ids.tolist()):
            task = task_ids[r // group_size]
            won = row[2] < TARGET
            seq = TokenSequence(
                ids=row,
                loss_mask=[0, 0] + [1] * gen_len,
                logprobs=[0.0, 0.0] + logps[r].tolist(),
                step_index=[-1, -1] + [0] * gen_len,
                action_mask=[0, 0] + [0] * (gen_len - 1) + [1],
            )
            trajs.append(
                Trajectory(
                    env_id="test/Trivial-v0",
                    task_id=task,
                    subset="s",
                    group_id=f"{r // group_size}",
                    steps=[step(0, reward=float(won))],
                    outcome=float(won),
                    success=won,
                    truncated=False,
                    sequences=[seq],
                )
            )
        return trajs

    return rollout


def logprob_teacher(model, batch, trajs):
    """A TeacherFn without hindsight: the teacher model's own log-probs of every generated token (tests of
    the loop's teacher state, where only which weights score the tokens matters)."""
    from stepgym.trainers.update import compute_logprobs

    mask = batch.credit.mask
    logp = compute_logprobs(model, batch.input_ids, batch.attention_mask, micro_batch_size=16, score_mask=mask)
    return logp * mask, mask


def small_run_config(output_dir: str | Path, **overrides: Any) -> TrainConfig:
    """A 2-step ``run_training`` config of the tiny model on CPU (2 tasks x group 2), for the runner tests."""
    base: dict[str, Any] = dict(
        model="tiny",
        device="cpu",
        group_size=2,
        tasks_per_step=2,
        num_envs=4,
        total_steps=2,
        max_turns=2,
        micro_batch_size=4,
        checkpoint_every=1,
        optim={"lr": 1e-2},
        sampling={"max_new_tokens": 8},
        eval={"every": 0},
        output_dir=str(output_dir),
    )
    base.update(overrides)
    return TrainConfig.model_validate(base)
